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
    used: Mapping[str, int] = field(default_factory=dict)  # images per split the entry used
    train_labels: tuple[str, ...] = ()  # detectors: the labels they were fitted on
    skipped: int | None = None  # files the reader could not use

    @classmethod
    def of(cls, ds: Dataset, used: Mapping[str, int], val_fraction: float, val_seed: int, *,
           train_labels: tuple[str, ...] = (), synthetic: bool = False) -> DatasetInfo:
        """The record of a dataset as read now (training and detector fitting write this)."""
        return cls("synthetic-demo" if synthetic else ds.name, str(Path(ds.root).resolve()), ds.fingerprint(),
                   val_fraction, val_seed, ds.counts(), synthetic, ds.layout, dict(used), tuple(train_labels),
                   len(ds.skipped))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DatasetInfo:
        d = d or {}
        val = d.get("validation") or {}
        name = str(d.get("name", ""))
        skipped = d.get("skipped")
        return cls(name, str(d.get("root", "")), d.get("fingerprint"), float(val.get("fraction", 0.1)),
                   int(val.get("seed", 0)), d.get("counts") or {}, bool(d.get("synthetic")) or name.startswith("synthetic"),
                   str(d.get("layout", "kermany")), dict(d.get("used") or {}), tuple(d.get("train_labels") or ()),
                   None if skipped is None else int(skipped))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "root": self.root, "counts": dict(self.counts), "used": dict(self.used),
            "fingerprint": self.fingerprint, "validation": {"fraction": self.val_fraction, "seed": self.val_seed, "by": "patient"},
            "layout": self.layout,
        }
        d |= {"skipped": self.skipped} if self.skipped is not None else {}
        d |= {"train_labels": list(self.train_labels)} if self.train_labels else {}
        return d | ({"synthetic": True} if self.synthetic else {})

    def load(self, root: str | Path | None = None, task: str | None = None) -> Dataset:
        """The dataset with the same patient-level validation split the model was trained with.

        ``task``: the card's task, which names a manifest or folder dataset's task wherever it now lies.
        """
        ds = read_dataset(root or self.root, task=None if task in TASK_CLASSES else task)
        return with_validation_split(ds, self.val_fraction, self.val_seed)


#: Keys the typed fields stand for; anything else in a card is kept verbatim in ``extra``.
_COMMON_KEYS = ("schema_version", "id", "kind", "task", "classes", "normal_class", "architecture", "pretrained",
                "pretrained_source", "input", "dataset", "threshold", "threshold_source", "thresholds", "training",
                "name", "notes", "created_at", "code_version", "files", "default")


@dataclass(frozen=True)
class Card:
    """Fields every entry's card has. Writers build a typed card and store :meth:`to_dict`."""

    kind: str
    id: str = ""
    task: str | None = None
    classes: tuple[str, ...] = ()
    normal_class: str | None = None  # the healthy class; older Kermany cards: NORMAL / normal
    architecture: str | None = None
    pretrained: bool | None = None
    pretrained_source: str | None = None
    input: InputSpec | None = None
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    threshold: float | None = None
    #: Classifiers: the name of the stored operating point in use; detectors: {"name", "split", "note"}.
    threshold_source: str | Mapping[str, Any] | None = None
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)  # the run's arguments, timings, device, history
    name: str = ""
    notes: str | None = None
    created_at: str | None = None
    code_version: str | None = None
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # filled in by the registry
    default: bool = False  # the entry the app uses for its (kind, task) even when a newer one exists
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys no field names, written back as they were
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.dataset.synthetic

    @property
    def label(self) -> str:
        """The name the pages show: the card's own, else its id."""
        return self.name or self.id

    def has(self, name: str) -> bool:
        return name in self.files

    def split_metrics(self, split: str) -> Mapping[str, Any]:
        """The plain metric set of ``split`` (classifiers: no TTA, the threshold in use); empty if none."""
        return {}

    def threshold_or(self, default: float) -> float:
        """The threshold in use, or ``default`` for a card that stores none."""
        return default if self.threshold is None else self.threshold

    def file_sha256(self, name: str) -> str | None:
        return (self.files.get(name) or {}).get("sha256")

    def to_dict(self) -> dict[str, Any]:
        """The card's JSON (what :func:`read_card` reads back)."""
        return self._common_dict()

    def _common_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.extra, "kind": self.kind, "task": self.task, "classes": list(self.classes),
                             "name": self.name or self.id}
        optional = {"id": self.id or None, "normal_class": self.normal_class, "architecture": self.architecture,
                    "pretrained": self.pretrained, "pretrained_source": self.pretrained_source,
                    "input": self.input.to_dict() if self.input else None, "threshold": self.threshold,
                    "threshold_source": self.threshold_source, "notes": self.notes, "created_at": self.created_at,
                    "code_version": self.code_version, "default": self.default or None}
        d |= {k: v for k, v in optional.items() if v is not None}
        d |= {k: dict(v) for k, v in (("thresholds", self.thresholds), ("training", self.training), ("files", self.files)) if v}
        return d | {"dataset": self.dataset.to_dict()}


