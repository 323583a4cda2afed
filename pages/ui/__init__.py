"""Streamlit glue shared by the pages: cached loaders and small widgets.

Lives beside the pages (not in ``cxr_core``) because it imports Streamlit. The
folder is not a page: Streamlit only turns ``pages/*.py`` into pages.
"""
