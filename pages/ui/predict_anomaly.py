"""Predict page section: how anomalous is the upload against each healthy-only detector?

The chest X-ray guard's verdict is not drawn here: the study view (``predict_study.render_verdict``)
shows it above the predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from cxr_core.imaging import DecodedImage

from .anomaly_views import heatmap, histogram_figure
from .loaders import anomaly_detector, anomaly_detector_entries


def render_detector(entry: Any, decoded: DecodedImage) -> None:
    det = anomaly_detector(entry.id)
    out = det.score(decoded.array)
    card = entry.card
    threshold = float(card.get("threshold", out.threshold))
    flagged = out.score >= threshold
    auroc = card.get("metrics", {}).get("test", {}).get("auroc")
    c1, c2 = st.columns([1, 2])
    with c1:
        st.metric(card.get("name", entry.id), f"{out.score:.4g}",
                  f"{'above' if flagged else 'below'} threshold {threshold:.4g}",
                  delta_color="inverse" if flagged else "normal")
        st.caption(("**Flagged as unlike the healthy training images.** " if flagged else "Within the healthy range. ")
                   + (f"Test AUROC of this detector: {auroc:.3f}." if auroc is not None else ""))
    with c2:
        hist = card.get("histograms", {}).get("val")
        if hist is not None:
            st.plotly_chart(histogram_figure(hist, threshold, marker=out.score, height=220), width="stretch",
                            key=f"pred_anomaly_hist::{entry.id}")
    if out.error_map is not None and out.reconstruction is not None:
        a, b, c = st.columns(3)
        a.image(out.input_u8, caption="autoencoder input", width="stretch", clamp=True)
        b.image(np.clip(out.reconstruction, 0, 1), caption="reconstruction", width="stretch", clamp=True)
        c.image(heatmap(out.error_map), caption="reconstruction error", width="stretch")


def render(decoded: DecodedImage, prediction: Any) -> None:
    """The anomaly score(s) of the upload against each saved threshold."""
    st.subheader("Out of the ordinary?")
    detectors = anomaly_detector_entries()
    if not detectors:
        st.caption("No healthy-only anomaly detector in the registry (`python -m train.anomaly`).")
        return
    from cxr_core.anomaly import worse_than_chance

    useful = [e for e in detectors if not worse_than_chance(e)]
    inverted = [e for e in detectors if worse_than_chance(e)]
    st.caption("Healthy-only detectors: fitted on NORMAL training images only; the histogram shows validation "
               "scores (blue normal, red pneumonia), the dashed line the saved threshold, the purple line this image.")
    if inverted:
        # Its score reads backwards (pneumonia scores lower than healthy films): "within the healthy
        # range" would mislead, so it is not computed here. The threshold page shows it in full.
        st.caption("Not scored here, worse than chance on validation: " + "; ".join(
            f"{e.card.get('name', e.id)} (AUROC {e.card['metrics']['val']['auroc']:.3f})" for e in inverted)
            + ". The Anomaly threshold page shows why.")
    for entry in useful:
        try:
            render_detector(entry, decoded)
        except Exception as e:  # one broken detector must not hide the others
            st.error(f"Detector `{entry.id}` could not score this image: {type(e).__name__}: {e}")