#: Classifier keys the typed fields stand for.
_CLASSIFIER_KEYS = ("num_outputs", "embedding_dim", "metrics", "curves", "calibration", "recipe", "index", "lung_focus",
                    "drop_rate", "weights_base", "evaluations", "release_check")


@dataclass(frozen=True)
class ClassifierCard(Card):
    """A classifier's card: metric sets by :class:`MetricKey`, thresholds, calibration."""

    kind: str = "classifier"
    num_outputs: int = 1
    embedding_dim: int | None = None
    metrics: Mapping[MetricKey, Mapping[str, Any]] = field(default_factory=dict)
    curves: Mapping[str, Any] = field(default_factory=dict)  # ROC points per split (3-class: per class)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    index: Mapping[str, Any] = field(default_factory=dict)  # what train.index built (cxr_core.reference)
    lung_focus: Mapping[str, Any] | None = None
    drop_rate: float = 0.2
    weights_base: Mapping[str, Any] | None = None  # compact (release) entries: which stages are ImageNet's, from where
    evaluations: tuple[Mapping[str, Any], ...] = ()  # one record per ``python -m train.evaluate`` run stored
    release_check: Mapping[str, Any] = field(default_factory=dict)  # release copies: what train.release verified

    @property
    def has_index(self) -> bool:
        return bool(self.index)

    def split_metrics(self, split: str) -> Mapping[str, Any]:
        return self.metrics.get(MetricKey(split)) or {}

    def metric(self, key: MetricKey | str) -> Mapping[str, Any] | None:
        return self.metrics.get(key if isinstance(key, MetricKey) else MetricKey.parse(key))  # type: ignore[arg-type]

    def temperature(self, tta: int = 1) -> float:
        """The validation-fitted temperature for ``tta`` views (1.0 for cards without calibration)."""
        cal = self.calibration
        return float(cal.get(f"temperature_tta{tta}", cal.get("temperature", 1.0)) if tta > 1 else cal.get("temperature", 1.0))

    def with_index(self, index: Mapping[str, Any], knn_metrics: Mapping[MetricKey, Mapping[str, Any]]) -> ClassifierCard:
        """The card after a (re)built reference index: its section, and KNN metric sets replacing earlier ones."""
        kept = {k: v for k, v in self.metrics.items() if not k.knn}
        return replace(self, index=dict(index), metrics=kept | dict(knn_metrics))

    def with_evaluation(self, metrics: Mapping[MetricKey, Mapping[str, Any]], record: Mapping[str, Any]) -> ClassifierCard:
        """The card after a stored evaluation: its metric sets (replacing same keys) and its record."""
        return replace(self, metrics={**self.metrics, **metrics}, evaluations=(*self.evaluations, dict(record)))

    def to_dict(self) -> dict[str, Any]:
        """The card's JSON (what :func:`read_card` reads back)."""
        d = self._common_dict() | {"num_outputs": self.num_outputs, "drop_rate": self.drop_rate,
                                   "metrics": {str(k): dict(v) for k, v in self.metrics.items()}}
        optional = {"embedding_dim": self.embedding_dim, "recipe": self.recipe, "lung_focus": self.lung_focus,
                    "weights_base": self.weights_base}
        d |= {k: v for k, v in optional.items() if v is not None}
        d |= {"evaluations": [dict(e) for e in self.evaluations]} if self.evaluations else {}
        sections = (("curves", self.curves), ("calibration", self.calibration), ("index", self.index),
                    ("release_check", self.release_check))
        return d | {k: dict(v) for k, v in sections if v}


#: Which section holds each detector method's configuration.
_CONFIG_KEY = {"autoencoder": "autoencoder", "features": "features", "feature_recon": "feature_recon", "ood": "features"}
_DETECTOR_KEYS = ("detector", "family", "score", "score_direction", "metrics", "metrics_at_threshold", "histograms",
                  "map_scale", "map_grid", "autoencoder", "features", "feature_recon", "cheap_checks", "false_alarm_rate")


