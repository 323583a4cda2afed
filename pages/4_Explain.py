"""Explain: a class-activation-map gallery over the test (or validation) images of a classifier's own dataset."""

from __future__ import annotations

import streamlit as st

from cxr_core.config import ordered_tasks, task_title
from cxr_core.data import DatasetError
from cxr_core.explain.gallery import select_items
from cxr_core.explain.methods import METHOD_LABELS, METHODS
from cxr_core.explain.overlay import COLORMAPS, overlay
from cxr_core.models import gradcam_layer_choices
from cxr_core.registry import select, usable
from pages.ui.frame import page_frame
from pages.ui.loaders import entries, gallery_cam, split_predictions
from pages.ui.widgets import LAYER_HELP, METHOD_HELP

PER_PAGE = 12
COLUMNS = 4

page_frame(
    "Explain",
    caption="Where each classifier looks: class activation maps (HiResCAM by default, Grad-CAM, Grad-CAM++) on "
    "held-out images of the dataset it was trained on.",
    needs_classifier=True,
)

statuses = entries()
classifiers = usable(statuses, "classifier")
by_id = {s.id: s.info for s in classifiers}
# The same default as the Predict page: the classifier of the first task in display order.
tasks = ordered_tasks(str(c.task) for c in by_id.values())
default = select(statuses, "classifier", tasks[0]) if tasks else None
c_model, c_split = st.columns([3, 1])
entry_id = c_model.selectbox(
    "Classifier", list(by_id), index=list(by_id).index(default.id) if default else 0,
    format_func=lambda i: f"{task_title(str(by_id[i].task), list(by_id[i].classes))} · {by_id[i].architecture} · {i}",
    key="explain_entry",
)
card = by_id[entry_id]
classes = list(card.classes)
split = c_split.radio("Split", ["test", "val"], horizontal=True, key="explain_split")

try:
    items = split_predictions(entry_id, split)
except (DatasetError, FileNotFoundError, OSError) as e:
    root = card.dataset.root or "?"
    st.warning(
        f"The dataset this classifier was trained on is not available here, so there is nothing to show: "
        f"`{root}` ({e})."
    )
    st.stop()
except Exception as e:  # never a traceback on the page
    st.error(f"The {split} split could not be classified: {type(e).__name__}: {e}")
    st.stop()
if not items:
    st.info(f"The `{split}` split of this dataset has no images.")
    st.stop()

n_correct = sum(it.correct for it in items)
st.caption(f"{len(items)} {split} images · accuracy {n_correct / len(items):.1%} (threshold from the card for binary)")

f1, f2, f3, f4 = st.columns(4)
correctness = f1.radio("Show", ["all", "correct", "incorrect"], horizontal=True, key="explain_correct")
any_cls = "any"
true_cls = f2.selectbox("True class", [any_cls, *classes], key="explain_true")
pred_cls = f3.selectbox("Predicted class", [any_cls, *classes], key="explain_pred")
order = f4.selectbox(
    "Sort", ["confidence_desc", "confidence_asc", "path"], key="explain_order",
    format_func={"confidence_desc": "Most confident first", "confidence_asc": "Least confident first",
                 "path": "File name"}.get,
)
v1, v2, v5, v3, v4 = st.columns([1, 1, 1.3, 1, 1.2])
method = v1.selectbox("Method", list(METHODS), format_func=METHOD_LABELS.get, key="explain_method", help=METHOD_HELP)
target_choice = v2.selectbox("Explain class", ["predicted", *classes], key="explain_target",
                             help="Predicted: each image's own predicted class.")
layers = gradcam_layer_choices(str(card.architecture))
layer_label = v5.selectbox("Layer", list(layers), key="explain_layer", help=LAYER_HELP)
cmap = v3.selectbox("Colormap", COLORMAPS, key="explain_cmap")
alpha = v4.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="explain_alpha")

shown = select_items(
    items, correctness=correctness,
    true_class=None if true_cls == any_cls else classes.index(true_cls),
    pred_class=None if pred_cls == any_cls else classes.index(pred_cls),
    order=order,
)
if not shown:
    st.info("No image matches these filters.")
    st.stop()

n_pages = (len(shown) + PER_PAGE - 1) // PER_PAGE
page = st.pagination(n_pages, key="explain_page") if n_pages > 1 else 1
page = min(max(int(page), 1), n_pages)
visible = shown[(page - 1) * PER_PAGE : page * PER_PAGE]
st.caption(f"{len(shown)} matching images · page {page} of {n_pages}")

# CAMs are computed for the visible page only, once per (model, image, method, class).
progress = st.progress(0.0, text=f"Computing {METHOD_LABELS[method]} for this page…")
cols = st.columns(COLUMNS)
for i, it in enumerate(visible):
    target = None if target_choice == "predicted" else target_choice
    with cols[i % COLUMNS]:
        try:
            gray, cam, target_name, empty = gallery_cam(entry_id, it.path, method, target, layer=layers[layer_label])
        except Exception as e:
            st.error(f"`{it.path}`: {type(e).__name__}: {e}")
            continue
        mark = "✅" if it.correct else "❌"
        st.image(
            overlay(gray, cam, alpha, cmap), width="stretch",
            caption=f"{mark} true {classes[it.truth]} · pred {classes[it.pred]} ({it.confidence:.0%})"
            + (f" · map for {target_name}" + (" (empty)" if empty else "") if target else ""),
        )
        st.caption(f"`{it.path}`")
    progress.progress((i + 1) / len(visible), text=f"Computing {METHOD_LABELS[method]} for this page… {i + 1}/{len(visible)}")
progress.empty()
