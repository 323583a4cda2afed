"""CXR Lens entry point, ``streamlit run app.py``: the page navigation.

Declared here (not discovered from ``pages/``) so that the home page is listed as "Home" rather
than under this script's file name; the URL of every other page is the one Streamlit derived from
its file name before (``/Predict``, ``/Anomaly_threshold``...).
"""

from __future__ import annotations

import streamlit as st

from pages.ui.navigation import REPO, page_files, url_path

st.navigation(
    [st.Page("home.py", title="Home", icon="🫁", default=True)]
    + [st.Page(str(p.relative_to(REPO)), title=url_path(p).replace("_", " "), url_path=url_path(p))
       for p in page_files()]
).run()
