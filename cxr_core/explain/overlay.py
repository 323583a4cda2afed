"""Showing a CAM: colour-mapped overlays on the grayscale image, and the exported PNG.

Maps are float32 in [0, 1] on the original image (``Explanation.cam``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .geometry import resize_float

#: Matplotlib colormaps offered for overlays (any matplotlib name works in :func:`overlay`).
COLORMAPS: tuple[str, ...] = ("jet", "turbo", "inferno", "viridis", "magma")


def _lut(colormap: str) -> np.ndarray:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError as exc:
        raise ValueError(f"unknown colormap {colormap!r}; e.g. {', '.join(COLORMAPS)}") from exc
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped CAM over a grayscale image: RGB uint8 (H, W, 3).

    ``alpha`` is the heatmap's weight (0 = image only, 1 = heatmap only).
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    if cam.shape != gray.shape:
        raise ValueError(f"CAM shape {cam.shape} does not match the image's {gray.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    # A 256-entry lookup table instead of cmap(cam): the latter allocates float64 RGBA per pixel.
    idx = (np.clip(np.nan_to_num(cam, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    heat = _lut(colormap)[idx].astype(np.float32)
    base = gray.astype(np.float32)[..., None]
    return np.clip(base * (1.0 - alpha) + heat * alpha + 0.5, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap so a long title stays on a narrow image."""
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    out: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if line and measure.textlength(trial, font=font) > width:
                out.append(line)
                line = word
            else:
                line = trial
        if line:
            out.append(line)
    return out or [""]


def cam_png(
    gray: np.ndarray,
    cam: np.ndarray,
    title_text: str,
    *,
    alpha: float = 0.4,
    colormap: str = "jet",
    max_side: int | None = None,
) -> bytes:
    """PNG bytes: the overlay between a banner that prints ``title_text`` (the prediction) and a colour bar.

    ``max_side`` shrinks a large image (and its map) first; None keeps the original size.
    """
    if max_side is not None and max(gray.shape) > max_side:
        gray, cam = downscale(gray, cam, max_side)
    rgb = overlay(gray, cam, alpha, colormap)
    h, w = gray.shape
    font_px = max(11, min(40, w // 32))
    font, small = _font(font_px), _font(max(9, font_px * 2 // 3))
    pad = font_px // 2
    lines = _wrap(title_text, font, w - 2 * pad)
    banner_h = pad * 2 + len(lines) * (font_px + pad // 2)
    # Footer: a colour bar, so the exported file says which end of the map is "high".
    bar_w, bar_h = max(40, min(w - 2 * pad, w // 3)), max(6, font_px // 2)
    footer_h = pad * 2 + bar_h + font_px
    canvas = Image.new("RGB", (w, banner_h + h + footer_h), (20, 20, 20))
    canvas.paste(Image.fromarray(rgb), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (font_px + pad // 2)), line, fill=(255, 255, 255), font=font)
    bar = _lut(colormap)[np.linspace(0, 255, bar_w).astype(np.uint8)][None].repeat(bar_h, axis=0)
    y0 = banner_h + h + pad
    canvas.paste(Image.fromarray(bar), (pad, y0))
    draw.text((pad, y0 + bar_h + 2), "low", fill=(220, 220, 220), font=small)
    draw.text((pad + bar_w, y0 + bar_h + 2), "high", fill=(220, 220, 220), font=small, anchor="ra")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def downscale(gray: np.ndarray, cam: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink an image and its map together so the longer side is at most ``max_side``."""
    h, w = gray.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return gray, cam
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    g = np.asarray(Image.fromarray(gray).resize((nw, nh), Image.Resampling.BILINEAR))
    return g, np.clip(resize_float(cam, nh, nw), 0.0, 1.0)
