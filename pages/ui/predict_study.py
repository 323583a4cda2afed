"""One study's full view, shared by the Predict page and the Worklist: the chest X-ray check first, then
the image (DICOM window/level and technical header), the predictions (greyed when the check flags
the image), and the sections (anomaly, neighbours, class activation map, comparison, report)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import streamlit as st

from cxr_core.cards import OPERATING_POINT_LABELS
from cxr_core.config import task_title
from cxr_core.imaging import DecodedImage
from pages.ui.loaders import ood_guard, predictor
from pages.ui.widgets import md_filename, predict_section

_PRED_CACHE = "study_predictions"
#: Predictions kept per session (the worklist reopens studies): uploads stay in this session only.
_PRED_CACHE_SIZE = 8

# Greyed predictions for a study the chest X-ray check flags (containers with a key get a class).
_GREY_CSS = """<style>
.st-key-predictions_flagged { opacity: 0.45; filter: grayscale(1); }
</style>"""


def digest(decoded: DecodedImage) -> str:
    return hashlib.sha1(decoded.array.tobytes()).hexdigest() + f"-{decoded.array.shape}"


def cached_prediction(decoded: DecodedImage, tta: bool) -> Any:
    """``Predictor.predict`` once per (image, TTA) in this session (reopening a worklist study is free)."""
    cache: OrderedDict = st.session_state.setdefault(_PRED_CACHE, OrderedDict())
    key = (digest(decoded), tta)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    pred = predictor().predict(decoded.array, tta=4 if tta else 1)
    cache[key] = pred
    while len(cache) > _PRED_CACHE_SIZE:
        cache.popitem(last=False)
    return pred


def guard_verdict(decoded: DecodedImage, raw: bytes | None) -> Any:
    """The chest X-ray guard's ``OODResult`` (cheap checks only without a fitted guard); an exception if it failed."""
    from cxr_core.ood import cheap_check

    guard = ood_guard()
    try:
        if guard is not None:
            return guard.check(decoded.array, original_shape=decoded.original_shape, raw=raw)
        return cheap_check(decoded.array, original_shape=decoded.original_shape, raw=raw)
    except Exception as e:  # the guard must never take the page down
        return e


def render_verdict(res: Any) -> None:
    """The guard's verdict, above everything else the study shows."""
    guard = ood_guard()
    if isinstance(res, Exception):
        st.error(f"The chest X-ray check could not run: {type(res).__name__}: {res}")
        return
    if not res.looks_like_cxr:
        st.warning(
            "**This image does not look like a pediatric chest X-ray**: " + "; ".join(res.reasons)
            + ". The predictions below assume one and are not meaningful for it.",
            icon="⚠️",
        )
        if guard is not None and guard.synthetic:
            st.caption("This guard was fitted on the synthetic demo phantoms, so a real X-ray can look unlike them "
                       "too. Fit it on real films with `python -m train.anomaly --detector ood`.")
    elif guard is not None:
        st.success(f"Looks like a chest X-ray: feature distance {res.distance:.3g} "
                   f"(the guard flags at {res.threshold:.3g}).", icon="✅")
    else:
        st.caption("Colour and shape look like a radiograph. No feature-based chest X-ray guard in the registry "
                   "(`python -m train.anomaly --detector ood`).")


def decision_caption(res: Any) -> str:
    """How the shown label was decided, and how the shown probabilities were calibrated."""
    parts = []
    if res.task == "binary":
        source = OPERATING_POINT_LABELS.get(res.threshold_source or "default", res.threshold_source)
        parts.append(f"Threshold on P(pneumonia): {res.shown_threshold:.2f} ({source})")
    else:
        parts.append("The most probable class")
    if res.temperature != 1.0:
        parts.append(f"probabilities temperature-scaled on validation (T = {res.temperature:.2f})")
    return " · ".join(parts) + f" · model `{res.entry_id}`"


def render_predictions(pred: Any, flagged: bool) -> None:
    """Label and probabilities per model; greyed, with the reason above, when the guard flagged the image."""
    if flagged:
        st.markdown(_GREY_CSS, unsafe_allow_html=True)
    box = st.container(key="predictions_flagged" if flagged else "predictions")
    with box:
        for task, res in pred.results.items():  # the Predictor's order: binary, multiclass, then other tasks
            st.subheader(task_title(task, list(res.as_dict)))
            st.metric("Prediction", res.label, f"{res.confidence:.1%} confidence", delta_color="off")
            for cls, p in res.as_dict.items():
                st.progress(p, text=f"{cls}: {p:.1%}")
            st.caption(decision_caption(res))
        if flagged:
            st.caption("Greyed: the chest X-ray check above flags this image.")


def display_image(name: str, raw: bytes | None, decoded: DecodedImage, key: str) -> np.ndarray:
    """The image as displayed: the DICOM window/level the user picked (the file's own by default)."""
    h, w = decoded.original_shape
    shown = md_filename(name)
    if decoded.format != "DICOM" or raw is None:
        st.image(decoded.array, caption=f"{shown} · {decoded.format} · {w}×{h}", width="stretch")
        return decoded.array
    from pages.ui.predict_dicom import render_dicom

    return render_dicom(shown, raw, decoded, key)


def technical_rows(raw: bytes | None, decoded: DecodedImage) -> list[tuple[str, str]]:
    """The technical header panel's rows of a DICOM study (empty for other formats or an unreadable header)."""
    if decoded.format != "DICOM" or raw is None:
        return []
    from pages.ui.predict_dicom import dicom_study

    try:
        return dicom_study(raw).header.rows_for_display()
    except Exception:  # the header panel is optional
        return []


def render_study(name: str, raw: bytes | None, decoded: DecodedImage, *, tta: bool = False, key: str = "study") -> None:
    """The whole view of one decoded study (``raw``: its bytes, for the colour check and the DICOM header)."""
    for notice in decoded.notices:
        st.info(notice)
    verdict = guard_verdict(decoded, raw)
    render_verdict(verdict)
    try:
        pred = cached_prediction(decoded, tta)
    except Exception as e:  # a model failure must read as a message, not a traceback
        st.error(f"The models could not classify **{md_filename(name)}**: {type(e).__name__}: {str(e)[:300]}")
        return
    flagged = not isinstance(verdict, Exception) and not verdict.looks_like_cxr
    pred.extras["ood"] = verdict
    # Session-scoped only: the explorer marks this upload on its map. No pixels, no file bytes.
    from pages.ui.widgets import clean_filename

    st.session_state["last_prediction"] = {
        "name": clean_filename(name), "embedding": pred.embedding, "entry": pred.embedding_entry,
    }
    col_img, col_res = st.columns([1, 1])
    with col_img:
        shown = display_image(name, raw, decoded, key)
    with col_res:
        render_predictions(pred, flagged)
    pred.extras["display"] = shown
    pred.extras["name"] = name
    # The DICOM's technical header rows only (allow-listed in cxr_core.dicom_view), never its bytes.
    pred.extras["technical"] = technical_rows(raw, decoded)

    # Sections: one line each, ``predict_section("predict_<name>", decoded, pred)`` renders
    # pages/ui/predict_<name>.py; a section that fails shows an error and the others still render.
    predict_section("predict_report", decoded, pred)
    predict_section("predict_anomaly", decoded, pred)
    predict_section("predict_neighbors", decoded, pred)
    predict_section("predict_gradcam", decoded, pred)
    predict_section("predict_compare", decoded, pred)
