"""Deterministic synthetic chest-X-ray phantoms: the embedded demo data set.

The app must show every page on a fresh machine with no download, and tests need images whose
lesion location is known. This module draws frontal (PA) chest-X-ray-like phantoms from a
small attenuation model (body, lungs, ribs, spine, clavicles, heart, diaphragm, vessels) and
adds one of three findings:

- ``normal``: no lesion;
- ``bacteria``: dense lobar consolidation, one fairly well-defined region in one lung;
- ``virus``: bilateral, patchy, perihilar interstitial haze with a reticular texture.

Every draw comes from ``numpy.random.default_rng`` seeded by ``(seed, ...)`` so a phantom is a
pure function of ``(subtype, seed, size, view)``. The anatomy depends on the seed only, the
lesion on the seed and the subtype, the acquisition (pose, exposure, noise) on the seed and the
view, so ``make_phantom("normal", s)`` and ``make_phantom("bacteria", s)`` show the same
patient in the same acquisition with and without the finding.

Only the lesion carries class information: the display window and the gamma are the
acquisition's, fitted on the patient without the finding (to a mean intensity drawn from the
same distribution for every class) and applied unchanged with it, so outside the lesion a
pneumonia phantom equals its normal twin pixel for pixel, and a classifier has to find the
lesion itself (which the class-activation-map localisation tests rely on).

:func:`write_dataset` writes a set in the Kaggle ``chest-xray-pneumonia`` layout with real-style
file names, lesion masks beside it (``ROOT/masks/...``), a ``manifest.csv`` and a ``SOURCE.md``
stating that the images are synthetic and not clinical.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from cxr_core.config import SPLITS

SUBTYPES: tuple[str, ...] = ("normal", "bacteria", "virus")
#: Every finding :func:`make_phantom` draws: the Kermany subtypes and a COVID-19-like pattern
#: (bilateral, peripheral, lower-zone ground glass) for four-class sets.
ALL_SUBTYPES: tuple[str, ...] = (*SUBTYPES, "covid")

#: Bumped whenever the drawing changes, so a cached demo set can tell it is stale.
GENERATOR_VERSION = 2

#: Patient numbers start here so synthetic ids never clash with the real data set's.
FIRST_PATIENT_ID = 5000

#: Fraction of patients that get a second image (a follow-up view) in :func:`write_dataset`.
SECOND_IMAGE_FRACTION = 0.2

_MANIFEST_COLUMNS = ("path", "split", "label", "subtype", "patient_id", "width", "height")


@dataclass(frozen=True)
class Phantom:
    """One synthetic radiograph with its ground truth."""

    image: np.ndarray  #: (H, W) uint8, bright = dense, like a displayed radiograph
    lesion_mask: np.ndarray  #: (H, W) bool, all False for ``normal``
    subtype: str
    #: (H, W) bool, the two lung fields (where a lesion may lie); None only if built by hand.
    lung_mask: np.ndarray | None = None


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`write_dataset` writes."""

    #: Images per subtype per split.
    n_per_class: dict[str, int] = field(default_factory=lambda: {"train": 60, "val": 15, "test": 20})
    size: int = 256
    seed: int = 0
    #: The findings drawn, one class each (any of ``ALL_SUBTYPES``).
    classes: tuple[str, ...] = SUBTYPES
    #: "kermany": ``{split}/{NORMAL,PNEUMONIA}/`` (needs the Kermany subtypes); "manifest": one folder
    #: per class and a manifest.csv whose label is the class (an N-class set, e.g. with ``covid``).
    layout: str = "kermany"


# --------------------------------------------------------------------------------------------
# small numeric helpers


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=32)
def _upsampler(grid: int, size: int) -> np.ndarray:
    """(size, grid + 4) matrix that smoothly interpolates coarse noise nodes onto pixels."""
    pos = (np.arange(size) + 0.5) / size * grid + 1.5  # pixel centres in node units (2-node margin)
    nodes = np.arange(grid + 4)
    # Cubic B-spline kernel: smooth (C2), so the noise has no grid artefacts.
    d = np.abs(pos[:, None] - nodes[None, :])
    w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, grid: int, size: int) -> np.ndarray:
    """Band-limited noise with unit variance, defined on a coarse grid so it looks the same at any size."""
    coarse = rng.standard_normal((grid + 4, grid + 4)).astype(np.float32)
    m = _upsampler(grid, size)
    # einsum, not @: these products are tiny, and a threaded BLAS on a busy 2-core machine
    # spent ~15 ms per call on thread hand-off (and BLAS results may vary with thread count).
    out = np.einsum("ik,lk->il", np.einsum("ij,jk->ik", m, coarse), m)
    out -= out.mean()
    return out / (out.std() + 1e-6)


