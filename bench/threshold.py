"""Server-side cost of the anomaly-threshold page's operating point.

    python -m bench.threshold --registry registry-kermany     # a real detector's scores
    python -m bench.threshold --n 624 100000                  # synthetic scores of these sizes

The slider itself is answered in the browser (``pages/ui/threshold_panel.js``; its response is
measured in chromium by ``python -m bench.app_bench --only slider``). What remains on the server
runs once per committed value: the O(log n) confusion counts (``ThresholdTable.metrics``, for Save)
and the panel's data (sorted scores, histogram, thinned ROC), whose JSON size is printed too. With
``--apptest`` it also times a full AppTest rerun after a commit, an upper bound: AppTest reruns the
whole page, the browser reruns only the fragment.
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
    import json

    from cxr_core.anomaly import ThresholdTable, histogram_data
    from pages.ui.threshold_panel import panel_data

    t0 = time.perf_counter()
    table = ThresholdTable(y, s)
    hist = histogram_data(y, s)
    table.roc()
    setup = (time.perf_counter() - t0) * 1000
    thresholds = np.quantile(s, np.linspace(0.01, 0.99, reps))
    it = iter(np.resize(thresholds, reps * 4))
    lo, hi = float(s.min()), float(s.max())

    def counts() -> None:
        table.metrics(float(next(it)))

    def commit() -> None:
        t = float(next(it))
        table.metrics(t)
        json.dumps(panel_data(table, hist, threshold=t, lo=lo, hi=hi, step=(hi - lo) / 1000, decimals=3,
                              auroc=0.9, rev=0))

    c_med, c_max = _time(counts, reps)
    f_med, f_max = _time(commit, reps)
    size = len(json.dumps(panel_data(table, hist, threshold=lo, lo=lo, hi=hi, step=(hi - lo) / 1000, decimals=3,
                                     auroc=0.9, rev=0)))
    print(f"{label}: n={len(s):,}  setup (sort, histogram, ROC; once per detector/split) {setup:.1f} ms")
    print(f"  confusion counts              median {c_med * 1000:.1f} µs   max {c_max * 1000:.1f} µs")
    print(f"  server work per commit        median {f_med:.1f} ms   max {f_max:.1f} ms"
          f"  (counts + the panel's data as JSON, {size / 1024:.0f} KiB)")


def bench_apptest(registry: str, reps: int) -> None:
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["CXR_REGISTRY"] = registry
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "pages" / "3_Anomaly_threshold.py"
    at = AppTest.from_file(str(page), default_timeout=300).run()
    entry_id = at.selectbox(key="anomaly_entry").value
    key = f"anomaly_thr::{entry_id}"
    panel = next(e for e in at.get("bidi_component") if e.proto.component_name == "cxr_lens_threshold_panel")
    import json

    data = json.loads(panel.proto.json)
    times = []
    for v in np.linspace(data["min"], data["max"], reps + 1)[1:]:
        t0 = time.perf_counter()
        at.session_state[key] = float(v)  # what the panel's commit callback stores
        at.run()
        times.append((time.perf_counter() - t0) * 1000)
    print(f"AppTest full-page rerun after a commit ({entry_id}): median {statistics.median(times):.0f} ms, "
          f"max {max(times):.0f} ms over {reps} values (whole script incl. example images; the browser reruns only the fragment)")


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
            bench_arrays(z["labels"][m], z["scores"][m], f"{entry.info.label} [test]", ns.reps)
    rng = np.random.default_rng(0)
    for n in ns.n:
        y = (rng.random(n) < 0.6).astype(int)
        bench_arrays(y, rng.normal(size=n) + y, "synthetic", ns.reps)
    if ns.apptest and ns.registry:
        bench_apptest(ns.registry, min(ns.reps, 10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
