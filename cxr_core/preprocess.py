"""The one preprocessing path shared by training, evaluation and the app.

Two stages, so that training can cache the expensive one:

1. ``prepare(gray, spec)`` (CPU, NumPy): optional film options (letters, border, histogram
   matching: ``imaging.film_options``), optional CLAHE, centre crop, resize to a
   square ``spec.size`` uint8 image. Training decodes and prepares each image once
   into a uint8 cache; the app prepares an upload the same way.
2. ``to_input(batch_u8, spec)`` (any device, torch): scale to [0, 1], replicate to
   ``spec.channels`` and normalise with the card's mean/std.

Augmentation (training) and test-time augmentation work on the [0, 1] tensors
between the two halves of stage 2, on whatever device the batch lives on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import AugmentConfig, InputSpec


def prepare(gray: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Grayscale uint8 (H, W) → uint8 (spec.size, spec.size).

    The image is squashed to a square rather than padded: the reference dataset
    (kermany-224) was distributed squashed, so the app must match what models saw.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grayscale image, got {gray.dtype} {gray.shape}")
    img = gray
    if spec.mask_letters or spec.mask_border > 0 or spec.hist_ref:
        from .imaging import film_options

        img = film_options(img, letters=spec.mask_letters, border=spec.mask_border, hist_ref=spec.hist_ref)
    if spec.clahe:
        from skimage.exposure import equalize_adapthist

        img = (equalize_adapthist(img, clip_limit=0.01) * 255.0 + 0.5).astype(np.uint8)
    if spec.crop_fraction < 1.0:
        h, w = img.shape
        ch, cw = max(1, round(h * spec.crop_fraction)), max(1, round(w * spec.crop_fraction))
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img[top : top + ch, left : left + cw]
    if img.shape != (spec.size, spec.size):
        # BILINEAR with Pillow's reducing filter support is antialiased on downscale.
        img = np.asarray(Image.fromarray(img).resize((spec.size, spec.size), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(img)


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S) or (B, 1, S, S) → float32 (B, 1, S, S) in [0, 1]."""
    if batch_u8.ndim == 3:
        batch_u8 = batch_u8.unsqueeze(1)
    return batch_u8.float().div_(255.0)


def normalize(x01: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """[0, 1] (B, 1, S, S) → normalised (B, spec.channels, S, S)."""
    x = x01.expand(-1, spec.channels, -1, -1)
    mean = torch.tensor(spec.mean[: spec.channels], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std[: spec.channels], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def to_input(batch_u8: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Prepared uint8 batch → the model's input tensor."""
    return normalize(to_float(batch_u8), spec)


def image_to_input(gray: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """One decoded grayscale image → a (1, C, S, S) model input."""
    x = prepare(gray, spec)
    if not x.flags.writeable:  # torch warns on read-only memory (a cached or memory-mapped image)
        x = x.copy()
    return to_input(torch.from_numpy(x)[None], spec)


def _affine(x01: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rotate/shift/zoom a batch with per-sample parameters (angles in radians)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    ).to(x01.dtype)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    # Border padding: zeros would paint black wedges that a model could key on.
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x01: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random small rotation, shift, zoom, contrast and brightness, on the batch's device."""
    if not cfg.enabled:
        return x01
    b = x01.shape[0]
    dev = x01.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, device=dev, generator=generator) * (hi - lo) + lo

    angle = u(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
    x = _affine(x01, angle, u(-cfg.shift, cfg.shift), u(-cfg.shift, cfg.shift), u(1 - cfg.zoom, 1 + cfg.zoom))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = u(1 - cfg.contrast, 1 + cfg.contrast).view(-1, 1, 1, 1)
    brightness = u(-cfg.brightness, cfg.brightness).view(-1, 1, 1, 1)
    return ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


#: Deterministic test-time views: (angle degrees, shift x, shift y, zoom). The first
#: is the identity so that TTA with n=1 equals plain inference. No horizontal flips:
#: the heart's side is anatomy, not noise.
TTA_VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 1.0),
    (0.0, 0.0, 0.0, 1.08),
    (4.0, 0.0, 0.0, 1.0),
    (-4.0, 0.0, 0.0, 1.0),
    (0.0, 0.04, 0.0, 1.0),
    (0.0, -0.04, 0.0, 1.0),
    (0.0, 0.0, 0.04, 1.0),
    (0.0, 0.0, -0.04, 1.0),
)


def tta_views(x01: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` deterministic views of a [0, 1] batch (``n`` ≤ len(TTA_VIEWS))."""
    if not 1 <= n <= len(TTA_VIEWS):
        raise ValueError(f"TTA views must be between 1 and {len(TTA_VIEWS)}, got {n}")
    b, dev = x01.shape[0], x01.device
    views = [x01]
    for deg, sx, sy, zoom in TTA_VIEWS[1:n]:

        def full(v: float) -> torch.Tensor:
            return torch.full((b,), v, device=dev)

        views.append(_affine(x01, full(deg * math.pi / 180.0), full(sx), full(sy), full(zoom)))
    return views
