"""DICOM display for a study: window/level (the file's VOI LUT or window by default) and the technical header.

Only ``cxr_core.dicom_view.TechnicalHeader`` fields are shown: no patient, accession, institution
or physician field is ever read, so none can reach the screen.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from cxr_core.dicom_view import DicomStudy, read_dicom, window
from cxr_core.imaging import DecodedImage, ImageDecodeError

_MODES = ("From the file", "Automatic", "Custom")


def dicom_study(raw: bytes) -> DicomStudy:
    """The parsed study, kept in this session for the last DICOM shown."""
    import hashlib

    cache = st.session_state.setdefault("dicom_views", {})
    key = hashlib.sha1(raw).hexdigest()
    if key not in cache:
        cache.clear()  # one DICOM study's values at a time in this session
        cache[key] = read_dicom(raw)
    return cache[key]


def render_dicom(shown: str, raw: bytes, decoded: DecodedImage, key: str) -> np.ndarray:
    """Show the DICOM image with its window controls and header panel; return the array displayed."""
    h, w = decoded.original_shape
    try:
        study = dicom_study(raw)
    except ImageDecodeError as e:
        st.image(decoded.array, caption=f"{shown} · DICOM · {w}×{h}", width="stretch")
        st.caption(f"Window/level unavailable: {e.message}")
        return decoded.array
    stored = study.header.stored_display
    c1, c2 = st.columns([1, 1])
    mode = c1.selectbox(
        "Window / level", _MODES, key=f"{key}_dicom_mode",
        help="From the file: the VOI LUT or window the DICOM stores (an automatic window when it stores none). "
             "The models always see the file's own display; this control changes the view only.",
    )
    lo, hi = study.value_range
    if mode == "From the file":
        shown_arr = decoded.array
        what = f"the file's {stored}" if stored else "automatic window (the file stores none)"
    else:
        c0, w0 = study.auto_window if mode == "Automatic" or study.file_window is None else study.file_window
        if mode == "Custom":
            span = max(hi - lo, 1.0)
            step = float(10 ** np.floor(np.log10(span / 500))) if span > 0 else 1.0
            c0 = c2.slider("Window centre", float(lo), float(hi), float(min(max(c0, lo), hi)), step,
                           key=f"{key}_dicom_center")
            w0 = c2.slider("Window width", float(step), float(span * 2), float(min(max(w0, step), span * 2)), step,
                           key=f"{key}_dicom_width")
        shown_arr = window(study, c0, w0)
        what = f"window C {c0:.6g} / W {w0:.6g}"
    inv = " · MONOCHROME1 inverted" if study.monochrome1 else ""
    st.image(shown_arr, caption=f"{shown} · DICOM · {w}×{h} · {what}{inv}", width="stretch")
    with st.expander("Technical header (DICOM)", expanded=False):
        st.table({"Attribute": [k for k, _ in study.header.rows_for_display()],
                  "Value": [v for _, v in study.header.rows_for_display()]})
        st.caption("Technical attributes only: patient, accession, institution and physician fields are never read.")
    return shown_arr
