"""Predict: upload a study → label and probabilities (binary and 3-class)."""

from __future__ import annotations

import streamlit as st

from cxr_core.config import DecodeLimits
from cxr_core.imaging import ImageDecodeError, decode_image
from pages.ui.loaders import predictor
from pages.ui.widgets import clean_filename, demo_banner, md_filename, predict_section, require_classifier

st.set_page_config(page_title="Predict · CXR Lens", page_icon="🫁", layout="wide")
st.title("Predict")
demo_banner()
if not require_classifier():
    st.stop()

# No `type=` filter: DICOM exports often have no extension, and the decoder tells the format from
# the content anyway, with a specific message for anything it cannot use.
upload = st.file_uploader(
    "Chest X-ray: PNG, JPEG, BMP, TIFF or DICOM (a file without an extension is fine)", key="upload"
)
tta = st.toggle("Test-time augmentation (average of 4 views)", value=False, key="tta")
if upload is None:
    st.caption("Uploads stay in memory for this session only; nothing is written to disk or logged.")
    st.stop()

shown_name = md_filename(upload.name)
try:
    decoded = decode_image(upload.getvalue(), filename=upload.name, limits=DecodeLimits())
except ImageDecodeError as e:
    st.error(f"**{shown_name}** cannot be used: {e.message}")
    st.stop()
except Exception as e:  # decode_image promises ImageDecodeError only; never show a traceback regardless
    st.error(f"**{shown_name}** cannot be used: it could not be decoded ({type(e).__name__}).")
    st.stop()

for notice in decoded.notices:
    st.info(notice)

try:
    pred = predictor().predict(decoded.array, tta=4 if tta else 1)
except Exception as e:  # a model failure must read as a message, not a traceback
    st.error(f"The models could not classify **{shown_name}**: {type(e).__name__}: {str(e)[:300]}")
    st.stop()
# Session-scoped only: the explorer marks this upload on its map. No pixels, no file bytes.
st.session_state["last_prediction"] = {
    "name": clean_filename(upload.name), "embedding": pred.embedding, "entry": pred.embedding_entry,
}

col_img, col_res = st.columns([1, 1])
with col_img:
    h, w = decoded.original_shape
    st.image(decoded.array, caption=f"{shown_name} · {decoded.format} · {w}×{h}", width="stretch")
with col_res:
    for task, title in (("binary", "Normal vs pneumonia"), ("multiclass", "Normal / bacterial / viral")):
        res = pred.results.get(task)
        if res is None:
            continue
        st.subheader(title)
        st.metric("Prediction", res.label, f"{res.confidence:.1%} confidence", delta_color="off")
        for cls, p in res.as_dict.items():
            st.progress(p, text=f"{cls}: {p:.1%}")
        if task == "binary":
            st.caption(f"Threshold on P(pneumonia): {res.threshold:.2f} · model `{res.entry_id}`")
        else:
            st.caption(f"model `{res.entry_id}`")

# Sections below: one line each, `predict_section("predict_<name>", decoded, pred)` renders
# pages/ui/predict_<name>.py; a section that fails shows an error and the others still render.
predict_section("predict_anomaly", decoded, pred)
predict_section("predict_neighbors", decoded, pred)
predict_section("predict_gradcam", decoded, pred)
