"""Response time of the anomaly-threshold slider.

    python -m bench.threshold --registry registry-kermany     # a real detector's scores
    python -m bench.threshold --n 624 100000                  # synthetic scores of these sizes

Times, per slider value, what the page's fragment does on a move: the O(log n)
confusion counts (``ThresholdTable.metrics``), building the histogram and ROC figures
and the confusion table, and serialising the figures to JSON (what ``st.plotly_chart``
sends). With ``--apptest`` it also times a full AppTest rerun after ``slider.set_value``,
an upper bound: AppTest reruns the whole page, the browser reruns only the fragment.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _time(fn, reps: int) -> tuple[float, float]:
    fn()  # warm-up: the first call pays one-off imports (plotly's JSON engine)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000, max(out) * 1000


def bench_arrays(y: np.ndarray, s: np.ndarray, label: str, reps: int) -> None:
    import pandas as pd

    from cxr_core.anomaly import ThresholdTable, histogram_data
    from pages.ui.anomaly_views import histogram_figure, roc_figure

    t0 = time.perf_counter()
    table = ThresholdTable(y, s)
    hist = histogram_data(y, s)
    fpr, tpr = table.roc()
    setup = (time.perf_counter() - t0) * 1000
    thresholds = np.quantile(s, np.linspace(0.01, 0.99, reps))
    it = iter(np.resize(thresholds, reps * 4))

    def counts() -> None:
        table.metrics(float(next(it)))

    def fragment() -> None:
        t = float(next(it))
        m = table.metrics(t)
        h = histogram_figure(hist, t)
        r = roc_figure(fpr, tpr, (m["fpr"], m["sensitivity"]), 0.9)
        pd.DataFrame([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
        h.to_json()
        r.to_json()

    c_med, c_max = _time(counts, reps)
    f_med, f_max = _time(fragment, reps)
    print(f"{label}: n={len(s):,}  setup (sort, histogram, ROC; once per detector/split) {setup:.1f} ms")
    print(f"  confusion counts per move     median {c_med * 1000:.1f} µs   max {c_max * 1000:.1f} µs")
    print(f"  fragment body per move        median {f_med:.1f} ms   max {f_max:.1f} ms"
          "  (counts + 2 plotly figures + table + JSON)")


def bench_apptest(registry: str, reps: int) -> None:
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["CXR_REGISTRY"] = registry
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "pages" / "3_Anomaly_threshold.py"
    at = AppTest.from_file(str(page), default_timeout=300).run()
    entry_id = at.selectbox(key="anomaly_entry").value
    slider = at.slider(key=f"anomaly_thr::{entry_id}")
    lo, hi = slider.min, slider.max
    times = []
    for v in np.linspace(lo, hi, reps + 1)[1:]:
        t0 = time.perf_counter()
        at.slider(key=f"anomaly_thr::{entry_id}").set_value(float(v)).run()
        times.append((time.perf_counter() - t0) * 1000)
    print(f"AppTest full-page rerun after a slider move ({entry_id}): median {statistics.median(times):.0f} ms, "
          f"max {max(times):.0f} ms over {reps} moves (whole script incl. example images; the browser reruns only the fragment)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threshold", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=None, help="registry with anomaly detectors (uses their test scores)")
    p.add_argument("--n", type=int, nargs="*", default=[624, 100_000], help="synthetic score-set sizes")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--apptest", action="store_true", help="also time full AppTest reruns (needs --registry)")
    ns = p.parse_args(argv)
    if ns.registry:
        from cxr_core.anomaly import anomaly_entries
        from cxr_core.registry import list_entries

        for entry in anomaly_entries(list_entries(ns.registry)):
            z = entry.load_npz("scores.npz")
            m = z["splits"] == "test"
            bench_arrays(z["labels"][m], z["scores"][m], f"{entry.card.get('name')} [test]", ns.reps)
    rng = np.random.default_rng(0)
    for n in ns.n:
        y = (rng.random(n) < 0.6).astype(int)
        bench_arrays(y, rng.normal(size=n) + y, "synthetic", ns.reps)
    if ns.apptest and ns.registry:
        bench_apptest(ns.registry, min(ns.reps, 10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
