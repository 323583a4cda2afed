"""Small widgets several pages share."""

from __future__ import annotations

import importlib
import re
from typing import Any

import streamlit as st

from cxr_core.registry import is_release, read_release_manifest, usable

from .loaders import entries, registry_path


def demo_banner() -> None:
    """Say which registry is loaded and what its models were trained on (every page calls this).

    The committed release: real films, with the attribution and "not a medical device"; models
    trained on synthetic phantoms: the demo banner; anything else: the registry's path.
    """
    root = registry_path()
    classifiers = usable(entries(), "classifier")
    if is_release(root):
        manifest = read_release_manifest(root)
        st.info(
            f"**Release models `{manifest.get('name', root.name)}`**: trained on real pediatric chest X-rays "
            "(Kermany 2018, CC BY 4.0); research use, not a medical device.",
            icon="🫁",
        )
    elif classifiers and all(s.info and s.info.synthetic for s in classifiers):
        st.info(
            "**Synthetic demo data.** These models were trained on generated phantoms, not on real patients. "
            f"Nothing here is a clinical finding. Registry: `{root}`.",
            icon="🧪",
        )
    else:
        st.caption(f"Registry: `{root}`")


def require_classifier() -> bool:
    """Show a clear message and return False when the registry has no usable classifier."""
    statuses = entries()
    if usable(statuses, "classifier"):
        return True
    broken = [s for s in statuses if not s.ok]
    st.warning(
        f"No usable classifier in the registry at `{registry_path()}`. "
        "Build the demo registry from the home page, or train one with `python -m train.classifier`."
    )
    for s in broken:
        st.error(f"Entry `{s.id}` is broken: {s.reason}")
    return False


# --- upload safety (issue 7) ---------------------------------------------------------------------

_MARKDOWN_ACTIVE = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$])")


def clean_filename(name: str | None, limit: int = 80) -> str:
    """An upload's name fit to show: control characters dropped, whitespace collapsed, length capped.

    Browsers send whatever name the file had; a name is shown to the user, never used as a path.
    """
    text = "".join(ch if ch.isprintable() else " " for ch in str(name or ""))
    text = " ".join(text.split()) or "upload"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_filename(name: str | None, limit: int = 80) -> str:
    """:func:`clean_filename` with Markdown (and Streamlit's ``$`` LaTeX) escaped, for st.error / captions."""
    return _MARKDOWN_ACTIVE.sub(r"\\\1", clean_filename(name, limit))


def predict_section(module: str, decoded: Any, prediction: Any) -> None:
    """Import ``pages.ui.<module>`` and call its ``render(decoded, prediction)``.

    A section that fails (on import or while rendering) becomes one st.error; the rest of the
    page keeps working. ``st.stop()`` / reruns are not exceptions and pass through.
    """
    try:
        importlib.import_module(f"pages.ui.{module}").render(decoded, prediction)
    except Exception as e:  # one broken section must not take the prediction or the other sections down
        title = module.removeprefix("predict_").replace("_", " ")
        detail = f"{type(e).__name__}: {e}"
        st.error(
            f"The **{title}** section could not be shown for this image ({detail[:300]}). "
            "The prediction above is not affected.",
            icon="⚠️",
        )

#: Help for the Grad-CAM layer choice (Predict section and Explain page).
LAYER_HELP = (
    "Automatic: the stride-16 stage for HiResCAM, the final feature map for Grad-CAM and Grad-CAM++ "
    "(they average the gradient over the map, which is exact only there). Stride 16: the stage before "
    "the final feature map, twice its resolution. Final: the map the classifier pools (most "
    "class-specific, coarse: 5x5 at 160 px, 7x7 at 224 px)."
)
METHOD_HELP = (
    "HiResCAM (default): gradient x activation at each position, summed over channels; the map shows "
    "the positions that raised the class score. Grad-CAM: each channel weighted by its gradient "
    "averaged over the map. Grad-CAM++: positive gradients only, higher-order weights. On synthetic "
    "phantoms with known lesions HiResCAM's peak lands in the lesion most often (docs/GRADCAM.md)."
)
