"""Predict: upload a study → the chest X-ray check, then label and probabilities (binary and 3-class)."""

from __future__ import annotations

import streamlit as st

from cxr_core.config import DecodeLimits
from cxr_core.imaging import ImageDecodeError, decode_image
from pages.ui.frame import page_frame
from pages.ui.predict_study import render_study
from pages.ui.widgets import md_filename

page_frame("Predict", needs_classifier=True)

# No `type=` filter: DICOM exports often have no extension, and the decoder tells the format from
# the content anyway, with a specific message for anything it cannot use.
upload = st.file_uploader(
    "Chest X-ray: PNG, JPEG, BMP, TIFF or DICOM (a file without an extension is fine)", key="upload"
)
tta = st.toggle("Test-time augmentation (average of 4 views)", value=False, key="tta")
if upload is None:
    st.caption("Uploads stay in memory for this session only; nothing is written to disk or logged. "
               "Many studies at once: the Worklist page.")
    st.stop()

shown_name = md_filename(upload.name)
raw = upload.getvalue()
try:
    decoded = decode_image(raw, filename=upload.name, limits=DecodeLimits())
except ImageDecodeError as e:
    st.error(f"**{shown_name}** cannot be used: {e.message}")
    st.stop()
except Exception as e:  # decode_image promises ImageDecodeError only; never show a traceback regardless
    st.error(f"**{shown_name}** cannot be used: it could not be decoded ({type(e).__name__}).")
    st.stop()

render_study(upload.name, raw, decoded, tta=tta, key="predict")
