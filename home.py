"""CXR Lens home page (run through app.py): what this is, which registry and models are loaded, how to get real ones."""

from __future__ import annotations

import streamlit as st

from cxr_core.demo import build_demo
from cxr_core.registry import is_release, usable
from pages.ui.frame import page_frame
from pages.ui.loaders import entries, registry_path

page_frame(
    "CXR Lens",
    intro="An open-source dashboard for **pediatric chest X-rays**: upload a study and see the predicted class "
    "(normal / bacterial / viral pneumonia) with calibrated probabilities, the Grad-CAM evidence, the most "
    "similar reference cases and an anomaly score. Researchers explore the embedding space and tune the "
    "anomaly threshold.\n\n"
    "_Research software, not a medical device: every output needs a clinician's judgement._",
)

root = registry_path()
statuses = entries()
st.subheader("Registry")
st.caption(f"`{root}` — set `CXR_REGISTRY` to use another folder"
           + (" (this is the committed release registry: read-only; thresholds you save go to your settings file)."
              if is_release(root) else "."))

if not usable(statuses, "classifier"):
    st.warning("The registry has no usable classifier yet.")
    if st.button("Build the demo registry (synthetic data, a few minutes on CPU)", type="primary"):
        with st.status("Building the demo registry…", expanded=True) as status:
            bar = st.progress(0.0, text="starting")

            def progress(stage: str, done: int, total: int) -> None:
                bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done}/{total}")

            try:
                build_demo(root, progress=progress, log=st.write)
            except Exception as e:  # shown, not raised: the page must keep working
                status.update(label="Building the demo registry failed", state="error")
                st.error(f"{type(e).__name__}: {e}")
            else:
                status.update(label="Demo registry ready", state="complete")
                st.cache_resource.clear()
                st.rerun()

rows = []
for s in statuses:
    card = s.info
    test = card.split_metrics("test") if card else {}
    rows.append(
        {
            "entry": s.id,
            "status": "ok" if s.ok else f"broken: {s.reason}",
            "kind": card.kind if card else "?",
            "task": (card.task or "") if card else "",
            "architecture": (card.architecture or "") if card else "",
            "data": ("synthetic demo" if card.synthetic else card.dataset.name) if card else "",
            "test accuracy": test.get("accuracy"),
            "test AUROC": test.get("auroc") or test.get("auroc_ovr"),
            "created": (card.created_at or "") if card else "",
        }
    )
if rows:
    st.dataframe(rows, hide_index=True, width="stretch")
for s in statuses:
    if not s.ok:
        st.error(f"Entry `{s.id}` is broken and is not used: {s.reason}")

st.subheader("Pages")
st.markdown(
    "- **Predict** — upload a PNG, JPEG, BMP, TIFF or DICOM study: prediction, Grad-CAM, similar cases, "
    "anomaly score and a does-this-look-like-a-chest-X-ray check.\n"
    "- **Embedding explorer** — t-SNE / UMAP maps of the reference set; click or lasso to see images and neighbours.\n"
    "- **Anomaly threshold** — tune the healthy-only detector's threshold on live histograms, confusion matrix and ROC.\n"
    "- **Explain** — Grad-CAM gallery over test images, filtered by correctness and class.\n"
    "- **Models & data** — model cards, metrics, confusion matrices, ROC and training curves, dataset statistics.\n"
    "- **Worklist** — many studies at once (files or a zip): a sortable table, CSV export, a report per study.\n"
)

st.subheader("Train on the real dataset")
st.markdown(
    "Download the Kaggle *chest-xray-pneumonia* dataset (Kermany et al., Cell 2018, CC BY 4.0) and keep its "
    "layout `ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`. Then:"
)
st.code(
    "python -m train.classifier --data ROOT --task binary --out registry\n"
    "python -m train.classifier --data ROOT --task multiclass --out registry",
    language="bash",
)
st.caption("A GPU is used when there is one; `--device cpu --max-per-split 400 --epochs 5` makes a quick CPU run.")
