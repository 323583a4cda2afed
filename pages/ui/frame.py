"""The frame every page starts with: browser tab, title, optional intro, the registry banner.

One call at the top of each page (home included) instead of the same four lines in seven files,
so the tab title, icon and layout, and the banner that says which models are loaded (release,
synthetic demo or another registry), stay the same everywhere. Pages also run on their own
(``AppTest.from_file``, the browser tests), not only through ``app.py``'s navigation, which is why
the frame is a call in the page rather than something the navigation entry does once.
"""

from __future__ import annotations

import streamlit as st

from .widgets import demo_banner, require_classifier

APP_NAME = "CXR Lens"
APP_ICON = "🫁"


def page_frame(
    title: str, *, caption: str | None = None, intro: str | None = None, needs_classifier: bool = False
) -> None:
    """Set up the page and draw its title, then ``caption`` (small) or ``intro`` (Markdown), then the banner.

    The tab reads "<title> · CXR Lens" (just "CXR Lens" on the home page). With
    ``needs_classifier`` the page stops after the banner, with a message saying how to get one,
    when the registry has no usable classifier.
    """
    st.set_page_config(
        page_title=title if title == APP_NAME else f"{title} · {APP_NAME}", page_icon=APP_ICON, layout="wide"
    )
    st.title(title)
    if caption is not None:
        st.caption(caption)
    if intro is not None:
        st.markdown(intro)
    demo_banner()
    if needs_classifier and not require_classifier():
        st.stop()
