"""The app as a user feels it, measured in chromium: start-up, explorer, threshold slider, concurrent predictions.

    python -m bench.app_bench --registry registry-kermany --image ../shared/data/cxr-mini/test/NORMAL/x.jpeg
    python -m bench.app_bench --registry R --only slider,explorer --explorer-points 100000

Response times are taken inside the page: a ``MutationObserver`` stamps every DOM change under the
main area and every change of Streamlit's script state, and a response ends at the last DOM change
after the action once the script has finished and the page has been quiet for ``QUIET_MS`` (so the
figure includes the server's rerun, the transfer and the browser's update, not Playwright's
polling). Start-up figures are wall-clock from process start. Every figure comes from one run on
whatever machine this is; the report says which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.browser import (
    APP_SELECTOR,
    CHART,
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    StreamlitServer,
    box_select,
    box_with_clear_edges,
    chromium,
    errors_on_screen,
    isolated_point,
    map_points,
    mark,
    new_context,
    open_page,
    settle,
    upload,
    wait_for_app_run,
)

QUIET_MS = 500


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")

def new_page(browser: Any) -> Any:
    return new_context(browser, 240_000).new_page()


# --- start-up ---------------------------------------------------------------------------------


def startup(registry: Path, image: Path | None, browser: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Cold: a new server process, first visitor. Warm: a second visitor of the same process."""
    out: dict[str, Any] = {}
    with StreamlitServer(registry) as srv:
        out["process_to_health_s"] = srv.start_seconds
        for phase in ("cold", "warm"):
            page = new_page(browser)
            t0 = time.perf_counter()
            open_page(page, srv.url)
            out[f"{phase}_home_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            open_page(page, srv.url, "Predict")
            page.locator("[data-testid='stFileUploader']").wait_for()
            out[f"{phase}_predict_ready_s"] = time.perf_counter() - t1
            if image is not None:
                t2 = time.perf_counter()
                upload(page, image)
                page.locator("[data-testid='stMetric']").filter(has_text="Prediction").first.wait_for()
                out[f"{phase}_first_prediction_s"] = time.perf_counter() - t2
                out[f"{phase}_errors"] = errors_on_screen(page)
            page.context.close()
            log(f"  start-up {phase}: " + ", ".join(f"{k}={v:.2f}" for k, v in out.items()
                                                    if k.startswith(phase) and isinstance(v, float)))
    out["process_plus_home_cold_s"] = out["process_to_health_s"] + out["cold_home_s"]
    return out


# --- threshold slider -------------------------------------------------------------------------


_SLIDER_PROBE = """() => {
  // keydown -> the frame painted after it: the threshold panel redraws in the input event the key
  // causes, so a rAF callback sees the new numbers and a task queued from it runs after the paint.
  const root = document.querySelector('.cxr-thr'), range = root.querySelector('.thr-range');
  window.__thr = [];
  range.addEventListener('keydown', () => {
    const t0 = performance.now(), before = root.querySelector("[data-m='flagged']").textContent + root.dataset.threshold;
    requestAnimationFrame(() => setTimeout(() => {
      const after = root.querySelector("[data-m='flagged']").textContent + root.dataset.threshold;
      window.__thr.push([performance.now() - t0, after !== before]);
    }, 0));
  });
}"""


def slider(registry: Path, browser: Any, presses: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Key presses on the threshold panel's slider: how soon the new operating point is on screen
    (the browser redraws it), and how long the commit's fragment rerun takes (Save state, example images)."""
    with StreamlitServer(registry) as srv:
        page = new_page(browser)
        open_page(page, srv.url, "Anomaly_threshold")
        rng = page.locator(".cxr-thr .thr-range")
        if rng.count() == 0:
            return {"missing": "no threshold panel (no anomaly detector in the registry?)"}
        n_scores = page.locator(".cxr-thr [data-m='flagged']").inner_text().split("/")[-1]
        lo, hi, v = float(rng.get_attribute("min")), float(rng.get_attribute("max")), float(rng.input_value())
        key = "ArrowRight" if v < (lo + hi) / 2 else "ArrowLeft"
        page.evaluate(_SLIDER_PROBE)
        rng.focus()
        commit = []
        for i in range(presses + 1):  # one press at a time, each after the previous rerun is over
            since = mark(page)
            rng.press(key)
            ms = settle(page, since, QUIET_MS)
            if i:  # the first move warms the fragment's caches
                commit.append(ms)
        idle = page.evaluate("window.__thr")[1:]
        page.evaluate("window.__thr = []")
        since = mark(page)
        for _ in range(presses):  # a burst, as when a key is held: each press while reruns are in flight
            rng.press(key)
            page.wait_for_timeout(30)
        settle(page, since, QUIET_MS)
        burst = page.evaluate("window.__thr")
        flagged = page.locator(".cxr-thr [data-m='flagged']").inner_text()
        page.context.close()
    idle_ms, burst_ms = [t for t, _ in idle], [t for t, _ in burst]
    res = {"n_scores": n_scores.strip(), "ms": idle_ms, "p50_ms": pct(idle_ms, 50), "p95_ms": pct(idle_ms, 95),
           "burst_ms": burst_ms, "burst_p50_ms": pct(burst_ms, 50), "burst_p95_ms": pct(burst_ms, 95),
           "changed": sum(c for _, c in idle + burst), "presses": len(idle) + len(burst),
           "commit_ms": commit, "commit_p50_ms": pct(commit, 50), "commit_p95_ms": pct(commit, 95),
           "flagged_after": flagged}
    log(f"  slider: on screen p50 {res['p50_ms']:.0f} ms, p95 {res['p95_ms']:.0f} ms over {len(idle_ms)} presses; "
        f"while reruns are in flight p50 {res['burst_p50_ms']:.0f} / p95 {res['burst_p95_ms']:.0f} ms; "
        f"commit → fragment rerun done p50 {res['commit_p50_ms']:.0f} ms")
    return res


# --- explorer ---------------------------------------------------------------------------------


def _explorer_once(srv: StreamlitServer, browser: Any) -> dict[str, Any]:
    page = new_page(browser)
    t0 = time.perf_counter()
    page.goto(f"{srv.url}/Embedding_explorer", wait_until="domcontentloaded")
    page.locator(f"{CHART} .js-plotly-plot .gl-container canvas, {CHART} .js-plotly-plot .main-svg").first.wait_for(
        timeout=600_000)
    wait_for_app_run(page, 600_000)
    first = time.perf_counter() - t0
    points, plot = map_points(page)
    out: dict[str, Any] = {"points": len(points), "first_render_s": first}
    x, y, row = isolated_point(points, plot, min_gap=4.0)
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    since = mark(page)
    page.mouse.click(x, y)
    out["click_ms"] = settle(page, since, QUIET_MS, 600_000)
    out["click_shows_row"] = page.get_by_text(f"Row {row} · patient").count() == 1
    try:  # exact when the map is sparse enough for a box whose edges touch no point
        bx0, by0, bx1, by1, inside = box_with_clear_edges(points, plot, margin=1.0)
        out["box_exact"] = True
    except AssertionError:  # dense maps: a fixed box; points within a pixel of its edges may go either way
        x0, y0, w, h = plot
        bx0, by0, bx1, by1 = x0 + 0.35 * w, y0 + 0.35 * h, x0 + 0.6 * w, y0 + 0.6 * h
        inside = {int(r) for x, y, r, _ in points if bx0 < x < bx1 and by0 < y < by1}
        out["box_exact"] = False
    out["box_select_ms"] = box_select(page, (bx0, by0, bx1, by1), QUIET_MS, 600_000)
    out["box_selected_expected"] = len(inside)
    shown = page.get_by_text(" images selected")
    out["box_selected_shown"] = shown.first.inner_text() if shown.count() else None
    out["errors"] = errors_on_screen(page)
    page.context.close()
    return out


def explorer(registry: Path, browser: Any, log: Callable[[str], None]) -> dict[str, Any]:
    with StreamlitServer(registry) as srv:
        cold = _explorer_once(srv, browser)  # loads the index into the process cache
        warm = _explorer_once(srv, browser)
    log(f"  explorer {cold['points']} points: first render cold {cold['first_render_s']:.1f}s / warm "
        f"{warm['first_render_s']:.1f}s, click {warm['click_ms']:.0f} ms, box {warm['box_select_ms']:.0f} ms")
    return {"cold": cold, "warm": warm}


# --- concurrent predictions -------------------------------------------------------------------


async def _one_session(browser: Any, url: str, image: Path, ready: list[int], start: asyncio.Event,
                       timeout_ms: float) -> dict[str, Any]:
    ctx = await browser.new_context(viewport=VIEWPORT)
    page = await ctx.new_page()
    try:
        await page.goto(f"{url}/Predict", wait_until="domcontentloaded", timeout=timeout_ms)
        await page.wait_for_selector("[data-testid='stFileUploader'] input[type='file']", state="attached",
                                     timeout=timeout_ms)
        await page.wait_for_selector(f"{APP_SELECTOR}[data-test-script-state='notRunning']", timeout=timeout_ms)
        ready[0] += 1
        await start.wait()
        t0 = time.perf_counter()
        await page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(image))
        await page.locator("[data-testid='stMetric']").filter(has_text="Prediction").first.wait_for(timeout=timeout_ms)
        await page.wait_for_timeout(150)
        await page.wait_for_selector(f"{APP_SELECTOR}[data-test-script-state='notRunning']", timeout=timeout_ms)
        seconds = time.perf_counter() - t0
        errs = await page.locator("[data-testid='stException']").count()
        text = await page.locator(APP_SELECTOR).inner_text()
        error = "exception on screen" if errs or "Traceback" in text else None
        return {"seconds": seconds, "error": error}
    except Exception as e:  # a timeout or crash counts as an error of that session
        return {"seconds": None, "error": f"{type(e).__name__}: {str(e)[:200]}"}
    finally:
        await ctx.close()


async def _concurrent(url: str, image: Path, n: int, timeout_ms: float) -> list[dict[str, Any]]:
    """``n`` sessions open Predict; once all are ready, all upload at the same moment."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ready, start = [0], asyncio.Event()
            tasks = [asyncio.create_task(_one_session(browser, url, image, ready, start, timeout_ms)) for _ in range(n)]
            while ready[0] + sum(t.done() for t in tasks) < n:
                await asyncio.sleep(0.1)
            start.set()
            return list(await asyncio.gather(*tasks))
        finally:
            await browser.close()


def concurrency(registry: Path, image: Path, ns: list[int], rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with StreamlitServer(registry) as srv:
        asyncio.run(_concurrent(srv.url, image, 1, 600_000))  # warm the models once
        for n in ns:
            results = []
            for _ in range(rounds):
                results += asyncio.run(_concurrent(srv.url, image, n, 600_000))
            secs = [r["seconds"] for r in results if r["seconds"] is not None and not r["error"]]
            errors = [r["error"] for r in results if r["error"]]
            out[n] = {"sessions": len(results), "p50_s": pct(secs, 50), "p95_s": pct(secs, 95),
                      "max_s": max(secs) if secs else float("nan"), "errors": len(errors), "error_samples": errors[:3]}
            log(f"  concurrent N={n}: p50 {out[n]['p50_s']:.1f}s, p95 {out[n]['p95_s']:.1f}s, errors {len(errors)}")
    return out


# --- report -----------------------------------------------------------------------------------


def markdown(res: dict[str, Any], command: str) -> str:
    lines = ["## The app in a browser (chromium, Playwright)", "", f"Command: `{command}`  ",
             f"Registry `{res['registry']}`."]
    for key, title in (("startup", "App start"), ("slider", "Threshold slider"), ("explorer", "Explorer"),
                       ("explorer_scaled", "Explorer, scaled"), ("concurrency", "Concurrent predictions")):
        if isinstance(res.get(key), dict) and "failed" in res[key]:
            lines += ["", f"### {title}", "", f"Not measured: the run failed ({res[key]['failed']})."]
            del res[key]
    if "startup" in res:
        s = res["startup"]
        lines += ["", "### App start to first interactive page", "",
                  "| | cold (new process, first visitor) | warm (second visitor, same process) |", "|---|---:|---:|",
                  f"| process start → `/_stcore/health` answers | {s['process_to_health_s']:.1f} s | – |",
                  f"| home page rendered | {s['cold_home_s']:.1f} s | {s['warm_home_s']:.1f} s |",
                  f"| Predict page ready for an upload | {s['cold_predict_ready_s']:.1f} s | "
                  f"{s['warm_predict_ready_s']:.1f} s |"]
        if "cold_first_prediction_s" in s:
            lines.append(f"| upload → whole Predict page done (models load on the first one; prediction, anomaly, neighbours, class activation map) | "
                         f"{s['cold_first_prediction_s']:.1f} s | {s['warm_first_prediction_s']:.1f} s |")
        lines.append(f"\nCold, process start to a rendered home page: **{s['process_plus_home_cold_s']:.1f} s**.")
    if "slider" in res:
        s = res["slider"]
        if "missing" in s:
            lines += ["", f"### Threshold slider\n\nNot measured: {s['missing']}."]
        else:
            verdict = "met" if s["p95_ms"] <= 100 and s["burst_p95_ms"] <= 100 else "NOT met"
            lines += ["", "### Threshold slider response", "",
                      f"One arrow-key step of the threshold slider ({s['n_scores']} scored images) → histogram line, "
                      f"ROC point, metrics and confusion matrix redrawn in the browser, from keydown to the painted "
                      f"frame: **p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms** over {len(s['ms'])} steps; "
                      f"while the previous steps' reruns are still in flight (a held key): p50 {s['burst_p50_ms']:.0f} ms, "
                      f"p95 {s['burst_p95_ms']:.0f} ms over {len(s['burst_ms'])} steps (target ≤ 100 ms: {verdict}); "
                      f"{s['changed']} of {s['presses']} frames showed the new value. The committed value's fragment "
                      f"rerun (Save state, example images near the threshold) takes p50 {s['commit_p50_ms']:.0f} ms, "
                      f"p95 {s['commit_p95_ms']:.0f} ms."]
    for key, title in (("explorer", "real set size"), ("explorer_scaled", "scaled")):
        if key not in res:
            continue
        e = res[key]
        c, w = e["cold"], e["warm"]
        lines += ["", f"### Embedding explorer, {c['points']:,} points ({title})", "",
                  "| | cold (index not yet loaded) | warm |", "|---|---:|---:|",
                  f"| first render (navigation → map drawn, script finished) | {c['first_render_s']:.1f} s | "
                  f"{w['first_render_s']:.1f} s |",
                  f"| click a point → its image and K neighbours | {c['click_ms']:.0f} ms | {w['click_ms']:.0f} ms |",
                  f"| box select → gallery and breakdown | {c['box_select_ms']:.0f} ms | {w['box_select_ms']:.0f} ms |",
                  "", f"Box selection: {w['box_selected_expected']:,} points inside the box"
                  f"{'' if w.get('box_exact') else ' (± those within a pixel of its edges)'}, page says "
                  f"“{w['box_selected_shown']}”; clicked row shown: {w['click_shows_row']}."]
        if e.get("note"):
            lines.append(e["note"])
    if "concurrency" in res:
        lines += ["", "### Concurrent predictions", "",
                  f"N browser sessions upload `{res.get('image_name', 'an image')}` at the same moment; latency is "
                  "upload → Predict page finished (all sections), per session.", "",
                  "| N | sessions | p50 | p95 | max | errors |", "|---:|---:|---:|---:|---:|---:|"]
        for n, r in res["concurrency"].items():
            lines.append(f"| {n} | {r['sessions']} | {r['p50_s']:.1f} s | {r['p95_s']:.1f} s | {r['max_s']:.1f} s | "
                         f"{r['errors']} |")
    return "\n".join(lines) + "\n"


def _guard(measure: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """One section's figures, or what went wrong: a failing section must not lose the others."""
    try:
        return measure()
    except Exception as e:
        log(f"  FAILED: {type(e).__name__}: {e}")
        return {"failed": f"{type(e).__name__}: {str(e)[:300]}"}


def run(ns: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    registry = Path(ns.registry).resolve()
    image = Path(ns.image).resolve() if ns.image else None
    only = set(ns.only.split(",")) if ns.only else {"startup", "slider", "explorer", "concurrency"}
    res: dict[str, Any] = {"registry": str(registry), "image_name": image.name if image else None}
    with chromium() as browser:
        if "startup" in only:
            res["startup"] = _guard(lambda: startup(registry, image, browser, log), log)
        if "slider" in only:
            res["slider"] = _guard(lambda: slider(registry, browser, ns.presses, log), log)
        if "explorer" in only:
            res["explorer"] = _guard(lambda: explorer(registry, browser, log), log)
            if ns.explorer_points:
                tmp = Path(tempfile.mkdtemp(prefix="cxr-scaled-"))
                try:
                    from bench.explorer_browser import tiled_registry

                    t0 = time.perf_counter()
                    scaled = tiled_registry(registry, ns.explorer_points, tmp / "registry")
                    log(f"  tiled registry of {ns.explorer_points:,} rows written in {time.perf_counter() - t0:.0f} s")
                    res["explorer_scaled"] = _guard(lambda: explorer(scaled, browser, log), log)
                    res["explorer_scaled"]["note"] = (
                        f"\nThe {ns.explorer_points:,}-point registry tiles the real index with jitter "
                        "(`bench.explorer_browser.tiled_registry`): same images, distinct points.")
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    if "concurrency" in only:
        if image is None:
            res["concurrency_missing"] = "no --image"
        else:
            res["concurrency"] = _guard(lambda: concurrency(registry, image, ns.concurrency, ns.rounds, log), log)
    return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.app_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=os.environ.get("CXR_REGISTRY", "registry"))
    p.add_argument("--image", default=None, help="image uploaded by the start-up and concurrency runs")
    p.add_argument("--only", default=None, help="comma-separated subset of startup,slider,explorer,concurrency")
    p.add_argument("--presses", type=int, default=15, help="slider steps measured")
    p.add_argument("--explorer-points", type=int, default=100_000, help="scaled explorer run (0 = none)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    p.add_argument("--rounds", type=int, default=1, help="rounds per N (sessions = N × rounds)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench.browser import chromium_missing_reason

    reason = chromium_missing_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    ns = parse(argv)
    res = run(ns)
    print(markdown(res, "python -m bench.app_bench " + " ".join(argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
