"""The Embedding explorer in Debian's chromium: first render, click and box-select response, at N points.

    python -m bench.explorer_browser --registry R                   # R's indexed classifier as it is
    python -m bench.explorer_browser --registry R --points 100000   # its index tiled (with jitter) to N rows

The tiled registry is benchmark-only: its rows repeat the real index's images, embeddings get a
little noise and map coordinates a small jitter, so that the map draws N distinct points. Times
are taken in the page by ``bench.app_bench.explorer`` (the same code as ``make bench``): from the
action to the last DOM change after the rerun. Nothing is asserted; the machine and its load are
printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def tiled_registry(registry: Path, n: int, out: Path) -> Path:
    from cxr_core.registry import list_entries, usable, write_entry

    src = next((s for s in list_entries(registry) if s in usable([s], "classifier")
                and {"index.npz", "projection.npz", "thumbs.npy"} <= set(s.info.files)), None)
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
    card = entry.classifier_card
    card = replace(card, id="", files={}, created_at=None, index={**card.index, "n": n},
                   notes=f"benchmark only: {base}-image index tiled to {n} rows")
    write_entry(out, card, weights=entry.load_weights(),
                arrays={"index.npz": new, "projection.npz": new_maps, "thumbs.npy": np.asarray(entry.load_npy("thumbs.npy"))[rows]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.explorer_browser", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", required=True, type=Path, help="registry with an indexed classifier")
    p.add_argument("--points", type=int, default=0, help="tile the index to this many rows (0 = as it is)")
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
        from bench.app_bench import explorer
        from bench.browser import chromium

        with chromium() as browser:  # cold run (the index loads), then warm: as in bench.app_bench
            res = explorer(registry, browser, print)
        for phase in ("cold", "warm"):
            print(f"  {phase}: {res[phase]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
