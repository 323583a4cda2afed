"""Where the network's input sits on the original image, and maps moved between the two.

The network sees a centre crop (``InputSpec.crop_fraction``) squashed to a square, so a CAM is
resized back onto that crop box of the original and is 0 outside it (the model never saw
those pixels).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..config import InputSpec


def crop_box(shape: tuple[int, int], spec: InputSpec) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the region of an (H, W) image that ``prepare`` feeds the model."""
    h, w = shape
    if spec.crop_fraction >= 1.0:
        return 0, 0, h, w
    ch, cw = max(1, round(h * spec.crop_fraction)), max(1, round(w * spec.crop_fraction))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def resize_float(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map (antialiased when shrinking, like ``prepare``)."""
    if a.shape == (height, width):
        return a.astype(np.float32, copy=True)
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def to_original(cam_input: np.ndarray, shape: tuple[int, int], spec: InputSpec) -> np.ndarray:
    """Map a CAM on the network input (S, S) back onto the original (H, W) image.

    Inside the crop box the map is resized from the square input; outside it, 0.
    """
    top, left, ch, cw = crop_box(shape, spec)
    out = np.zeros(shape, dtype=np.float32)
    out[top : top + ch, left : left + cw] = resize_float(cam_input, ch, cw)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
