"""The Embedding explorer in Debian's chromium: first render, click and box-select response, at N points.

    python -m bench.explorer_browser --registry R                   # R's indexed classifier as it is
    python -m bench.explorer_browser --registry R --points 100000   # its index tiled (with jitter) to N rows

The tiled registry is benchmark-only: its rows repeat the real index's images, embeddings get a
little noise and map coordinates a small jitter, so that the map draws N distinct points. Times
are taken in the page (``bench.browser``'s DOM/script-state stamps): from the action to the last
DOM change after the rerun. Nothing is asserted; the machine and its load are printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def tiled_registry(registry: Path, n: int, out: Path) -> Path:
    from cxr_core.registry import list_entries, write_entry

    src = next((s for s in list_entries(registry) if s.ok and s.card and s.card.get("kind") == "classifier"
                and {"index.npz", "projection.npz", "thumbs.npy"} <= set(s.card.get("files", {}))), None)
    if src is None:
        raise SystemExit(f"{registry} has no classifier with an index and maps")
    entry = src.entry()
    idx, maps = entry.load_npz("index.npz"), entry.load_npz("projection.npz")
    base = len(idx["paths"])
    rows = np.arange(n) % base
    rng = np.random.default_rng(0)
    new = {k: (v[rows] if v.ndim and len(v) == base else v) for k, v in idx.items()}
    new["ids"] = np.arange(n, dtype=np.int64)
    emb = new["embeddings"] + rng.normal(0, 0.01, new["embeddings"].shape).astype(np.float32)
    new["embeddings"] = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    new_maps = {k: (v[rows] + rng.normal(0, 0.02, (n, v.shape[1])) * v.std(axis=0)).astype(np.float32) for k, v in maps.items()}
    card = {k: v for k, v in entry.card.items() if k not in ("id", "files", "created_at")}
    card["index"] = {**card.get("index", {}), "n": n}
    card["notes"] = f"benchmark only: {base}-image index tiled to {n} rows"
    write_entry(out, card, weights=entry.load_weights(),
                arrays={"index.npz": new, "projection.npz": new_maps, "thumbs.npy": np.asarray(entry.load_npy("thumbs.npy"))[rows]})
    return out


def _points(page) -> tuple[np.ndarray, list[float]]:
    from bench.browser import CHART, map_points

    page.locator(CHART).first.wait_for()
    pts, plot = map_points(page)
    return np.array([[p[0], p[1], p[2]] for p in pts], dtype=np.float64), plot


def measure(registry: Path, runs: int = 2) -> None:
    from bench.browser import CHART, StreamlitServer, chromium, errors_on_screen, mark, new_context, settle

    with StreamlitServer(registry) as srv, chromium() as browser:
        for run in range(runs):
            page = new_context(browser, 600_000).new_page()
            t0 = time.perf_counter()
            page.goto(f"{srv.url}/Embedding_explorer", wait_until="domcontentloaded")
            page.wait_for_function(
                f"""() => {{ const gd = document.querySelector("{CHART} .js-plotly-plot");
                     const app = document.querySelector("[data-testid='stApp']");
                     return gd && gd._fullData && gd._fullData.length > 0 && app
                            && app.getAttribute('data-test-script-state') === 'notRunning'; }}""",
                timeout=600_000, polling=100,
            )
            first = time.perf_counter() - t0
            pts, plot = _points(page)
            x0, y0, w, h = plot
            centre = np.array([x0 + w / 2, y0 + h / 2])
            target = pts[np.argmin(np.hypot(pts[:, 0] - centre[0], pts[:, 1] - centre[1]))]
            page.mouse.move(target[0], target[1])
            page.wait_for_timeout(400)
            since = mark(page)
            page.mouse.click(target[0], target[1])
            click_ms = settle(page, since, 500, 600_000)
            shown = page.get_by_text(" nearest reference images").count() == 1
            bx0, by0, bx1, by1 = x0 + 0.45 * w, y0 + 0.45 * h, x0 + 0.6 * w, y0 + 0.6 * h
            inside = int(np.sum((pts[:, 0] > bx0) & (pts[:, 0] < bx1) & (pts[:, 1] > by0) & (pts[:, 1] < by1)))
            page.locator(CHART).first.hover()
            page.locator(f"{CHART} .modebar-btn[data-val='select']").first.click()
            page.mouse.move(bx0, by0)
            page.mouse.down()
            page.mouse.move(bx1, by1, steps=8)
            since = mark(page)
            page.mouse.up()
            box_ms = settle(page, since, 500, 600_000)
            said = page.get_by_text(" images selected")
            said_text = said.first.inner_text() if said.count() else "(no selection summary)"
            print(f"  run {run + 1} ({'cold: index loads' if run == 0 else 'warm'}): {len(pts):,} points drawn, "
                  f"first render {first:.1f} s, click → image + neighbours {click_ms:.0f} ms "
                  f"({'shown' if shown else 'NOT shown'}), box over ~{inside:,} points → {box_ms:.0f} ms "
                  f"({said_text}); errors on screen: {errors_on_screen(page) or 'none'}")
            page.context.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.explorer_browser", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", required=True, type=Path, help="registry with an indexed classifier")
    p.add_argument("--points", type=int, default=0, help="tile the index to this many rows (0 = as it is)")
    p.add_argument("--runs", type=int, default=2)
    ns = p.parse_args(argv)
    try:
        from bench.browser import chromium_missing_reason
    except ImportError:  # the shared browser driver (bench/browser.py) comes with the browser tests
        print("skipped: bench/browser.py (the app-in-chromium driver) is not in this checkout")
        return 0
    reason = chromium_missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    registry = ns.registry
    with tempfile.TemporaryDirectory(prefix="explorer-bench-") as tmp:
        if ns.points:
            t0 = time.perf_counter()
            registry = tiled_registry(ns.registry, ns.points, Path(tmp) / "registry")
            print(f"tiled registry of {ns.points:,} rows written in {time.perf_counter() - t0:.0f} s")
        measure(registry, ns.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
