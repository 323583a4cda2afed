"""Configuration dataclasses and constants shared across CXR Lens.

Literals that several modules need (class names per task, the model input spec,
decoder limits) live here so that training, evaluation and the app agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Self, get_args, get_type_hints

#: Class names per task, in the order of the model outputs. The binary task has a
#: single logit whose sigmoid is P(PNEUMONIA).
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "binary": ("NORMAL", "PNEUMONIA"),
    "multiclass": ("normal", "bacteria", "virus"),
}

#: What the pages call the Kermany tasks; any other task is named by its classes.
TASK_TITLES: dict[str, str] = {"binary": "Normal vs pneumonia", "multiclass": "Normal / bacterial / viral"}


def task_title(task: str, classes: Sequence[str] = ()) -> str:
    """A reader's name for a task: the Kermany ones by meaning, others by their classes."""
    return TASK_TITLES.get(task) or (" / ".join(classes) if classes else task)


def ordered_tasks(tasks: Iterable[str]) -> list[str]:
    """Tasks in display order: binary, multiclass, then the others by name."""
    rank = {t: i for i, t in enumerate(TASK_CLASSES)}
    return sorted(set(tasks), key=lambda t: (rank.get(t, len(rank)), t))


def normal_class(classes: Sequence[str], wanted: str | None = None) -> str | None:
    """The class healthy-only detectors learn: ``wanted`` (checked), else one named "normal" in any case, else None."""
    if wanted is not None:
        if wanted not in classes:
            raise ValueError(f"normal class {wanted!r} is not one of the classes {list(classes)}")
        return wanted
    return next((c for c in classes if c.lower() == "normal"), None)


class JsonRecord:
    """For configuration dataclasses stored in cards: ``to_dict`` gives JSON values (tuples as lists) and
    ``from_dict`` reads one back, ignoring keys it does not know (newer cards), defaulting missing ones (older
    cards), turning lists back into the field's tuple type and nested dicts into nested records."""

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_value(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: _field_value(hints[k], v) for k, v in d.items() if k in names})


def _json_value(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_json_value(x) for x in v]
    return {k: _json_value(x) for k, x in v.items()} if isinstance(v, dict) else v


def _field_value(hint: Any, v: Any) -> Any:
    if isinstance(hint, type) and issubclass(hint, JsonRecord) and isinstance(v, Mapping):
        return hint.from_dict(v)
    if isinstance(v, list):
        kinds = {a for a in get_args(hint) if a is not Ellipsis}
        cast = next(iter(kinds)) if len(kinds) == 1 and next(iter(kinds)) in (int, float, str) else None
        return tuple(cast(x) if cast else x for x in v)
    return v


#: Splits the Kaggle layout knows, in display order.
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class InputSpec(JsonRecord):
    """How an 8-bit grayscale image becomes a model input.

    The same spec is stored in every registry card so that the app feeds a model
    exactly what it was trained on.
    """

    size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    #: Fraction of the (square-resized) image kept by a centre crop; 1.0 keeps all.
    crop_fraction: float = 1.0
    #: Apply CLAHE (contrast-limited adaptive histogram equalisation) before resizing.
    clahe: bool = False
    #: Film-level options (``imaging.film_options``, applied first): paint burnt-in letters over, replace this
    #: fraction of each border by the film's edge inside it, match the grey histogram to these quantiles (evenly
    #: spaced levels 0..1) of the training films' mean histogram. Off by default; cards without them read as off.
    mask_letters: bool = False
    mask_border: float = 0.0
    hist_ref: tuple[float, ...] = ()

    def describe(self) -> str:
        """A short label for cards and pages: size and every preprocessing option that is on."""
        on = {"CLAHE": self.clahe, f"crop {self.crop_fraction:g}": self.crop_fraction < 1.0,
              "letters masked": self.mask_letters, f"border {self.mask_border:.0%} masked": self.mask_border > 0,
              "histogram-matched": bool(self.hist_ref)}
        return " · ".join([f"{self.size} px", *(label for label, used in on.items() if used)])

    def on_prepared(self) -> InputSpec:
        """This spec for images already through ``prepare``: only the resize (a no-op) and normalisation remain, so
        nothing that changes pixels (film options, CLAHE, the crop) runs twice."""
        return replace(self, clahe=False, crop_fraction=1.0, mask_letters=False, mask_border=0.0, hist_ref=())

    def to_dict(self) -> dict[str, Any]:
        # Film options at their defaults are left out: cards and cache keys stay those of specs made before them.
        off = {"mask_letters": False, "mask_border": 0.0, "hist_ref": []}
        return {k: v for k, v in super().to_dict().items() if not (k in off and v == off[k])}


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied to every decoded upload or file."""

    max_bytes: int = 64 * 1024 * 1024
    #: Pixel-count ceiling (decompression-bomb guard).
    max_pixels: int = 50_000_000
    #: Smallest side a chest X-ray can usefully have.
    min_side: int = 32


@dataclass
class AugmentConfig(JsonRecord):
    """Training-time augmentation, applied to uint8 batches on the training device."""

    rotate_deg: float = 7.0
    shift: float = 0.06
    zoom: float = 0.10
    contrast: float = 0.15
    brightness: float = 0.10
    enabled: bool = True


@dataclass
class Paths:
    """Default locations, relative to the working directory unless overridden."""

    registry_env: str = "CXR_REGISTRY"
    registry_default: str = "registry"
    #: Committed release registries, relative to the repository root, and the one served by default.
    release_dir: str = "release"
    release_default: str = "kermany-224"
    #: Per-user settings saved over a read-only (release) registry: ``$CXR_SETTINGS`` or this file.
    settings_env: str = "CXR_SETTINGS"
    settings_default: str = "~/.config/cxr-lens/settings.json"
    demo_data_default: str = "registry/_demo_data"
    extra: dict[str, str] = field(default_factory=dict)
