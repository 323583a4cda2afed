"""Predict page section: how anomalous is the upload against each healthy-only detector?

The chest X-ray guard's verdict is not drawn here: the study view (``predict_study.render_verdict``)
shows it above the predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from cxr_core.imaging import DecodedImage

from .anomaly_views import detector_family, heatmap, histogram_figure, map_overlay
from .loaders import anomaly_detector, anomaly_detector_entries


def default_cam(decoded: DecodedImage, prediction: Any) -> tuple[Any, str] | None:
    """The Predict page's default class activation map (first model, predicted class, default method and layer).

    Computed through the CAM section's per-session cache with the same key, so the section below reuses it.
    """
    import hashlib

    from cxr_core.explain import DEFAULT_METHOD, METHOD_LABELS, overlay

    from .loaders import explainer
    from .predict_gradcam import _cached_cam

    results = getattr(prediction, "results", None) or {}
    tasks = list(results)
    if not tasks:
        return None
    res = results[tasks[0]]
    digest = hashlib.sha1(decoded.array.tobytes()).hexdigest() + f"-{decoded.array.shape}"
    ex = explainer(res.entry_id, None, DEFAULT_METHOD)
    feats = prediction.feature_maps.get(tasks[0], {}).get(ex.kept_layer) if ex.kept_layer else None
    exp = _cached_cam(
        (digest, res.entry_id, DEFAULT_METHOD, res.label, None),
        lambda: ex.explain_features(decoded.array, feats, method=DEFAULT_METHOD, target=res.label)
        if feats is not None
        else ex.explain(decoded.array, method=DEFAULT_METHOD, target=res.label),
    )
    return overlay(decoded.array, exp.cam, 0.4), f"{METHOD_LABELS[DEFAULT_METHOD]} for {res.label} (class activation map)"


def render_detector(entry: Any, decoded: DecodedImage, prediction: Any = None, *, with_cam: bool = False) -> None:
    det = anomaly_detector(entry.id)
    out = det.score(decoded.array)
    card = entry.detector_card
    threshold = card.threshold_or(out.threshold)
    flagged = out.score >= threshold
    auroc = card.auroc("test")
    c1, c2 = st.columns([1, 2])
    with c1:
        st.metric(card.label, f"{out.score:.4g}",
                  f"{'above' if flagged else 'below'} threshold {threshold:.4g}",
                  delta_color="inverse" if flagged else "normal")
        st.caption(("**Flagged as unlike the healthy training images.** " if flagged else "Within the healthy range. ")
                   + (f"Test AUROC of this detector: {auroc:.3f}." if auroc is not None else ""))
    with c2:
        hist = card.histograms.get("val")
        if hist is not None:
            st.plotly_chart(histogram_figure(hist, threshold, marker=out.score, height=220), width="stretch",
                            key=f"pred_anomaly_hist::{entry.id}")
    if out.error_map is not None and out.reconstruction is None:
        # Feature reconstruction: where the healthy-only network failed to redraw the film's features,
        # drawn on the film as uploaded (the detector's input is the film squashed to a square).
        scale = card.map_scale
        shown = map_overlay(decoded.array, out.error_map, vmax=scale)
        caption = ("anomaly map · full colour = the 99th percentile of healthy validation films' error"
                   if scale else "anomaly map (own scale)")
        a, b = st.columns(2)
        a.image(shown, width="stretch", caption=caption)
        if with_cam:
            cam = default_cam(decoded, prediction)
            if cam is None:
                b.caption("No class activation map: no classifier result for this image.")
            else:
                b.image(cam[0], width="stretch", caption=cam[1])
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
            f"{e.detector_card.label} (AUROC {e.detector_card.val_auroc:.3f})" for e in inverted)
            + ". The Anomaly threshold page shows why.")
    # Best on validation first: its map is the one drawn beside the class activation map.
    useful.sort(key=lambda e: -(e.detector_card.val_auroc or 0.0))
    cam_shown = False
    for entry in useful:
        try:
            st.caption(f"**{entry.detector_card.label}** · {detector_family(entry.detector_card)}")
            # The best feature reconstruction detector's map goes beside the class activation map.
            with_cam = not cam_shown and entry.detector_card.has_map
            cam_shown |= with_cam
            render_detector(entry, decoded, prediction, with_cam=with_cam)
        except Exception as e:  # one broken detector must not hide the others
            st.error(f"Detector `{entry.id}` could not score this image: {type(e).__name__}: {e}")
