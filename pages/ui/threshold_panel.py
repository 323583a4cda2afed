"""The Anomaly threshold page's live operating point: slider, histograms, ROC, metrics, confusion matrix.

A Streamlit components-v2 element whose JavaScript (``threshold_panel.js``) recomputes and redraws
everything in the browser while the slider moves, from the sorted scores sent once per detector
and split. A plain ``st.slider`` costs a server round trip per step; this answers at once and sends
the value to Python (the ``committed`` trigger) only when the user lets go.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from cxr_core.anomaly import ThresholdTable, histogram_data

from .anomaly_views import thin_curve

_HERE = Path(__file__).parent
_panel = st.components.v2.component(
    "cxr_lens_threshold_panel",
    js=(_HERE / "threshold_panel.js").read_text(),
    css=(_HERE / "threshold_panel.css").read_text(),
    isolate_styles=False,
)


def panel_data(table: ThresholdTable, hist: dict[str, Any] | None, *, threshold: float, lo: float, hi: float,
               step: float, decimals: int, auroc: float | None, rev: int, max_roc_points: int = 300) -> dict[str, Any]:
    """What the browser needs to recompute every figure of the panel at any threshold."""
    if hist is None:  # older cards: bin the stored scores here
        y = np.r_[np.zeros(table.n_neg, int), np.ones(table.n_pos, int)]
        hist = histogram_data(y, np.r_[table.neg, table.pos])
    fpr, tpr = thin_curve(*table.roc(), max_roc_points)
    data = {
        "neg": table.neg.tolist(), "pos": table.pos.tolist(),
        "hist": {k: list(hist[k]) for k in ("edges", "normal", "anomalous")},
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        "auroc": None if auroc is None or not np.isfinite(auroc) else float(auroc),
        "min": lo, "max": hi, "step": step, "decimals": decimals,
    }
    # Identifies the score set: the browser rebuilds its charts only when this changes.
    data["dataset"] = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    data.update(threshold=float(threshold), rev=int(rev))
    return data


def threshold_panel(data: dict[str, Any], *, key: str, on_commit: Callable[[], None]) -> Any:
    """Mount the panel; ``on_commit`` runs (before the fragment reruns) when the user lets go of the slider."""
    return _panel(key=key, data=data, on_committed_change=on_commit, width="stretch")