class _Frame:
    """Pixel grid and the per-view affine between pixels and body coordinates.

    Body coordinates: u to the image right (the patient's left), v downwards, both in units
    of half the image side, origin near the centre of the chest.
    """

    def __init__(self, size: int, angle: float, scale: float, du: float, dv: float) -> None:
        self.size = size
        self.half = size / 2.0
        self.c, self.s = math.cos(angle), math.sin(angle)
        self.scale, self.du, self.dv = scale, du, dv
        ax = (np.arange(size, dtype=np.float32) + 0.5 - self.half) / self.half
        x, y = np.meshgrid(ax, ax)
        x, y = x - du, y - dv
        self.u = ((self.c * x + self.s * y) / scale).astype(np.float32)
        self.v = ((-self.s * x + self.c * y) / scale).astype(np.float32)

    def to_pixel(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates -> (row, col) in pixels."""
        u, v = np.asarray(u) * self.scale, np.asarray(v) * self.scale
        x = self.c * u - self.s * v + self.du
        y = self.s * u + self.c * v + self.dv
        return y * self.half + self.half - 0.5, x * self.half + self.half - 0.5


# --------------------------------------------------------------------------------------------
# anatomy


@dataclass(frozen=True)
class _Anatomy:
    body_w: float
    lung_lat: tuple[float, float]  # lateral extent, image-left lung then image-right lung
    lung_apex: tuple[float, float]
    dome: tuple[float, float]  # v of the dome top
    dome_h: float
    heart_c: tuple[float, float]
    heart_ax: tuple[float, float]
    heart_angle: float
    rib_top: float
    rib_gap: float
    n_ribs: int
    rib_w: float
    rib_curve: float
    rib_amp: tuple[float, ...]
    spine_w: float
    arms: bool
    gas_bubble: float
    lung_depth: float


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    dome_r = rng.uniform(0.40, 0.50)
    return _Anatomy(
        body_w=rng.uniform(0.86, 0.94),
        lung_lat=(rng.uniform(0.75, 0.81), rng.uniform(0.75, 0.81)),
        lung_apex=(rng.uniform(-0.86, -0.78), rng.uniform(-0.86, -0.78)),
        # The right hemidiaphragm (image left) usually sits a little higher.
        dome=(dome_r, dome_r + rng.uniform(0.0, 0.07)),
        dome_h=rng.uniform(0.10, 0.16),
        # Pediatric hearts are large: cardiothoracic ratio around 0.5.
        # Most of the heart lies to the patient's left (image right), its apex pointing down-left.
        heart_c=(rng.uniform(0.12, 0.18), rng.uniform(0.12, 0.20)),
        heart_ax=(rng.uniform(0.34, 0.40), rng.uniform(0.20, 0.25)),
        heart_angle=rng.uniform(0.25, 0.5),
        rib_top=rng.uniform(-0.80, -0.74),
        rib_gap=rng.uniform(0.112, 0.128),
        n_ribs=int(rng.integers(9, 11)),
        rib_w=rng.uniform(0.028, 0.036),
        rib_curve=rng.uniform(1.0, 1.35),
        rib_amp=tuple(rng.uniform(0.7, 1.1, 12)),
        spine_w=rng.uniform(0.055, 0.07),
        arms=bool(rng.random() < 0.6),
        gas_bubble=rng.uniform(0.0, 1.0),
        lung_depth=rng.uniform(0.40, 0.50),
    )


def _heart_field(fr: _Frame, an: _Anatomy) -> np.ndarray:
    """Roughly metric inside-ness of the cardiac silhouette (positive inside)."""
    du, dv = fr.u - an.heart_c[0], fr.v - an.heart_c[1]
    ca, sa = math.cos(an.heart_angle), math.sin(an.heart_angle)
    eu, ev = du * ca + dv * sa, -du * sa + dv * ca
    ellipse = (1.0 - np.sqrt((eu / an.heart_ax[0]) ** 2 + (ev / an.heart_ax[1]) ** 2)) * an.heart_ax[1]
    # The heart rests on the diaphragm: below its centre it reaches straight down, so no sliver
    # of lung is left between its lower border and the dome.
    resting = np.minimum(dv, 0.85 * an.heart_ax[0] - np.abs(du))
    return np.maximum(ellipse, resting)


def _lung_field(fr: _Frame, an: _Anatomy, side: int, heart_f: np.ndarray) -> np.ndarray:
    """Roughly metric inside-ness of one lung (positive inside). side -1: image left."""
    i = 0 if side < 0 else 1
    su = side * fr.u  # mirror so both lungs are drawn as the image-left one
    v = fr.v
    lat, apex, dome = an.lung_lat[i], an.lung_apex[i], an.dome[i]
    # Outer contour: an ellipse through apex, lateral wall and a point below the costophrenic angle.
    cu, cv = 0.40, (apex + dome + 0.20) / 2
    a, b = lat - cu + 0.01, (dome + 0.20 - apex) / 2
    tilt = 0.10  # the apex leans towards the midline
    du, dv = su - cu, v - cv
    eu = du * math.cos(tilt) + dv * math.sin(tilt)
    ev = -du * math.sin(tilt) + dv * math.cos(tilt)
    f_ell = (1.0 - np.sqrt((eu / a) ** 2 + (ev / b) ** 2)) * min(a, b)
    # Medial border: the upper mediastinum, then the heart.
    f_med = su - (0.07 + 0.03 * _smoothstep((v + 0.4) / 0.4) + 0.12 * _smoothstep((v - 0.22) / 0.15))
    # Diaphragm dome: highest about mid-lung, falling steeply into the costophrenic angle.
    dome_v = dome - an.dome_h * (1.0 - ((su - 0.42) / 0.44) ** 2)
    f_dome = dome_v - v
    return np.minimum(np.minimum(np.minimum(f_ell, f_med), f_dome), -heart_f).astype(np.float32)


def _rib_profile(d: np.ndarray) -> np.ndarray:
    """Cross-section of a rib: a flat band with brighter cortical edges."""
    d2 = d * d
    return np.exp(-(d2 * d2 * d2)) * (0.7 + 0.3 * np.minimum(d2, 1.0))


def _ribs(fr: _Frame, an: _Anatomy) -> np.ndarray:
    """Posterior and anterior ribs, all drawn at once through a 'rib phase' coordinate."""
    x = np.abs(fr.u)
    xs = np.maximum(x - 0.06, 0.0)
    lateral_fade = _smoothstep((an.body_w - 0.03 - x) / 0.08)
    # Posterior ribs: up and out from the spine, then down along the lateral wall, curving
    # more in the lower chest. Straighten that curve, then ribs are equally spaced bands.
    depth = (fr.v - an.rib_top).clip(0, None)
    straight = fr.v - an.rib_curve * (xs * xs - 0.3 * xs) * (1.0 + 0.35 * depth)
    phase = (straight - an.rib_top) / an.rib_gap
    phase = np.log1p(0.05 * phase.clip(-0.5, None)) / 0.05  # lower ribs sit a little further apart
    k = np.rint(phase)
    d = (phase - k) * an.rib_gap / an.rib_w
    valid = (k >= 0) & (k < an.n_ribs)
    # Ribs differ a little from one another (density, projection), so the cage is not a grating.
    rib_amp = np.asarray(an.rib_amp, np.float32)[np.clip(k, 0, len(an.rib_amp) - 1).astype(np.intp)]
    post = _rib_profile(d) * valid * rib_amp * _smoothstep(xs / 0.04)
    # Anterior ribs: fainter, from the lateral wall down and in towards the costal cartilage.
    straight_a = fr.v + 0.55 * (x - 0.72)
    phase_a = (straight_a - an.rib_top - 0.02) / (an.rib_gap * 1.05)
    ka = np.rint(phase_a)
    da = (phase_a - ka) * an.rib_gap / (an.rib_w * 0.9)
    valid_a = (ka >= 1) & (ka < an.n_ribs - 2)
    ant = 0.45 * _rib_profile(da) * valid_a * _smoothstep((x - 0.25) / 0.12)
    # Below the domes the ribs fade into the abdomen.
    thorax = 0.15 + 0.85 * _smoothstep((max(an.dome) + 0.15 - fr.v) / 0.2)
    return (post + ant) * lateral_fade * thorax


def _clavicles(fr: _Frame, an: _Anatomy) -> np.ndarray:
    x = np.abs(fr.u)
    # Gently S-shaped: flat medially, rising towards the shoulder, thickest at the medial end.
    vc = an.rib_top + 0.10 - 0.12 * (x - 0.08) - 0.35 * np.maximum(x - 0.30, 0.0) ** 1.5
    vc = vc + 0.3 * np.maximum(0.22 - x, 0.0)  # medial ends dip towards the sternum
    vc = vc + 0.02 * np.sin((x - 0.08) / 0.6 * 2 * np.pi)
    d = (fr.v - vc) / (0.040 - 0.012 * np.clip(x - 0.08, 0, 0.6) / 0.6)
    along = _smoothstep((x - 0.10) / 0.04) * _smoothstep((0.70 - x) / 0.10)
    return _rib_profile(d) * along


def _spine(fr: _Frame, an: _Anatomy) -> np.ndarray:
    across = _smoothstep((an.spine_w - np.abs(fr.u)) / 0.015)
    # Vertebral bodies with fainter disc spaces; pedicles as two faint columns.
    bodies = 0.75 + 0.25 * np.cos(np.pi * (fr.v - an.rib_top) / an.rib_gap) ** 2
    pedicles = np.exp(-(((np.abs(fr.u) - an.spine_w * 0.7) / 0.012) ** 2))
    return across * (bodies + 0.3 * pedicles)


def _vessel_tree(fr: _Frame, rng: np.random.Generator, hila: list[tuple[float, float, int]]) -> np.ndarray:
    """Bronchovascular markings: branching lines from each hilum, thick centrally, thin outside."""
    from skimage.draw import line_aa

    segs: list[tuple[float, float, float, float, int]] = []
    for hu, hv, side in hila:
        # A fan of trunks covering the lung: upwards, outwards and (most) downwards.
        stack = []
        for base in np.linspace(-1.25, 1.3, 7):
            ang = base + rng.uniform(-0.15, 0.15)
            # Trunks leave from along the hilum, not from one point, so the tree is not a star.
            u0, v0 = hu + side * rng.uniform(0.0, 0.05), hv + 0.12 * base / 1.3 + rng.uniform(-0.03, 0.03)
            stack.append((u0, v0, ang if side > 0 else math.pi - ang, rng.uniform(0.11, 0.16), 0))
        while stack:
            u0, v0, ang, length, gen = stack.pop()
            u1, v1 = u0 + length * math.cos(ang), v0 + length * math.sin(ang)
            segs.append((u0, v0, u1, v1, gen))
            if gen < 2:
                for turn in (-1, 1):
                    stack.append(
                        (
                            u1,
                            v1,
                            ang + turn * rng.uniform(0.2, 0.5),
                            length * rng.uniform(0.65, 0.85),
                            gen + 1,
                        )
                    )
    arr = np.array(segs, dtype=np.float64)
    r0, c0 = fr.to_pixel(arr[:, 0], arr[:, 1])
    r1, c1 = fr.to_pixel(arr[:, 2], arr[:, 3])
    size = fr.size
    layers = np.zeros((2, size, size), np.float32)
    for j in range(len(segs)):
        rr, cc, val = line_aa(int(r0[j]), int(c0[j]), int(r1[j]), int(c1[j]))
        keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        gen = int(arr[j, 4])
        layer = layers[0 if gen == 0 else 1]
        layer[rr[keep], cc[keep]] = np.maximum(layer[rr[keep], cc[keep]], val[keep] * 0.8**gen)
    px = size / 256.0
    thick = ndimage.gaussian_filter(layers[0], 1.2 * px, truncate=3.0)
    thin = ndimage.gaussian_filter(layers[1], 0.7 * px, truncate=3.0)
    return thick * 2.5 + thin * 1.3


@dataclass(frozen=True)
class _View:
    angle: float
    scale: float
    du: float
    dv: float
    k_exposure: float
    floor: float
    white: float
    target_mean: float
    noise: float
    blur: float
    marker: int  # 0 none, 1 top-left, 2 upper-left beside the shoulder


def _sample_view(rng: np.random.Generator) -> _View:
    return _View(
        angle=float(rng.normal(0.0, 0.04)),
        scale=rng.uniform(0.96, 1.08),
        du=rng.uniform(-0.05, 0.05),
        dv=rng.uniform(0.03, 0.12),
        k_exposure=rng.uniform(1.4, 3.0),
        floor=rng.uniform(0.0, 0.08),
        white=rng.uniform(0.92, 1.0),
        target_mean=rng.uniform(0.40, 0.56),
        noise=rng.uniform(0.008, 0.025),
        blur=rng.uniform(0.3, 0.9),
        marker=int(rng.integers(0, 3)),
    )


# --------------------------------------------------------------------------------------------
# lesions

#: Smallest lesion, as a fraction of the image, that the generator accepts.
_MIN_LESION_FRACTION = 0.025


def _consolidation(
    fr: _Frame, rng: np.random.Generator, lungs: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Dense lobar consolidation in one lung: (density in [0, 1], air-bronchogram layer)."""
    side = int(rng.choice([-1, 1]))
    lung = lungs[0 if side < 0 else 1]
    # Lobar pneumonia fills a lobe out to the pleura: centre the blob near the lung edge so
    # the pleura clips it into a lobe-like shape.
    rim = ((lung > 0.05) & (lung < 0.15)).ravel()
    zone = int(rng.choice(3, p=[0.15, 0.35, 0.50]))  # upper, mid, lower
    vflat = fr.v.ravel()
    lo, hi = np.quantile(vflat[lung.ravel() > 0.02], [zone / 3.0, (zone + 1) / 3.0])
    candidates = np.flatnonzero(rim & (vflat >= lo) & (vflat <= hi))
    if candidates.size == 0:
        candidates = np.flatnonzero(lung.ravel() > 0.0)
    ra, rb = rng.uniform(0.26, 0.36), rng.uniform(0.20, 0.30)
    rot = rng.uniform(0, math.pi)
    shape_noise = 0.35 * _smooth_noise(rng, 5, fr.size)
    fissure = rng.random() < 0.5
    fis_turn, fis_off = rng.uniform(-0.4, 0.4), rng.uniform(0.08, 0.16)
    min_px = fr.size * fr.size * _MIN_LESION_FRACTION
    # A blob in a corner of the lung can be clipped down to a sliver: try a few centres and
    # keep the first big enough (or else the biggest).
    best, best_px = None, -1
    for _ in range(8):
        pick = int(candidates[int(rng.integers(candidates.size))])
        cu, cv = float(fr.u.ravel()[pick]), float(fr.v.ravel()[pick])
        du, dv = fr.u - cu, fr.v - cv
        eu = du * math.cos(rot) + dv * math.sin(rot)
        ev = -du * math.sin(rot) + dv * math.cos(rot)
        blob = 1.0 - np.sqrt((eu / ra) ** 2 + (ev / rb) ** 2) + shape_noise
        if fissure:
            # A fissure on the side facing the lung's interior gives one straight, sharp edge.
            ang = math.atan2(0.0 - cv, side * 0.45 - cu) + fis_turn
            blob = np.minimum(blob, 8.0 * (fis_off - (du * math.cos(ang) + dv * math.sin(ang))))
        density = _smoothstep(blob / 0.35) * _smoothstep(lung / 0.015)
        n_px = int(np.count_nonzero(density > 0.5))
        if n_px > best_px:
            best, best_px, best_c = density, n_px, (cu, cv)
        if n_px >= min_px:
            break
    density, (cu, cv) = best, best_c
    density = density * (0.88 + 0.12 * _smooth_noise(rng, 24, fr.size))
    # Air bronchograms: a few dark tubes running into the consolidation from the hilum.
    bronch = np.zeros_like(density)
    if rng.random() < 0.6:
        hu, hv = side * 0.16, -0.05
        for _ in range(int(rng.integers(2, 4))):
            ang = math.atan2(cv - hv, cu - hu) + rng.uniform(-0.35, 0.35)
            t = (fr.u - hu) * math.cos(ang) + (fr.v - hv) * math.sin(ang)
            perp = (fr.u - hu) * -math.sin(ang) + (fr.v - hv) * math.cos(ang)
            bronch = np.maximum(bronch, np.exp(-((perp / 0.009) ** 2)) * _smoothstep(t / 0.1))
        bronch = bronch * _smoothstep((density - 0.5) / 0.3)
    return density.astype(np.float32), bronch.astype(np.float32)


def _interstitial(
    fr: _Frame, rng: np.random.Generator, lungs: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral perihilar patchy haze: (haze in [0, 1], reticular network in [0, 1])."""
    haze = np.zeros_like(fr.u)
    for i, side in enumerate((-1, 1)):
        # Perihilar: centred between hilum and lateral wall, above the heart on the image right.
        hu = side * rng.uniform(0.30, 0.40)
        hv = rng.uniform(-0.08, 0.10) if side < 0 else rng.uniform(-0.15, 0.02)
        su, sv = rng.uniform(0.20, 0.28), rng.uniform(0.30, 0.40)
        w = np.exp(-(((fr.u - hu) / su) ** 2) - ((fr.v - hv) / sv) ** 2)
        patches = _smoothstep((_smooth_noise(rng, 8, fr.size) + 0.6) / 1.2)
        w = w * (0.4 + 0.6 * patches) * _smoothstep(lungs[i] / 0.03)
        # Bilateral by definition: each lung gets its own haze peaking at full strength.
        haze = np.maximum(haze, w / max(float(w.max()), 1e-6))
    # Reticular texture: thin lines where band-pass noise crosses zero.
    band = _smooth_noise(rng, 30, fr.size)
    reticular = np.exp(-((band / 0.4) ** 2))
    return haze.astype(np.float32), reticular.astype(np.float32)


def _ground_glass(fr: _Frame, rng: np.random.Generator, lungs: list[np.ndarray]) -> np.ndarray:
    """Bilateral, peripheral, lower-zone patchy ground glass (the COVID-19 pattern): haze in [0, 1]."""
    haze = np.zeros_like(fr.u)
    for lung in lungs:
        inside = lung > 0.0
        v_mid = float(np.median(fr.v[inside])) if inside.any() else 0.0
        # Strongest under the pleura (the lung field is ~ the distance to its border) and in the lower half.
        peripheral = np.exp(-np.clip(lung, 0.0, None) / rng.uniform(0.18, 0.24))
        lower = _smoothstep((fr.v - v_mid + rng.uniform(0.0, 0.1)) / 0.3)
        patches = _smoothstep((_smooth_noise(rng, 10, fr.size) + 0.5) / 1.0)
        w = peripheral * lower * (0.35 + 0.65 * patches) * _smoothstep(lung / 0.015)
        haze = np.maximum(haze, w / max(float(w.max()), 1e-6))  # bilateral: each lung peaks at full strength
    return haze.astype(np.float32)


# --------------------------------------------------------------------------------------------
# rendering


_R_GLYPH = np.array(
    [
        [1, 1, 1, 1, 0],
        [1, 0, 0, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 0],
        [1, 0, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 0, 1],
    ],
    dtype=np.float32,
)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The biggest 4-connected region of ``mask`` (the implicit lung shapes can leave specks)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _gamma_for_mean(img: np.ndarray, target: float) -> float:
    """The gamma that takes ``img`` (values in [0, 1]) to mean ``target``."""
    step = max(1, img.shape[0] // 64)  # ~4k pixels pin the mean to well under one grey level
    sample = img[::step, ::step].astype(np.float64)
    lo, hi = 0.2, 5.0  # mean(img ** g) falls as g grows
    for _ in range(16):
        g = math.sqrt(lo * hi)
        if np.mean(sample**g) > target:
            lo = g
        else:
            hi = g
    return math.sqrt(lo * hi)


def make_phantom(subtype: str, seed: int, size: int = 256, *, view: int = 0) -> Phantom:
    """Draw one phantom; a pure function of ``(subtype, seed, size, view)``.

    ``seed`` fixes the patient: anatomy and, per subtype, the lesion. ``view`` is another
    acquisition of the same patient and finding: new pose, exposure, blur and noise.
    """
    if subtype not in ALL_SUBTYPES:
        raise ValueError(f"subtype must be one of {ALL_SUBTYPES}, got {subtype!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    if seed < 0 or view < 0:
        raise ValueError("seed and view must be non-negative")
    # One generator per concern, so that e.g. a new view redraws the acquisition only.
    an = _sample_anatomy(np.random.default_rng([seed, 0]))
    vw = _sample_view(np.random.default_rng([seed, 1, view]))
    tex_rng = np.random.default_rng([seed, 2])
    lesion_rng = np.random.default_rng([seed, 3, ALL_SUBTYPES.index(subtype)])
    noise_rng = np.random.default_rng([seed, 4, view])
    fr = _Frame(size, vw.angle, vw.scale, vw.du, vw.dv)

    healthy, lungs, vessels = _healthy_chest(fr, an, tex_rng)
    lung_region = _largest_component(lungs[0] > 0.0) | _largest_component(lungs[1] > 0.0)
    atten, lesion = _add_finding(subtype, healthy, fr, an, lesion_rng, lungs, vessels, lung_region)
    image = _acquire(healthy, atten if subtype != "normal" else None, vw, noise_rng, size)
    return Phantom(image=image, lesion_mask=lesion, subtype=subtype, lung_mask=lung_region)


def _body(fr: _Frame, an: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """(attenuation, body thickness profile) of the soft tissue: trunk, neck and arms."""
    u, v = fr.u, fr.v
    # Body: a soft-tissue cylinder, neck above the shoulders, arms beside the chest.
    # Widest at the shoulders; the neck only shows when the view is shifted down.
    width = an.body_w + 0.05 * _smoothstep((-0.5 - v) / 0.35)
    width = 0.34 + (width - 0.34) * np.sqrt(_smoothstep((v + 1.18) / 0.3))
    body_f = width - np.abs(u)
    body = np.sqrt(np.clip(1.0 - (u / width) ** 2, 0, 1)) * _smoothstep(body_f / 0.03)
    atten = 0.50 * body + 0.20 * _smoothstep(body_f / 0.02)
    if an.arms:
        arm_c = an.body_w + 0.13
        arm = np.clip(1.0 - ((np.abs(u) - arm_c) / 0.10) ** 2, 0, 1) * _smoothstep((v + 0.65) / 0.2)
        atten += 0.6 * np.sqrt(arm)
    return atten, body


def _healthy_chest(
    fr: _Frame, an: _Anatomy, tex_rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(attenuation, [right, left] lung fields, vessel map) of the patient without a finding."""
    u, v = fr.u, fr.v
    atten, body = _body(fr, an)
    heart_f = _heart_field(fr, an)
    lungs = [_lung_field(fr, an, -1, heart_f), _lung_field(fr, an, 1, heart_f)]
    lung_any = np.maximum(lungs[0], lungs[1])
    lung_soft = 0.4 * _smoothstep(lung_any / 0.012) + 0.6 * _smoothstep(lung_any / 0.13)
    # Lungs are air: they take attenuation away; the apices less so (shoulder soft tissue).
    apex_veil = 0.25 * _smoothstep((an.rib_top + 0.25 - v) / 0.25)
    atten -= an.lung_depth * lung_soft * (1.0 - apex_veil)
    # The abdomen below the domes is a little denser than the chest (liver, bowel).
    atten += 0.08 * _smoothstep((v - an.dome[0] + 0.05) / 0.3) * body
    if an.gas_bubble > 0.3:
        gb = np.exp(-(((u - 0.40) / 0.11) ** 2) - ((v - an.dome[1] - 0.10) / 0.05) ** 2)
        atten -= 0.25 * gb * (an.gas_bubble - 0.3)
    trachea = _smoothstep((0.028 - np.abs(u)) / 0.01) * _smoothstep((-0.22 - v) / 0.05)
    atten -= 0.10 * trachea

    # Bones: ribs show best against the lungs.
    ribs = _ribs(fr, an) * body * (0.45 + 0.55 * lung_soft)
    atten += 0.14 * ribs + 0.14 * _clavicles(fr, an) + 0.09 * _spine(fr, an) * body

    # Vessels, hila and fine parenchymal mottling, so the lungs are not flat.
    hila = [(-0.14, -0.06, -1), (0.15, -0.09, 1)]
    vessels = _vessel_tree(fr, tex_rng, hila)
    for h_u, h_v, _ in hila:
        vessels += 0.9 * np.exp(-(((u - h_u) / 0.05) ** 2) - ((v - h_v) / 0.09) ** 2)
    atten += 0.09 * vessels * lung_soft
    atten += 0.015 * _smooth_noise(tex_rng, 40, fr.size) * lung_soft
    return atten, lungs, vessels


def _add_finding(
    subtype: str,
    healthy: np.ndarray,
    fr: _Frame,
    an: _Anatomy,
    lesion_rng: np.random.Generator,
    lungs: list[np.ndarray],
    vessels: np.ndarray,
    lung_region: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(attenuation with the finding, lesion mask); a normal phantom's is the healthy one, no lesion."""
    atten = healthy.copy()
    lesion = np.zeros(healthy.shape, dtype=bool)
    if subtype == "bacteria":
        dens, bronch = _consolidation(fr, lesion_rng, lungs)
        atten += an.lung_depth * lesion_rng.uniform(0.70, 0.90) * dens * (1.0 - 0.5 * bronch)
        lesion = (dens > 0.4) & lung_region
    elif subtype == "virus":
        haze, ret = _interstitial(fr, lesion_rng, lungs)
        amp = an.lung_depth * lesion_rng.uniform(0.36, 0.48)
        atten += haze * amp * (0.7 + 0.5 * ret) + 0.04 * haze * vessels
        lesion = (haze > 0.4) & lung_region
    elif subtype == "covid":
        haze = _ground_glass(fr, lesion_rng, lungs)
        # Ground glass is fainter than consolidation and keeps the vessels visible through it.
        atten += haze * an.lung_depth * lesion_rng.uniform(0.55, 0.70)
        lesion = (haze > 0.4) & lung_region
    return atten, lesion


def _acquire(
    healthy: np.ndarray, finding: np.ndarray | None, vw: _View, noise_rng: np.random.Generator, size: int
) -> np.ndarray:
    """The detector: exposure curve, window, gamma, blur, noise, marker; uint8 image.

    ``finding`` is the attenuation with the lesion (None for a normal phantom). The window and
    the gamma belong to the acquisition, not to the finding: they are fitted on the patient
    without the lesion (a mean drawn from one distribution for every class) and applied
    unchanged to the image with it, so outside the lesion a pneumonia phantom is its normal twin
    pixel for pixel. Fitted on the image with the lesion (generator version 1), they darkened
    the healthy lung of a consolidation by ~3 grey levels and shifted lung/body contrast: a
    whole-image class cue the classifiers learned, their class activation maps lighting up the
    healthy lung.
    """
    px = size / 256.0

    def expose(a: np.ndarray) -> np.ndarray:
        return 1.0 - np.exp(-vw.k_exposure * np.clip(a, 0.0, None))

    exposed_healthy = expose(healthy)
    # Window like a display station: the densest bone near white, air near black.
    step = max(1, size // 128)
    lo, hi = np.percentile(exposed_healthy[::step, ::step], [0.5, 99.7])

    def window(img: np.ndarray) -> np.ndarray:
        img = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * vw.white
        return (vw.floor + (1.0 - vw.floor) * img).astype(np.float32)

    gamma = _gamma_for_mean(window(exposed_healthy), vw.target_mean)
    img = window(expose(finding) if finding is not None else exposed_healthy) ** np.float32(gamma)
    img = ndimage.gaussian_filter(img, vw.blur * px, truncate=3.0)
    noise = noise_rng.standard_normal((size, size)).astype(np.float32)
    img = img + vw.noise * 1.6 * ndimage.gaussian_filter(noise, 0.5 * px, truncate=3.0)
    if vw.marker:
        _stamp_marker(img, vw.marker, size, px)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _stamp_marker(img: np.ndarray, position: int, size: int, px: float) -> None:
    """Burn the "R" side marker into ``img`` in place: top left (``position`` 1) or beside the shoulder (2)."""
    cell = max(1, int(round(2 * px)))
    glyph = np.kron(_R_GLYPH, np.ones((cell, cell), np.float32))
    r0 = int(0.04 * size) if position == 1 else int(0.22 * size)
    c0 = int(0.04 * size)
    patch = img[r0 : r0 + glyph.shape[0], c0 : c0 + glyph.shape[1]]
    np.maximum(patch, glyph * 0.95, out=patch)


def contact_sheet(seeds: list[int] | range = range(4), size: int = 160) -> np.ndarray:
    """One row per subtype, one column per seed, as a uint8 image (for docs and eyeballing)."""
    rows = [np.hstack([make_phantom(s, seed, size).image for seed in seeds]) for s in SUBTYPES]
    return np.vstack(rows)


# --------------------------------------------------------------------------------------------
# data set on disk


def _file_name(subtype: str, pid: int, image_no: int, k: int) -> tuple[str, str]:
    """(file name, patient key) in the real data set's naming scheme."""
    if subtype == "normal":
        return f"IM-{pid:04d}-{image_no:04d}.png", f"IM-{pid:04d}"
    return f"person{pid}_{subtype}_{k}.png", f"person{pid}"


def _patient_seed(spec_seed: int, subtype: str, pid: int) -> int:
    """The phantom seed of patient ``pid`` in a set written with ``spec_seed``."""
    # Mix the family in so IM-5000 and person5000 are different people.
    family = 0 if subtype == "normal" else 1
    return int(np.random.SeedSequence([spec_seed, family, pid]).generate_state(1)[0])


def _patient_sizes(n_images: int) -> list[int]:
    """Images per patient: about SECOND_IMAGE_FRACTION of patients have two."""
    n_two = int(round(n_images * SECOND_IMAGE_FRACTION / (1.0 + SECOND_IMAGE_FRACTION)))
    return [2] * n_two + [1] * (n_images - 2 * n_two)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


_SOURCE_TITLE = "# Synthetic chest-X-ray phantoms (demo data, NOT clinical)"
_KERMANY_LAYOUT_MD = "Layout: the Kaggle `chest-xray-pneumonia` layout, `{train,val,test}/{NORMAL,PNEUMONIA}/*.png`,"


def _prepare_root(root: Path) -> None:
    """Create ``root``, or empty it if it holds an earlier synthetic set; refuse anything else.

    Stale images from a bigger earlier set would otherwise be picked up by a Kaggle-layout
    reader that never looks at the manifest.
    """
    if not root.exists():
        root.mkdir(parents=True)
        return
    if not any(root.iterdir()):
        return
    source = root / "SOURCE.md"
    if not (source.is_file() and source.read_text(errors="replace").startswith(_SOURCE_TITLE)):
        raise FileExistsError(
            f"{root} is not empty and does not hold a synthetic set; refusing to write there"
        )
    for name in (*SPLITS, "masks"):
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    for name in ("manifest.csv", "SOURCE.md"):
        (root / name).unlink(missing_ok=True)


def write_dataset(
    root: str | os.PathLike[str],
    spec: SyntheticSpec = SyntheticSpec(),  # noqa: B008 - frozen, so a shared default is safe
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic set in the Kaggle ``chest-xray-pneumonia`` layout and return its root.

    Layout: ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/<name>.png`` (8-bit grayscale), lesion
    masks at ``ROOT/masks/<same relative path>`` (every image has one, empty for normals),
    ``ROOT/manifest.csv`` and ``ROOT/SOURCE.md`` (written last, so a set without them is
    incomplete). Both images of a two-image patient land in the same split. ``root`` must be
    absent, empty, or an earlier synthetic set (which is replaced); anything else raises
    ``FileExistsError``. ``progress(done, total)`` is called after every image.
    """
    if spec.layout not in ("kermany", "manifest") or set(spec.classes) - set(ALL_SUBTYPES):
        raise ValueError(f"layout must be kermany or manifest and classes a subset of {ALL_SUBTYPES}")
    if spec.layout == "kermany" and set(spec.classes) - set(SUBTYPES):
        raise ValueError(f"the Kermany layout holds only {SUBTYPES}; write other classes with layout='manifest'")
    unknown = set(spec.n_per_class) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected a subset of {SPLITS}")
    if any(n < 0 for n in spec.n_per_class.values()):
        raise ValueError("image counts must be non-negative")
    root = Path(root)
    _prepare_root(root)
    plan = _plan(spec)
    rows = []
    for done, (split, subtype, seed, view, rel, key) in enumerate(plan, start=1):
        ph = make_phantom(subtype, seed, spec.size, view=view)
        _write_png(root / rel, ph.image)
        _write_png(root / "masks" / rel, ph.lesion_mask.astype(np.uint8) * 255)
        rows.append((rel, split, _label(spec, subtype), subtype, key, spec.size, spec.size))
        if progress is not None:
            progress(done, len(plan))

    rows.sort()
    _write_manifest(root / "manifest.csv", rows)
    (root / "SOURCE.md").write_text(_source_md(spec, rows))
    return root


def _label(spec: SyntheticSpec, subtype: str) -> str:
    """The folder / manifest label: NORMAL or PNEUMONIA in the Kermany layout, the class itself otherwise."""
    if spec.layout == "kermany":
        return "NORMAL" if subtype == "normal" else "PNEUMONIA"
    return subtype


def _plan(spec: SyntheticSpec) -> list[tuple[str, str, int, int, str, str]]:
    """(split, subtype, seed, view, relative path, patient key) of every image, in writing order.

    Planned before anything is drawn so the total is known and names and seeds do not depend
    on timing.
    """
    plan: list[tuple[str, str, int, int, str, str]] = []
    next_pid = {"normal": FIRST_PATIENT_ID, "pneumonia": FIRST_PATIENT_ID}
    k_counter = 1
    for split in SPLITS:
        n = spec.n_per_class.get(split, 0)
        for subtype in spec.classes:
            family = "normal" if subtype == "normal" else "pneumonia"
            for n_views in _patient_sizes(n):
                pid = next_pid[family]
                next_pid[family] += 1
                seed = _patient_seed(spec.seed, subtype, pid)
                label = _label(spec, subtype)
                for view in range(n_views):
                    name, key = _file_name(subtype, pid, view + 1, k_counter)
                    k_counter += family == "pneumonia"
                    plan.append((split, subtype, seed, view, f"{split}/{label}/{name}", key))
    return plan


def _write_manifest(path: Path, rows: list[tuple]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_MANIFEST_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, path)


def _source_md(spec: SyntheticSpec, rows: list[tuple]) -> str:
    counts = {(s, t): 0 for s in SPLITS for t in spec.classes}
    patients: dict[str, set[str]] = {s: set() for s in SPLITS}
    for _rel, split, _label, subtype, key, _w, _h in rows:
        counts[split, subtype] += 1
        patients[split].add(key)
    table = ["| split | " + " | ".join(spec.classes) + " | images | patients |",
             "|---|" + "---:|" * (len(spec.classes) + 2)]
    for s in SPLITS:
        n = [counts[s, t] for t in spec.classes]
        table.append(f"| {s} | " + " | ".join(map(str, n)) + f" | {sum(n)} | {len(patients[s])} |")
    extra = "" if spec.layout == "kermany" else f", classes={spec.classes!r}, layout={spec.layout!r}"
    layout = (_KERMANY_LAYOUT_MD if spec.layout == "kermany" else
              "Layout: one folder per class, `{train,val,test}/<class>/*.png`, and `manifest.csv` (path, split, "
              "label = the class, subtype, patient_id, width, height): read through the manifest.")
    return f"""{_SOURCE_TITLE}

Every image here is **synthetic**: drawn by `cxr_core.synthetic` (generator version {GENERATOR_VERSION})
from a simple attenuation model: body outline, two lungs, ribs, spine, clavicles, heart,
diaphragm domes and branching vessels, with random pose, scale, exposure, blur and noise.
No patient data was used. Do not use these images for any clinical purpose.

- `normal`: no finding.
- `bacteria`: dense lobar consolidation, one fairly well-defined region in one lung.
- `virus`: bilateral, patchy, perihilar interstitial haze with a reticular texture.
- `covid` (four-class sets only): bilateral, peripheral, lower-zone ground glass.

Each image is gamma-corrected to a mean intensity drawn from the same distribution for every
class, so global brightness does not give the class away.

{layout} {spec.size}x{spec.size} 8-bit grayscale, with real-style file names (`IM-XXXX-000N.png`,
`personN_bacteria_K.png`, `personN_virus_K.png`; patient numbers start at {FIRST_PATIENT_ID}).
About {SECOND_IMAGE_FRACTION:.0%} of patients have two images, always in the same split.
Lesion masks (255 = lesion) are in `masks/<same relative path>`; `manifest.csv` lists path,
split, label, subtype, patient_id, width, height.

{chr(10).join(table)}

Regenerate (byte-identical):

```python
from cxr_core.synthetic import SyntheticSpec, write_dataset
write_dataset("<root>", SyntheticSpec(n_per_class={dict(spec.n_per_class)!r}, size={spec.size}, seed={spec.seed}{extra}))
```
"""


def load_mask(root: str | os.PathLike[str], relative_image_path: str) -> np.ndarray:
    """Lesion mask (bool, H x W) of an image that :func:`write_dataset` wrote under ``root``.

    ``relative_image_path`` is the image's path relative to ``root`` as in ``manifest.csv``
    (any extension; the mask is always PNG).
    """
    rel = Path(str(relative_image_path).replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"expected a path relative to the data set root, got {relative_image_path!r}")
    path = Path(root) / "masks" / rel.with_suffix(".png")
    if not path.is_file():
        raise FileNotFoundError(f"no lesion mask for {relative_image_path!r} (looked for {path})")
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127
