"""Predict: upload a study → label and probabilities (binary and 3-class)."""

from __future__ import annotations

import streamlit as st

from cxr_core.config import DecodeLimits
from cxr_core.imaging import SUPPORTED_EXTENSIONS, ImageDecodeError, decode_image
from pages.ui.loaders import predictor
from pages.ui.widgets import demo_banner, require_classifier

st.set_page_config(page_title="Predict · CXR Lens", page_icon="🫁", layout="wide")
st.title("Predict")
demo_banner()
if not require_classifier():
    st.stop()

upload = st.file_uploader(
    "Chest X-ray (PNG, JPEG, BMP, TIFF or DICOM)", type=list(SUPPORTED_EXTENSIONS), key="upload"
)
tta = st.toggle("Test-time augmentation (average of 4 views)", value=False, key="tta")
if upload is None:
    st.caption("Uploads stay in memory for this session only; nothing is written to disk or logged.")
    st.stop()

try:
    decoded = decode_image(upload.getvalue(), filename=upload.name, limits=DecodeLimits())
except ImageDecodeError as e:
    st.error(f"**{upload.name}** cannot be used: {e.message}")
    st.stop()

for notice in decoded.notices:
    st.info(notice)

pred = predictor().predict(decoded.array, tta=4 if tta else 1)
st.session_state["last_prediction"] = {"name": upload.name, "embedding": pred.embedding, "entry": pred.embedding_entry}

col_img, col_res = st.columns([1, 1])
with col_img:
    h, w = decoded.original_shape
    st.image(decoded.array, caption=f"{upload.name} · {decoded.format} · {w}×{h}", width="stretch")
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
