"""Predict-page section: the upload's nearest reference images, their vote, and its place on the map."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from pages.ui.embedding_views import scatter_figure, show_neighbors, show_votes
from pages.ui.loaders import reference_set

#: Map shown on the Predict page, first one the index has.
MAP_PREFERENCE = ("umap_2d", "tsne_2d")


def render(decoded: Any, prediction: Any) -> None:
    st.subheader("Similar reference images")
    try:
        _render(prediction)
    except Exception as e:  # a section must not take the page down with a traceback
        st.error(f"The nearest reference images could not be shown: {type(e).__name__}: {e}")


def _render(prediction: Any) -> None:
    emb, entry_id = prediction.embedding, prediction.embedding_entry
    if emb is None or entry_id is None:
        st.caption("No embedding was computed for this image.")
        return
    ref = reference_set(entry_id)
    if ref is None:
        st.info(f"The model `{entry_id}` has no embedding index yet, so there are no reference images to compare with. "
                f"Build it with `python -m train.index {entry_id} --data DIR`.")
        return
    if np.asarray(emb).shape[-1] != ref.knn.embeddings.shape[1]:
        st.error(f"The index of `{entry_id}` holds {ref.knn.embeddings.shape[1]}-dimensional embeddings, the model gave "
                 f"{np.asarray(emb).shape[-1]}: rebuild the index with `python -m train.index {entry_id} --data DIR`.")
        return
    k = int(st.columns([1, 4])[0].number_input("Neighbours (K)", 1, min(50, len(ref)), min(ref.k, len(ref)), key="predict_k"))
    nb, found, row = ref.knn.query_upload(np.asarray(emb), k)
    if row is not None:
        st.info(f"This image is in the reference set ({ref.splits[row]} split, labelled {ref.labels[row]}: "
                f"`{ref.paths[row]}`). It is left out of the neighbours and the vote below.")
    if nb.ids.shape[1] == 0:
        return
    show_neighbors(ref, nb)
    head = prediction.results.get(ref.task)
    show_votes(ref, nb, head_label=head.label if head is not None else None)
    st.caption(f"Cosine distance between penultimate-layer embeddings of `{entry_id}`; reference set: "
               f"{len(ref):,} images of {ref.info.get('dataset_name', 'the indexed dataset')} (all splits).")

    map_name = next((m for m in MAP_PREFERENCE if m in ref.maps), None)
    if map_name is None:
        return
    last = st.session_state.get("last_prediction") or {}
    pos = ref.place(np.asarray(emb), map_name, k, neighbors=found)  # self included: a reference lands on its point
    fig = scatter_figure(ref, map_name, "label", upload=(str(last.get("name", "upload")), pos), marker_size=3, height=360)
    st.markdown("**Position on the embedding map**")
    st.plotly_chart(fig, key="predict_map", width="stretch", config={"displaylogo": False})
    st.caption("Placed from its nearest reference images (distance-weighted mean of their map positions); "
               "the Embedding explorer shows the same point.")
