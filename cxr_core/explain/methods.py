"""The CAM methods by the name the app and the CLI use.

Each is a pytorch-grad-cam class over its ``BaseCAM`` (hooks and the forward/backward loop);
a method decides only how activations and gradients combine: ``HiResCAM`` (gradient x
activation summed over channels, the default), ``GradCAM`` and ``GradCAMPlusPlus`` (channel
weights from the gradient averaged over the map).
"""

from __future__ import annotations

from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.base_cam import BaseCAM

#: CAM methods by the name the app and the CLI use; the first is the default.
METHODS: dict[str, type[BaseCAM]] = {"hirescam": HiResCAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
METHOD_LABELS: dict[str, str] = {"hirescam": "HiResCAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
#: The method the pages and the CLI use unless told otherwise (why: ``models.gradcam_target_layer``).
DEFAULT_METHOD = "hirescam"


def check_method(method: str) -> None:
    """Raise ``ValueError`` for a method name this module does not know."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(METHODS)}")