@dataclass(frozen=True)
class DetectorCard(Card):
    """A healthy-only detector or the chest X-ray guard: ``method`` says which kind."""

    kind: str = "detector"
    method: str = "features"  # "autoencoder", "features", "feature_recon" or "ood"
    detector: str | None = None  # the fitted variant, e.g. "features-mahalanobis"
    family: str | None = None  # as the pages name it ("feature reconstruction", ...); None: derived from method
    score: str | None = None  # one line: what the score measures
    score_direction: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)  # the method's configuration section
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by split
    metrics_at_threshold: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    histograms: Mapping[str, Any] = field(default_factory=dict)  # by split (cxr_core.thresholds.histogram_data)
    map_scale: float | None = None  # feature reconstruction: the error drawn at full colour
    map_grid: int | None = None
    cheap_checks: Mapping[str, Any] = field(default_factory=dict)  # the OOD guard's checks before its network
    false_alarm_rate: Mapping[str, float] = field(default_factory=dict)  # the OOD guard: real films flagged per split

    @property
    def val_auroc(self) -> float | None:
        return self.auroc("val")

    def split_metrics(self, split: str) -> Mapping[str, Any]:
        return self.metrics.get(split) or {}

    def auroc(self, split: str) -> float | None:
        v = (self.metrics.get(split) or {}).get("auroc")
        return None if v is None else float(v)

    @property
    def has_map(self) -> bool:
        """Whether the detector draws a per-position anomaly map (feature reconstruction)."""
        return self.method == "feature_recon"

    def to_dict(self) -> dict[str, Any]:
        """The card's JSON (what :func:`read_card` reads back)."""
        d = self._common_dict() | {"metrics": {k: dict(v) for k, v in self.metrics.items()}}
        optional = {"detector": self.detector, "family": self.family, "score": self.score,
                    "score_direction": self.score_direction, "map_scale": self.map_scale, "map_grid": self.map_grid}
        d |= {k: v for k, v in optional.items() if v is not None}
        sections = (("metrics_at_threshold", self.metrics_at_threshold), ("histograms", self.histograms),
                    ("cheap_checks", self.cheap_checks), ("false_alarm_rate", self.false_alarm_rate))
        d |= {k: dict(v) for k, v in sections if v}
        return d | ({_CONFIG_KEY[self.method]: dict(self.config)} if self.config else {})


def _common(d: Mapping[str, Any], typed: tuple[str, ...]) -> dict[str, Any]:
    task = d.get("task")
    classes = tuple(str(c) for c in (d.get("classes") or TASK_CLASSES.get(str(task), ())))
    inp, thr = d.get("input"), d.get("threshold")
    return {
        "id": str(d.get("id", "")), "kind": str(d.get("kind", "")), "task": task, "classes": classes,
        "normal_class": d.get("normal_class", normal_class(classes)), "architecture": d.get("architecture"),
        "pretrained": d.get("pretrained"), "pretrained_source": d.get("pretrained_source"),
        "input": InputSpec.from_dict(inp) if isinstance(inp, Mapping) else None,
        "dataset": DatasetInfo.from_dict(d.get("dataset")), "threshold": None if thr is None else float(thr),
        "threshold_source": d.get("threshold_source"), "thresholds": dict(d.get("thresholds") or {}),
        "training": dict(d.get("training") or {}), "name": str(d.get("name") or d.get("id", "")),
        "notes": d.get("notes"), "created_at": d.get("created_at"), "code_version": d.get("code_version"),
        "files": dict(d.get("files") or {}), "default": bool(d.get("default")), "raw": d,
        "extra": {k: v for k, v in d.items() if k not in _COMMON_KEYS and k not in typed},
    }


def _detector_method(d: Mapping[str, Any]) -> str:
    if d.get("kind") == "autoencoder":
        return "autoencoder"
    if d.get("task") == "ood":
        return "ood"
    return "feature_recon" if "feature_recon" in d else "features"


def _read_classifier(d: Mapping[str, Any]) -> ClassifierCard:
    metrics = {k: v for key, v in (d.get("metrics") or {}).items() if (k := MetricKey.parse(key)) and isinstance(v, Mapping)}
    emb, focus = d.get("embedding_dim"), d.get("lung_focus")
    return ClassifierCard(
        **_common(d, _CLASSIFIER_KEYS), num_outputs=int(d.get("num_outputs", 1)),
        embedding_dim=None if emb is None else int(emb), metrics=metrics, curves=dict(d.get("curves") or {}),
        calibration=dict(d.get("calibration") or {}), recipe=d.get("recipe"), index=dict(d.get("index") or {}),
        lung_focus=focus if isinstance(focus, Mapping) else None, drop_rate=float(d.get("drop_rate", 0.2)),
        weights_base=d.get("weights_base") if isinstance(d.get("weights_base"), Mapping) else None,
        evaluations=tuple(e for e in d.get("evaluations") or () if isinstance(e, Mapping)),
        release_check=dict(d.get("release_check") or {}),
    )


def _read_detector(d: Mapping[str, Any]) -> DetectorCard:
    method = _detector_method(d)
    scale, grid = d.get("map_scale"), d.get("map_grid")
    return DetectorCard(
        **_common(d, _DETECTOR_KEYS), method=method, detector=d.get("detector"), family=d.get("family"),
        score=d.get("score"), score_direction=d.get("score_direction"), config=dict(d.get(_CONFIG_KEY[method]) or {}),
        metrics={k: v for k, v in (d.get("metrics") or {}).items() if isinstance(v, Mapping)},
        metrics_at_threshold=dict(d.get("metrics_at_threshold") or {}), histograms=dict(d.get("histograms") or {}),
        map_scale=None if scale is None else float(scale), map_grid=None if grid is None else int(grid),
        cheap_checks=dict(d.get("cheap_checks") or {}), false_alarm_rate=dict(d.get("false_alarm_rate") or {}),
    )


def read_card(d: Mapping[str, Any]) -> ClassifierCard | DetectorCard:
    """The typed form of a card dict; keys older cards lack get their defaults."""
    return _read_classifier(d) if d.get("kind") == "classifier" else _read_detector(d)
