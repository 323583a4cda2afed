"""Predict page section: the class activation map (HiResCAM, Grad-CAM, Grad-CAM++) beside the upload, with its controls and a PNG export."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, NamedTuple

import streamlit as st

from cxr_core.config import task_title
from cxr_core.explain.explainer import Explanation
from cxr_core.explain.methods import METHOD_LABELS, METHODS
from cxr_core.explain.overlay import COLORMAPS, cam_png, overlay
from cxr_core.imaging import DecodedImage
from cxr_core.models import gradcam_layer_choices

from .loaders import explainer
from .widgets import LAYER_HELP, METHOD_HELP

_CACHE_KEY = "gradcam_cache"
#: CAMs kept per session (uploads stay in this session's memory only, never in a shared cache).
_CACHE_SIZE = 12


def _cached_cam(key: tuple, compute: Any) -> Explanation:
    cache: OrderedDict = st.session_state.setdefault(_CACHE_KEY, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = compute()
    cache[key] = value
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def render(decoded: DecodedImage, prediction: Any) -> None:
    """Grad-CAM for the prediction shown above: the predicted class by default, any class on request."""
    st.subheader("Why: class activation map")
    tasks = list(prediction.results)  # the Predictor's order: binary, multiclass, then other tasks
    if not tasks:
        return
    digest = hashlib.sha1(decoded.array.tobytes()).hexdigest() + f"-{decoded.array.shape}"
    _section(decoded, prediction, tasks, digest)


class _Choice(NamedTuple):
    """What the control row asks for."""

    task: str
    target: str
    method: str
    layer: str | None
    cmap: str
    alpha: float


@st.fragment
def _section(decoded: DecodedImage, prediction: Any, tasks: list[str], digest: str) -> None:
    # A fragment: moving the slider or changing a select reruns this section, not the prediction.
    ch = _controls(prediction, tasks)
    res = prediction.results[ch.task]
    try:
        exp = _explanation(decoded, prediction, ch, digest)
        shown = overlay(decoded.array, exp.cam, ch.alpha, ch.cmap)
    except Exception as e:  # an explanation failure must not take the prediction down with it
        st.error(f"The {METHOD_LABELS[ch.method]} map could not be computed: {type(e).__name__}: {e}")
        return

    if ch.task == "binary" and "multiclass" in tasks:
        st.caption(
            "For *where*, prefer the normal / bacterial / viral model: on synthetic phantoms with known "
            "lesions its map peaks inside the lesion more reliably than the binary model's (docs/GRADCAM.md)."
        )
    col_img, col_cam = st.columns(2)
    col_img.image(decoded.array, caption="Image", width="stretch")
    col_cam.image(
        shown, width="stretch",
        caption=f"{METHOD_LABELS[ch.method]} for {ch.target} · layer `{exp.layer}` · {exp.seconds * 1000:.0f} ms",
    )
    if exp.empty:
        st.info(
            f"No region of this image raises the model's score for **{ch.target}**: the map is empty. "
            "The evidence points the other way; try the other class.",
        )
    _download(decoded, res, ch, exp)


def _controls(prediction: Any, tasks: list[str]) -> _Choice:
    """The row of selectors above the map: model, class, method, layer, colormap, opacity."""
    c_model, c_target, c_method, c_layer, c_cmap, c_alpha = st.columns([1.3, 1.2, 1, 1.3, 1, 1.3])
    task = c_model.selectbox(
        "Model", tasks, format_func=lambda t: task_title(t, list(prediction.results[t].classes)), key="gradcam_task",
        disabled=len(tasks) == 1,
    )
    res = prediction.results[task]
    classes = list(res.classes)
    target = c_target.selectbox(
        "Explain class", classes, index=classes.index(res.label), key=f"gradcam_target_{task}",
        help="The predicted class by default. The map shows where the evidence FOR this class lies.",
    )
    method = c_method.selectbox("Method", list(METHODS), format_func=METHOD_LABELS.get, key="gradcam_method",
                                help=METHOD_HELP)
    try:
        layers = gradcam_layer_choices(str(explainer(res.entry_id).architecture))
    except Exception:  # an unloadable entry is reported below, with the map
        layers = {"final feature map": None}
    layer_label = c_layer.selectbox("Layer", list(layers), key=f"gradcam_layer_{task}", help=LAYER_HELP)
    cmap = c_cmap.selectbox("Colormap", COLORMAPS, key="gradcam_cmap")
    alpha = c_alpha.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="gradcam_alpha")
    return _Choice(task, target, method, layers[layer_label], cmap, alpha)


def _explanation(decoded: DecodedImage, prediction: Any, ch: _Choice, digest: str) -> Explanation:
    res = prediction.results[ch.task]
    ex = explainer(res.entry_id, ch.layer, ch.method)
    # The classification pass kept this layer's output: only the network after it runs again
    # (same map, a fraction of the time); without it, the full forward/backward.
    feats = prediction.feature_maps.get(ch.task, {}).get(ex.kept_layer) if ex.kept_layer else None
    return _cached_cam(
        (digest, res.entry_id, ch.method, ch.target, ch.layer),
        lambda: ex.explain_features(decoded.array, feats, method=ch.method, target=ch.target)
        if feats is not None
        else ex.explain(decoded.array, method=ch.method, target=ch.target),
    )


def _download(decoded: DecodedImage, res: Any, ch: _Choice, exp: Explanation) -> None:
    title = (
        f"Prediction: {res.label} ({res.confidence:.1%}) · {task_title(ch.task, list(res.classes))}\n"
        f"{METHOD_LABELS[ch.method]} for {ch.target} · layer {exp.layer} · model {res.entry_id} · not for clinical use"
    )
    st.download_button(
        "Download heatmap (PNG)",
        data=lambda: cam_png(decoded.array, exp.cam, title, alpha=ch.alpha, colormap=ch.cmap),
        file_name=f"gradcam_{ch.task}_{ch.target}_{ch.method}.png".replace("+", "p"),
        mime="image/png",
        on_click="ignore",
        key="gradcam_download",
    )
