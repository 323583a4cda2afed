"""The pointing game (Zhang et al., 2018) on synthetic phantoms whose lesion masks are known."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..data import read_dataset
from ..imaging import read_gray
from ..synthetic import load_mask
from .explainer import Explainer, Explanation
from .methods import DEFAULT_METHOD


@dataclass
class PointingResult:
    """How often the CAM peak falls inside the lesion mask, with the baselines beside it."""

    n: int  #: images scored
    hits: int
    rate: float
    #: Mean (dilated) mask area fraction: the hit rate of a uniformly random point.
    chance: float
    #: Hit rate of always pointing at the image centre.
    center_rate: float
    tolerance_px: int
    method: str
    n_skipped_incorrect: int
    n_empty: int
    per_image: list[dict[str, Any]] = field(default_factory=list)
    #: ``{subtype: {"n", "rate", "chance"}}``
    by_subtype: dict[str, dict[str, float]] = field(default_factory=dict)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


def pointing_game(
    explainer: Explainer,
    root: str,
    split: str = "test",
    *,
    method: str = DEFAULT_METHOD,
    tolerance_px: int = 0,
    only_correct: bool = True,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> PointingResult:
    """Pointing game on a synthetic set written by ``synthetic.write_dataset`` (lesion masks known).

    For every PNEUMONIA image of ``split`` (optionally only those the model classifies
    correctly), the CAM of the image's true class (PNEUMONIA for the binary head, its subtype
    for the 3-class head) is a hit when its peak lies inside the lesion mask, dilated by
    ``tolerance_px`` pixels (0 = the mask as drawn).
    """
    dataset = read_dataset(root)
    samples = [s for s in dataset.split(split) if s.label == "PNEUMONIA"]
    if not samples:
        raise ValueError(f"no PNEUMONIA images in the {split!r} split of {root}")
    res = PointingResult(0, 0, 0.0, 0.0, 0.0, tolerance_px, method, 0, 0)
    center_hits = 0
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        grays = [read_gray(dataset.abspath(s)) for s in batch]
        truth = [s.target(explainer.task) for s in batch]
        exps = explainer.explain_batch(grays, method, truth)
        for s, gray, y, e in zip(batch, grays, truth, exps, strict=True):
            if only_correct and _predicted(explainer, e.probs) != y:
                res.n_skipped_incorrect += 1
                continue
            mask = _lesion_mask(root, s.path, gray.shape, tolerance_px)
            row = _score(s.path, s.subtype, e, mask)
            res.n += 1
            res.hits += row["hit"]
            res.n_empty += e.empty
            center_hits += bool(mask[gray.shape[0] // 2, gray.shape[1] // 2])
            res.per_image.append(row)
        if progress:
            progress(min(start + batch_size, len(samples)), len(samples))
    _summarise(res, center_hits)
    return res


def _predicted(explainer: Explainer, probs: np.ndarray) -> int:
    return int(probs[1] >= explainer.threshold) if explainer.task == "binary" else int(np.argmax(probs))


def _lesion_mask(root: str, path: str, shape: tuple[int, ...], tolerance_px: int) -> np.ndarray:
    """The image's lesion mask, dilated by ``tolerance_px`` (a near miss within it counts as a hit)."""
    mask = load_mask(root, path)
    if mask.shape != shape:
        raise ValueError(f"mask {mask.shape} and image {shape} differ for {path}")
    if tolerance_px > 0:
        mask = ndimage.binary_dilation(mask, structure=_disk(tolerance_px))
    return mask


def _score(path: str, subtype: str, e: Explanation, mask: np.ndarray) -> dict[str, Any]:
    r, c = e.peak
    # An empty map has no peak: argmax falls on pixel (0, 0), which must not count as pointing.
    hit = bool(mask[r, c]) and not e.empty
    return {"path": path, "subtype": subtype, "hit": hit, "peak": (r, c), "mask_fraction": float(mask.mean())}


def _summarise(res: PointingResult, center_hits: int) -> None:
    """Fill in the rates, the chance and centre baselines, and the per-subtype breakdown."""
    for sub in sorted({p["subtype"] for p in res.per_image}):
        rows = [p for p in res.per_image if p["subtype"] == sub]
        res.by_subtype[sub] = {
            "n": len(rows),
            "rate": sum(p["hit"] for p in rows) / len(rows),
            "chance": sum(p["mask_fraction"] for p in rows) / len(rows),
        }
    if res.n:
        res.rate = res.hits / res.n
        res.chance = sum(p["mask_fraction"] for p in res.per_image) / res.n
        res.center_rate = center_hits / res.n
