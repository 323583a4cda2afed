"""Run the benchmarks and write ``docs/BENCHMARKS.md``.

    python -m bench.report --registry registry-kermany --image ../shared/data/cxr-mini/test/NORMAL/IM-0001-0001.jpeg

Runs ``bench.predict_pipeline`` (CPU, in this process) and ``bench.app_bench`` (the app in
chromium) against one registry and writes their sections under a header that says on what machine,
with which versions and under what load they were taken. ``--skip-browser`` leaves the browser
part out (no chromium here). Figures are one run's: on a shared CPU they move by tens of percent
from run to run, ratios measured within one run move less.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import app_bench, predict_pipeline
from bench.browser import CHROMIUM, REPO

OUT = REPO / "docs" / "BENCHMARKS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{mem}"


def versions() -> str:
    import plotly
    import streamlit
    import torch

    chrome = "absent"
    if CHROMIUM.is_file():
        try:
            chrome = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            chrome = "unknown"
    return (f"Python {platform.python_version()}, torch {torch.__version__}, streamlit {streamlit.__version__}, "
            f"plotly {plotly.__version__}, {chrome}")


def load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=os.environ.get("CXR_REGISTRY", "registry"))
    p.add_argument("--images", default=str(predict_pipeline.DEFAULT_IMAGES), help="images for the CPU pipeline")
    p.add_argument("-n", type=int, default=20, help="images measured by the CPU pipeline")
    p.add_argument("--image", default=None, help="image uploaded in the browser runs")
    p.add_argument("--explorer-points", type=int, default=100_000)
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--skip-browser", action="store_true")
    p.add_argument("--out", default=str(OUT))
    ns = p.parse_args(argv)
    argv_s = " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    load_before = load()
    sections = []

    print("predict pipeline (CPU)…")
    pipe = predict_pipeline.run(Path(ns.registry), Path(ns.images), ns.n)
    sections.append(predict_pipeline.markdown(
        pipe, f"python -m bench.predict_pipeline --registry {ns.registry} --images {ns.images} -n {ns.n}"))

    if not ns.skip_browser:
        reason = __import__("bench.browser", fromlist=["chromium_missing_reason"]).chromium_missing_reason()
        if reason:
            sections.append(f"## The app in a browser\n\nNot measured: {reason}.\n")
        else:
            print("app in chromium…")
            args = ["--registry", ns.registry, "--explorer-points", str(ns.explorer_points),
                    "--concurrency", ns.concurrency, "--rounds", str(ns.rounds)]
            if ns.image:
                args += ["--image", ns.image]
            res = app_bench.run(app_bench.parse(args))
            sections.append(app_bench.markdown(res, "python -m bench.app_bench " + " ".join(args)))

    header = [
        "# Benchmarks",
        "",
        f"Written by `python -m bench.report {argv_s}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"in {time.perf_counter() - t0:.0f} s.",
        "",
        f"- Machine: {machine()}; load average (1/5/15 min) {load_before} before, {load()} after.",
        f"- Software: {versions()}.",
        "- Noise: this machine's CPU was shared with other jobs while these ran, so absolute times are "
        "noisy (tens of percent between runs); ratios taken within one run are steadier. Every figure "
        "comes from the one run this file records; rerun the command for your machine.",
        "",
    ]
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
