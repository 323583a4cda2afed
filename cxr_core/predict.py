"""One call from a decoded image to what the Predict page shows.

``Predictor`` holds the registry's classifiers (binary and 3-class) and turns a
grayscale image into a ``Prediction``: label and probabilities per task, the
embedding for neighbour search and map placement, and per-stage timings. Other
capabilities (neighbours, anomaly score, Grad-CAM) attach to the same object so
that the page makes one call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .inference import LoadedClassifier, infer, load_classifier
from .preprocess import prepare
from .registry import EntryStatus, list_entries, select


@dataclass
class TaskResult:
    """One classifier's answer for one image."""

    task: str
    entry_id: str
    classes: list[str]
    probs: list[float]
    label: str
    confidence: float
    threshold: float
    tta: int

    @property
    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.classes, self.probs, strict=True))


@dataclass
class Prediction:
    """Everything computed for one image."""

    results: dict[str, TaskResult]
    embedding: np.ndarray | None  # L2-normalised penultimate features of the binary model (or 3-class)
    embedding_entry: str | None
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    #: Per task, the plain view's final feature map (1, C, h, w): Grad-CAM's input at the default
    #: layer, so the page explains without running the network again.
    feature_maps: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def decide(task: str, classes: list[str], probs: np.ndarray, threshold: float) -> tuple[str, float]:
    """The label shown for ``probs``: the binary task uses the card's threshold on P(pneumonia)."""
    if task == "binary":
        idx = int(probs[1] >= threshold)
    else:
        idx = int(np.argmax(probs))
    return classes[idx], float(probs[idx])


class Predictor:
    """The registry's classifiers, loaded once, applied to one image at a time."""

    def __init__(self, classifiers: dict[str, LoadedClassifier]):
        self.classifiers = classifiers

    @classmethod
    def from_registry(cls, root: str | None = None, statuses: list[EntryStatus] | None = None) -> Predictor:
        statuses = statuses if statuses is not None else list_entries(root)
        loaded: dict[str, LoadedClassifier] = {}
        for task in ("binary", "multiclass"):
            entry = select(statuses, "classifier", task)
            if entry is not None:
                loaded[task] = load_classifier(entry)
        return cls(loaded)

    @property
    def tasks(self) -> list[str]:
        return list(self.classifiers)

    def embedding_model(self) -> LoadedClassifier | None:
        return self.classifiers.get("binary") or self.classifiers.get("multiclass")

    @torch.inference_mode()
    def predict(self, gray: np.ndarray, tta: int = 1) -> Prediction:
        results: dict[str, TaskResult] = {}
        timings: dict[str, float] = {}
        embedding, emb_entry = None, None
        feature_maps: dict[str, torch.Tensor] = {}
        emb_model = self.embedding_model()
        for task, clf in self.classifiers.items():
            t0 = time.perf_counter()
            x = prepare(gray, clf.spec)
            t1 = time.perf_counter()
            want = clf is emb_model
            kept: list[torch.Tensor] = []
            probs, emb = infer(clf.model, x[None], clf.spec, task, tta=tta, want_embeddings=True, keep_features=kept)
            if kept:
                feature_maps[task] = kept[0]
            t2 = time.perf_counter()
            label, conf = decide(task, clf.classes, probs[0], clf.threshold)
            results[task] = TaskResult(task, clf.entry.id, clf.classes, [float(p) for p in probs[0]], label, conf, clf.threshold, tta)
            timings[f"preprocess_{task}"] = t1 - t0
            timings[f"classify_{task}"] = t2 - t1
            if want and emb is not None:
                v = emb[0].astype(np.float32)
                embedding, emb_entry = v / max(float(np.linalg.norm(v)), 1e-12), clf.entry.id
        return Prediction(results, embedding, emb_entry, timings, feature_maps=feature_maps)
