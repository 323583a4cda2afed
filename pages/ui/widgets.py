"""Small widgets several pages share."""

from __future__ import annotations

import streamlit as st

from .loaders import entries, is_synthetic, registry_path


def demo_banner() -> None:
    """Say plainly when the models were trained on synthetic phantoms."""
    usable = [s for s in entries() if s.ok and s.card and s.card.get("kind") == "classifier"]
    if usable and all(is_synthetic(s.card) for s in usable):
        st.info(
            "**Synthetic demo data.** These models were trained on generated phantoms, not on real patients. "
            "Nothing here is a clinical finding. See the home page for training on the real dataset.",
            icon="🧪",
        )


def require_classifier() -> bool:
    """Show a clear message and return False when the registry has no usable classifier."""
    statuses = entries()
    if any(s.ok and s.card and s.card.get("kind") == "classifier" for s in statuses):
        return True
    broken = [s for s in statuses if not s.ok]
    st.warning(
        f"No usable classifier in the registry at `{registry_path()}`. "
        "Build the demo registry from the home page, or train one with `python -m train.classifier`."
    )
    for s in broken:
        st.error(f"Entry `{s.id}` is broken: {s.reason}")
    return False
