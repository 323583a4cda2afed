"""Typed model cards: the one place that knows the card's JSON layout.

A registry entry's ``card.json`` stays plain JSON (readable by anyone, diffable, written
atomically by :mod:`cxr_core.registry`). Code reads it through :func:`read_card`, which
returns a :class:`ClassifierCard` or :class:`DetectorCard` with typed fields, defaults for
keys that older cards lack, and the full JSON kept in ``raw`` for what no field names.

Metric sets are keyed by :class:`MetricKey` (split, test-time views, operating point,
source, KNN vote). Its string form is the key stored in the card (``"test"``,
``"test_tta4@youden_val"``, ``"eval:val"``, ``"test_knn_weighted"``): training,
evaluation, the index and the pages build and parse keys only through it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import TASK_CLASSES, InputSpec, normal_class
from .data import Dataset, read_dataset, with_validation_split

_KEY = re.compile(r"^(?P<eval>eval:)?(?P<split>[a-z]+)(?:_tta(?P<tta>\d+))?(?:_knn_(?P<knn>[a-z]+))?(?:@(?P<thr>\w+))?$")

#: Names of the operating points a card may store, as the pages label them.
OPERATING_POINT_LABELS = {"default": "0.5", "argmax": "argmax", "youden_val": "Youden (val)",
                          "sens95_val": "sensitivity ≥ 95 % (val)"}


@dataclass(frozen=True, order=True)
class MetricKey:
    """Which metric set of a card: ``str(key)`` is the card's key, :meth:`parse` reads one back."""

    split: str
    tta: int = 1
    threshold: str | None = None  # a stored operating point ("youden_val", ...); None: the card's default
    source: str = "training"  # "training" or "evaluate" (``python -m train.evaluate``)
    knn: str | None = None  # "majority" / "weighted": the nearest-case vote instead of the head

    def __str__(self) -> str:
        key = ("eval:" if self.source == "evaluate" else "") + self.split
        key += f"_tta{self.tta}" if self.tta > 1 else ""
        key += f"_knn_{self.knn}" if self.knn else ""
        return key + (f"@{self.threshold}" if self.threshold else "")

    @classmethod
    def parse(cls, key: str) -> MetricKey | None:
        """The key a card string stands for; None for a key of another form."""
        m = _KEY.match(key)
        if not m:
            return None
        return cls(m["split"], int(m["tta"] or 1), m["thr"], "evaluate" if m["eval"] else "training", m["knn"])

    def with_(self, **changes: Any) -> MetricKey:
        return replace(self, **changes)


@dataclass(frozen=True)
class DatasetInfo:
    """What a card says about the data it was trained on, and how to rebuild its splits."""

    name: str = ""
    root: str = ""
    fingerprint: str | None = None
    val_fraction: float = 0.1
    val_seed: int = 0
    counts: Mapping[str, Any] = field(default_factory=dict)
    synthetic: bool = False
    layout: str = "kermany"  # cards written before other layouts existed are Kermany

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DatasetInfo:
        d = d or {}
        val = d.get("validation") or {}
        name = str(d.get("name", ""))
        return cls(name, str(d.get("root", "")), d.get("fingerprint"), float(val.get("fraction", 0.1)),
                   int(val.get("seed", 0)), d.get("counts") or {}, bool(d.get("synthetic")) or name.startswith("synthetic"),
                   str(d.get("layout", "kermany")))

    def load(self, root: str | Path | None = None, task: str | None = None) -> Dataset:
        """The dataset with the same patient-level validation split the model was trained with.

        ``task``: the card's task, which names a manifest or folder dataset's task wherever it now lies.
        """
        ds = read_dataset(root or self.root, task=None if task in TASK_CLASSES else task)
        return with_validation_split(ds, self.val_fraction, self.val_seed)


@dataclass(frozen=True)
class Card:
    """Fields every entry's card has."""

    id: str
    kind: str
    task: str | None
    classes: tuple[str, ...]
    architecture: str | None
    input: InputSpec | None
    dataset: DatasetInfo
    threshold: float | None
    threshold_source: str | None
    name: str
    created_at: str | None
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class ClassifierCard(Card):
    """A classifier's card: metric sets by :class:`MetricKey`, thresholds, calibration."""

    num_outputs: int = 1
    embedding_dim: int | None = None
    metrics: Mapping[MetricKey, Mapping[str, Any]] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    has_index: bool = False
    normal_class: str | None = None  # the healthy class; older Kermany cards: NORMAL / normal

    def metric(self, key: MetricKey | str) -> Mapping[str, Any] | None:
        return self.metrics.get(key if isinstance(key, MetricKey) else MetricKey.parse(key))  # type: ignore[arg-type]

    def temperature(self, tta: int = 1) -> float:
        """The validation-fitted temperature for ``tta`` views (1.0 for cards without calibration)."""
        cal = self.calibration
        return float(cal.get(f"temperature_tta{tta}", cal.get("temperature", 1.0)) if tta > 1 else cal.get("temperature", 1.0))


@dataclass(frozen=True)
class DetectorCard(Card):
    """A healthy-only detector or the chest X-ray guard: ``method`` says which kind."""

    method: str = "features"  # "autoencoder", "features", "feature_recon" or "ood"
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def val_auroc(self) -> float | None:
        v = (self.metrics.get("val") or {}).get("auroc")
        return None if v is None else float(v)


def _common(d: Mapping[str, Any]) -> dict[str, Any]:
    task = d.get("task")
    classes = d.get("classes") or TASK_CLASSES.get(str(task), ())
    inp = d.get("input")
    thr = d.get("threshold")
    return {
        "id": str(d.get("id", "")), "kind": str(d.get("kind", "")), "task": task, "classes": tuple(str(c) for c in classes),
        "architecture": d.get("architecture"), "input": InputSpec.from_dict(inp) if isinstance(inp, Mapping) else None,
        "dataset": DatasetInfo.from_dict(d.get("dataset")), "threshold": None if thr is None else float(thr),
        "threshold_source": d.get("threshold_source"), "name": str(d.get("name") or d.get("id", "")),
        "created_at": d.get("created_at"), "raw": d,
    }


def _detector_method(d: Mapping[str, Any]) -> str:
    if d.get("kind") == "autoencoder":
        return "autoencoder"
    if d.get("task") == "ood":
        return "ood"
    return "feature_recon" if "feature_recon" in d else "features"


def read_card(d: Mapping[str, Any]) -> ClassifierCard | DetectorCard:
    """The typed form of a card dict; keys older cards lack get their defaults."""
    common = _common(d)
    if d.get("kind") == "classifier":
        metrics = {k: v for key, v in (d.get("metrics") or {}).items() if (k := MetricKey.parse(key)) and isinstance(v, Mapping)}
        return ClassifierCard(
            **common, num_outputs=int(d.get("num_outputs", 1)), embedding_dim=d.get("embedding_dim"), metrics=metrics,
            thresholds=dict(d.get("thresholds") or {}), calibration=dict(d.get("calibration") or {}),
            recipe=d.get("recipe"), has_index=bool(d.get("index")),
            normal_class=d.get("normal_class", normal_class(common["classes"])),
        )
    return DetectorCard(**common, method=_detector_method(d), metrics=dict(d.get("metrics") or {}))
