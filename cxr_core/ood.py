"""Does an upload look like a pediatric chest X-ray at all? The out-of-distribution guard.

Three checks, cheapest first; any one failing raises the warning:

1. **Colour.** Radiographs are grey. The mean HSV saturation of the *original*
   upload (before ``imaging.decode_image`` turns it grey) above
   :data:`MAX_SATURATION` means a photograph or a coloured figure.
2. **Shape.** Chest films in the reference data have width/height between about 0.9
   and 2.9 (the Kermany originals); far outside :data:`ASPECT_RANGE` is not a chest
   film (a panorama, a strip, a phone screenshot).
3. **Features.** Mahalanobis distance (Ledoit–Wolf covariance) of ImageNet
   EfficientNet-Lite0 features (blocks 4 and 6, mean-pooled) to *every* training CXR, normal and pneumonia alike,
   flagged above 1.5 × a high quantile of the validation CXRs' distances. This is the
   check that catches grey non-chest images (a knee, a CT slice, a page of text).

The feature guard is a registry entry (``kind="detector"``, ``task="ood"``) fitted by
``python -m train.anomaly --detector ood``; the cheap checks need no entry.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .anomaly import FeatureConfig, FeatureDetector, shared_backbone
from .registry import Entry, RegistryError

#: Mean HSV saturation (0-1) of the original pixels above which the upload is a colour image.
MAX_SATURATION = 0.12
#: Accepted width / height of the original image.
ASPECT_RANGE = (0.5, 3.5)
#: Threshold = this × the high quantile of validation CXR distances (see ``fit_ood_guard``).
DEFAULT_MARGIN = 1.5
#: The feature taps of the guard: mid-level texture (block 4, 112 channels) and the last block
#: (320 channels). Not the 1,280-d head: its covariance needs far more images than a small
#: registry has (fitted on ~100 CXRs it left grey photos and text *inside* the CXR range).
OOD_FEATURES = FeatureConfig(layers=("4", "6"), pooling="mean", method="mahalanobis", size=224)


def colour_saturation(raw: bytes | None) -> float | None:
    """Mean HSV saturation of an encoded colour image, 0.0 for a grey one, None when unreadable.

    Reads the bytes again because the decoder keeps only the grey array; DICOM and
    other formats Pillow cannot open return None (the check is then skipped).
    """
    if not raw:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.mode in ("L", "LA", "I", "I;16", "F", "1"):
                return 0.0
            im.draft("RGB", (256, 256))  # JPEG: decode at reduced size, enough for a mean
            rgb = im.convert("RGB")
            rgb.thumbnail((256, 256))
            hsv = np.asarray(rgb.convert("HSV"), dtype=np.float32)
    except Exception:  # any unreadable input just skips this cheap check
        return None
    return float(hsv[..., 1].mean() / 255.0)


@dataclass
class OODResult:
    """The guard's verdict for one upload."""

    looks_like_cxr: bool
    reasons: list[str] = field(default_factory=list)
    distance: float | None = None
    threshold: float | None = None
    saturation: float | None = None
    aspect: float | None = None

    @property
    def margin(self) -> float | None:
        """distance / threshold (> 1 = flagged by the feature check)."""
        if self.distance is None or not self.threshold:
            return None
        return self.distance / self.threshold


@dataclass
class OODGuard:
    """A fitted feature guard plus the cheap checks."""

    detector: FeatureDetector
    threshold: float
    note: str = ""
    entry_id: str | None = None
    #: Fitted on the synthetic demo phantoms: real X-rays can then look "unlike" too.
    synthetic: bool = False

    def cheap_checks(self) -> dict[str, Any]:
        return {"max_saturation": MAX_SATURATION, "aspect_range": list(ASPECT_RANGE)}

    @classmethod
    def from_entry(cls, entry: Entry) -> OODGuard:
        card = entry.detector_card
        det = FeatureDetector.from_card(card, entry.load_weights())
        if card.threshold is None:
            raise RegistryError(f"the guard {entry.id} stores no threshold")
        return cls(det, card.threshold, str(card.thresholds.get("note", "")), entry.id, card.synthetic)

    def distances(self, images_u8: np.ndarray) -> np.ndarray:
        """Feature distances for images prepared at the guard's input size (N, S, S)."""
        cfg = self.detector.cfg
        feats = shared_backbone(cfg.architecture).extract(images_u8, cfg.layers, cfg.pooling)
        return self.detector.score(feats)

    def check(
        self,
        gray: np.ndarray,
        *,
        original_shape: tuple[int, int] | None = None,
        raw: bytes | None = None,
    ) -> OODResult:
        from .preprocess import prepare

        result = cheap_check(gray, original_shape=original_shape, raw=raw)
        x = prepare(gray, shared_backbone(self.detector.cfg.architecture).spec(self.detector.cfg.size))
        d = float(self.distances(x[None])[0])
        result.distance, result.threshold = d, self.threshold
        if not d < self.threshold:  # NaN counts as unlike
            result.looks_like_cxr = False
            result.reasons.append(
                f"its image features are {d / self.threshold:.1f}× the distance at which the guard flags "
                "(fitted on the training chest X-rays)"
            )
        return result


def cheap_check(gray: np.ndarray, *, original_shape: tuple[int, int] | None = None, raw: bytes | None = None) -> OODResult:
    """Colour and shape checks, no model needed."""
    h, w = original_shape or gray.shape[:2]
    aspect = w / h if h else math.inf
    sat = colour_saturation(raw)
    reasons = []
    if sat is not None and sat > MAX_SATURATION:
        reasons.append(f"it is a colour image (mean saturation {sat:.2f}; radiographs are grey)")
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        reasons.append(f"its shape (width/height {aspect:.2f}) is unlike a chest film")
    return OODResult(not reasons, reasons, saturation=sat, aspect=aspect)


def fit_ood_guard(
    train_feats: dict[str, np.ndarray],
    val_feats: dict[str, np.ndarray],
    *,
    quantile: float = 0.995,
    margin: float = DEFAULT_MARGIN,
    cfg: FeatureConfig = OOD_FEATURES,
) -> OODGuard:
    """Fit on training CXR features; the threshold is ``margin`` × a high quantile of validation CXR distances.

    Validation images were not used to fit the covariance, so their distances are what
    an unseen real CXR from the same source looks like. The margin is there because
    real films from another source (other scanners, resolutions, JPEG settings) sit
    somewhat further out, and this guard is meant to catch images that are not chest
    films at all; unusual chest films are the anomaly detectors' business.
    """
    det = FeatureDetector.fit(cfg, train_feats)
    d = det.score(val_feats)
    q = float(np.quantile(d, quantile))
    note = (f"{margin:g} × the {quantile:.1%} quantile ({q:.3f}) of {len(d)} validation CXR distances "
            f"(median {np.median(d):.3f}, max {d.max():.3f})")
    return OODGuard(det, margin * q, note)
