"""How much of a class activation map falls on the lungs (issue 14's shortcut check).

A generous, documented lung box (rows 12-85 %, columns 10-90 % of the film) stands in for a
lung segmentation: the share of each map's mass inside it and whether its peak is inside,
measured with the app's default map (HiResCAM) on evenly spaced films.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from .config import InputSpec
from .explain import DEFAULT_METHOD, Explainer

#: The lung box of issue 14, as fractions of the (square) input: rows 12-85 %, columns 10-90 %.
LUNG_BOX = (0.12, 0.85, 0.10, 0.90)


def lung_focus(cams: np.ndarray, box: tuple[float, float, float, float] = LUNG_BOX) -> tuple[float, float]:
    """(share of maps whose peak lies inside ``box``, mean share of map mass inside it) of maps (N, H, W) >= 0."""
    cams = np.asarray(cams, dtype=np.float64)
    n, h, w = cams.shape
    r0, r1, c0, c1 = box
    rows, cols = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    inside = ((rows >= r0) & (rows <= r1))[:, None] & ((cols >= c0) & (cols <= c1))[None, :]
    flat = cams.reshape(n, -1)
    peak_in = inside.reshape(-1)[flat.argmax(axis=1)]
    mass = (cams * inside).reshape(n, -1).sum(axis=1) / np.maximum(flat.sum(axis=1), 1e-12)
    return float(peak_in.mean()), float(mass.mean())


def box_on_input(box: tuple[float, float, float, float], crop_fraction: float) -> tuple[float, float, float, float]:
    """``box`` (fractions of the whole film) in the coordinates of an input centre-cropped to ``crop_fraction``.

    The map covers only the crop: mass on the cropped-away border cannot be seen, so with a crop the mass
    inside is an upper bound and the peak is inside the film's central ``crop_fraction`` by construction.
    """
    off = (1.0 - crop_fraction) / 2.0
    return tuple(min(max((v - off) / crop_fraction, 0.0), 1.0) for v in box)  # type: ignore[return-value]


def focus_films(n_total: int, n: int) -> np.ndarray:
    """The ``n`` evenly spaced indices (of ``n_total`` films in path order) the lung focus is measured on."""
    n = min(n, n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def lung_focus_of_model(model: nn.Module, architecture: str, task: str, spec: InputSpec, prepared_u8: np.ndarray,
                        films: int = 80, batch: int = 16, classes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """HiResCAM (the app's default map and layer) for the predicted class on ``films`` evenly spaced films of
    ``prepared_u8`` (N, S, S, already through ``prepare``): peak and mass inside ``LUNG_BOX``."""
    idx = focus_films(len(prepared_u8), films)
    ex = Explainer(model.cpu(), architecture, task, spec.on_prepared(), method=DEFAULT_METHOD,
                   classes=classes)
    cams, empty = [], 0
    for start in range(0, len(idx), batch):
        for e in ex.explain_batch([prepared_u8[i] for i in idx[start : start + batch]]):
            cams.append(e.cam_input)
            empty += int(e.empty)
    # An empty map (no positive evidence anywhere) counts as neither peak nor mass inside.
    peak, mass = lung_focus(np.stack(cams), box_on_input(LUNG_BOX, spec.crop_fraction))
    return {"films": len(idx), "method": DEFAULT_METHOD, "layer": ex.layer_name, "box": list(LUNG_BOX),
            "peak_inside": peak, "mass_inside": mass, "empty_maps": empty}
