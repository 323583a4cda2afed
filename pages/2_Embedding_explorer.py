"""Embedding explorer: the reference set on a t-SNE / UMAP map; click or lasso to see images and neighbours."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cxr_core.projection import METHOD_LABELS, parse_name
from pages.ui.embedding_views import (
    COLOUR_OPTIONS,
    breakdown,
    caption,
    scatter_figure,
    selected_rows,
    show_neighbors,
    show_votes,
)
from pages.ui.frame import page_frame
from pages.ui.loaders import indexed_classifiers, reference_set

PAGE_SIZE = 48
MAP_KEY = "explorer_map"
COLOUR_NOTES = {
    "correct": "Correct: the classifier head's answer (binary: at the card's threshold) equals the image's label.",
    "KNN agrees with head": "KNN agrees: the majority of the {k} nearest other images (all splits, the image itself "
                            "left out) votes for the class the head predicts. Disagreements are where to look for "
                            "confusions and mislabeled images.",
}

page_frame("Embedding explorer", needs_classifier=True)

indexed = indexed_classifiers()
if not indexed:
    st.info(
        "No classifier has an embedding index yet. Build one with "
        "`python -m train.index binary --data DIR` (the demo build makes one for each demo model)."
    )
    st.stop()

last = st.session_state.get("last_prediction") or {}
ids = [s.id for s in indexed]
default = ids.index(last["entry"]) if last.get("entry") in ids else 0
labels = {s.id: f"{s.info.task if s.info else '?'} · {s.id}" for s in indexed}
entry_id = st.selectbox("Model (its embedding space)", ids, index=default, format_func=labels.get, key="explorer_entry")


def upload_marker(ref, map_name: str) -> tuple[str, np.ndarray] | None:
    """The last Predict-page upload, placed on this map from its neighbours, when it lives in this space."""
    last = st.session_state.get("last_prediction") or {}
    emb = last.get("embedding")
    if emb is None:
        return None
    if last.get("entry") != ref.entry_id or np.asarray(emb).shape[-1] != ref.knn.embeddings.shape[1]:
        st.caption(f"The last upload ({last.get('name')}) was embedded by `{last.get('entry')}`; "
                   "choose that model above to see it on the map.")
        return None
    return str(last.get("name", "upload")), ref.place(np.asarray(emb), map_name)


def show_point(ref, row: int, k: int) -> None:
    """One image large, its K nearest neighbours (itself left out) and their vote."""
    cls = ref.classes
    left, right = st.columns([2, 3])
    with left:
        probs = ", ".join(f"{c} {p:.0%}" for c, p in zip(cls, ref.probs[row].tolist(), strict=True))
        st.image(ref.image(row), caption=caption(ref, row), width="stretch")
        st.caption(f"Row {row} · patient {ref.patients[row]} · head: **{cls[int(ref.predicted[row])]}** ({probs}) · "
                   f"path `{ref.paths[row]}`")
    with right:
        nb = ref.knn.query_rows([row], k)
        st.markdown(f"**{nb.ids.shape[1]} nearest reference images** (cosine distance, all splits, itself left out)")
        show_neighbors(ref, nb)
        show_votes(ref, nb, head_label=cls[int(ref.predicted[row])])
        truth = cls[int(ref.targets[row])]
        st.caption(f"Label of this image for the {ref.task} task: **{truth}**.")


def show_selection(ref, rows: list[int]) -> None:
    """Gallery (paged) and class breakdown of a box / lasso selection."""
    st.markdown(f"**{len(rows):,} images selected**")
    counts = breakdown(ref, rows)
    cols = st.columns(len(counts))
    for col, (name, c) in zip(cols, counts.items(), strict=True):
        col.dataframe({name: list(c), "images": list(c.values())}, hide_index=True, width="stretch")
    pages = max(1, (len(rows) + PAGE_SIZE - 1) // PAGE_SIZE)
    page = st.columns([1, 4])[0].number_input(f"Page (of {pages})", 1, pages, 1, key="explorer_page") if pages > 1 else 1
    shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    st.image([np.asarray(ref.thumbs[r]) for r in shown], caption=[caption(ref, r) for r in shown], width=110)


@st.fragment
def explorer(entry_id: str) -> None:
    """View changes and selections rerun only this fragment, not the page."""
    try:
        _explorer(entry_id)
    except Exception as e:  # the page must explain, not show a traceback
        st.error(f"The explorer could not draw this index: {type(e).__name__}: {e}")


def _explorer(entry_id: str) -> None:
    ref = reference_set(entry_id)
    if ref is None:
        st.error(f"The embedding index of `{entry_id}` could not be loaded; rebuild it with `python -m train.index {entry_id} --data DIR`.")
        return
    if not ref.maps:
        st.warning("This index has no maps. Rebuild it with projections: "
                   f"`python -m train.index {entry_id} --data DIR --projections tsne_2d,umap_2d`.")
        return
    available = [parse_name(n) for n in sorted(ref.maps)]
    methods = sorted({m for m, _ in available}, key=list(METHOD_LABELS).index)
    c1, c2, c3, c4, c5 = st.columns([1.2, 1, 1.4, 0.8, 2])
    method = c1.radio("Method", methods, format_func=METHOD_LABELS.get, horizontal=True, key="explorer_method")
    dims_ok = sorted(d for m, d in available if m == method)
    dims = c2.radio("Dimensions", dims_ok, format_func=lambda d: f"{d}-D", horizontal=True, key="explorer_dims")
    colour = c3.selectbox("Colour by", COLOUR_OPTIONS, key="explorer_colour")
    k = int(c4.number_input("K", 1, min(50, len(ref) - 1), min(ref.k, len(ref) - 1), key="explorer_k"))
    query = c5.text_input("Find by file name", key="explorer_find", placeholder="e.g. person1_virus")
    map_name = f"{method}_{dims}d"

    found = ref.find(query) if query else np.empty(0, dtype=np.int64)
    pick = None
    if query and len(found) == 0:
        st.caption(f"No file name contains “{query}”.")
    elif len(found):
        pick = st.selectbox(f"{len(found)} match(es)" + (" (first 200)" if len(found) == 200 else ""), found.tolist(),
                            format_func=lambda r: str(ref.paths[r]), key="explorer_pick")

    fig = scatter_figure(ref, map_name, colour, highlight=[pick] if pick is not None else None,
                         upload=upload_marker(ref, map_name))
    event = st.plotly_chart(fig, key=MAP_KEY, on_select="rerun", selection_mode=("points", "box", "lasso"),
                            width="stretch", config={"scrollZoom": True, "displaylogo": False})
    info = ref.info
    if colour in COLOUR_NOTES:
        st.caption(COLOUR_NOTES[colour].format(k=info.get("knn_predicted", {}).get("k", ref.k)))
    st.caption(f"{len(ref):,} images of {info.get('dataset_name', 'the reference set')} · every point shown "
               f"(WebGL) · {METHOD_LABELS[method]} {dims}-D, seed {info.get('seed', 0)}"
               + (" · in 3-D Plotly reports no clicks or lassos: use 2-D or the file-name search to pick images."
                  if dims == 3 else " · click a point, or drag a lasso / box (toolbar) over a region."))

    rows = selected_rows(event, len(ref)) if dims == 2 else []
    if pick is not None:
        show_point(ref, int(pick), k)
    elif len(rows) == 1:
        show_point(ref, rows[0], k)
    elif rows:
        show_selection(ref, rows)


explorer(entry_id)
