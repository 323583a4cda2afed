"""Predict-page section: the study beside one of its nearest reference cases, at full size, each with its
class activation map, label and distance; one zoom for both."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from cxr_core.imaging import DecodedImage
from cxr_core.report import nearest_references

from .loaders import explainer, reference_set

#: Reference cases offered for comparison.
N_COMPARE = 7


def zoom_crop(img: np.ndarray, zoom: float, cx: float, cy: float) -> np.ndarray:
    """The part of ``img`` a ``zoom``× view centred at (cx, cy) (fractions of width/height) shows."""
    h, w = img.shape[:2]
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    y0 = int(min(max(round(cy * h - ch / 2), 0), h - ch))
    x0 = int(min(max(round(cx * w - cw / 2), 0), w - cw))
    return img[y0 : y0 + ch, x0 : x0 + cw]


def render(decoded: DecodedImage, prediction: Any) -> None:
    st.subheader("Compare with a reference case")
    emb, entry_id = prediction.embedding, prediction.embedding_entry
    ref = reference_set(entry_id) if emb is not None and entry_id else None
    if ref is None or np.asarray(emb).shape[-1] != ref.knn.embeddings.shape[1]:
        st.caption("No embedding index for this model: no reference case to compare with.")
        return
    rows, dist, _ = nearest_references(ref.knn, emb, N_COMPARE)
    if len(rows) == 0:
        return
    _section(decoded, prediction, [int(r) for r in rows], [float(d) for d in dist])


@st.fragment
def _section(decoded: DecodedImage, prediction: Any, rows: list[int], dist: list[float]) -> None:
    from cxr_core.explain.methods import DEFAULT_METHOD
    from cxr_core.explain.overlay import overlay

    entry_id = prediction.embedding_entry
    ref = reference_set(entry_id)
    c_pick, c_zoom, c_x, c_y, c_map = st.columns([2.2, 1, 1, 1, 0.8])
    pick = c_pick.selectbox(
        "Reference case", range(len(rows)), key="compare_pick",
        format_func=lambda i: f"{i + 1}. {ref.labels[rows[i]]} · d={dist[i]:.3f} · {ref.splits[rows[i]]}",
    )
    zoom = c_zoom.slider("Zoom (both)", 1.0, 4.0, 1.0, 0.25, key="compare_zoom")
    cx = c_x.slider("Centre x", 0.0, 1.0, 0.5, 0.05, key="compare_cx", disabled=zoom == 1.0)
    cy = c_y.slider("Centre y", 0.0, 1.0, 0.5, 0.05, key="compare_cy", disabled=zoom == 1.0)
    show_map = c_map.toggle("Maps", value=True, key="compare_maps")
    row = rows[pick]
    task = ref.task if ref.task in prediction.results else next(iter(prediction.results))
    res = prediction.results[task]
    try:
        ex = explainer(res.entry_id, None, DEFAULT_METHOD)
        other = ref.image(row)
        mine = ex.explain_features(decoded.array, f, method=DEFAULT_METHOD, target=res.label) if (
            ex.kept_layer and (f := prediction.feature_maps.get(task, {}).get(ex.kept_layer)) is not None
        ) else ex.explain(decoded.array, method=DEFAULT_METHOD, target=res.label)
        theirs = _reference_cam(ex, entry_id, row, other)
    except Exception as e:  # the comparison must not take the study view down
        st.error(f"The comparison could not be shown: {type(e).__name__}: {e}")
        return
    left = overlay(decoded.array, mine.cam, 0.4) if show_map else decoded.array
    right = overlay(other, theirs.cam, 0.4) if show_map else other
    a, b = st.columns(2)
    a.image(zoom_crop(left, zoom, cx, cy), width="stretch",
            caption=f"This study · predicted {res.label} ({res.confidence:.1%}) · map for {mine.target_name}")
    b.image(zoom_crop(right, zoom, cx, cy), width="stretch",
            caption=f"Reference {pick + 1}: labelled {ref.labels[row]} ({ref.subtypes[row]}, {ref.splits[row]}) · "
                    f"d={dist[pick]:.3f} · map for {theirs.target_name}")
    st.caption("Both views zoom to the same region (fractions of each image's width and height). "
               f"Maps: HiResCAM of `{res.entry_id}` for each image's predicted class. "
               + ("The reference is shown from its thumbnail: its dataset folder is not reachable."
                  if max(other.shape) <= max(np.asarray(ref.thumbs[row]).shape) else ""))


def _reference_cam(ex: Any, entry_id: str, row: int, gray: np.ndarray) -> Any:
    cache = st.session_state.setdefault("compare_cams", {})
    key = (entry_id, row, ex.layer_name)
    if key not in cache:
        if len(cache) > 16:
            cache.clear()
        cache[key] = ex.explain(gray, method="hirescam")
    return cache[key]
