"""The Explain page's gallery: a classifier's verdict on every image of a split, filtered and sorted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..cards import Card
from ..data import DatasetError, load_images
from ..inference import infer
from ..predict import decide
from ..preprocess import prepare


@dataclass(frozen=True)
class GalleryItem:
    """One dataset image with the model's verdict, for the Explain gallery."""

    path: str  #: relative to the dataset root
    truth: int
    pred: int
    confidence: float  #: probability of the predicted class
    probs: tuple[float, ...]

    @property
    def correct(self) -> bool:
        return self.truth == self.pred


def card_dataset(card: Card) -> Any:
    """The dataset a classifier card was trained on, split exactly as in training.

    Raises ``data.DatasetError`` (with a clear message) when the folder is missing.
    """
    if not card.dataset.root:
        raise DatasetError("the model card does not record its dataset folder")
    return card.dataset.load(task=card.task)


def predict_split(
    clf: Any, dataset: Any, split: str, progress: Callable[[int, int], None] | None = None
) -> list[GalleryItem]:
    """Predictions of a ``LoadedClassifier`` for every image of ``split`` (the card's threshold for binary)."""
    samples = dataset.split(split)
    if not samples:
        return []
    arr = load_images(dataset, samples, lambda g: prepare(g, clf.spec), progress=progress)
    probs, _ = infer(clf.model, arr, clf.spec, clf.task, want_embeddings=False)
    items = []
    for s, p in zip(samples, probs, strict=True):
        label, conf = decide(clf.task, clf.classes, p, clf.threshold)
        items.append(GalleryItem(s.path, s.target(clf.task), clf.classes.index(label), conf, tuple(float(v) for v in p)))
    return items


def select_items(
    items: Sequence[GalleryItem],
    *,
    correctness: str = "all",
    true_class: int | None = None,
    pred_class: int | None = None,
    order: str = "confidence_desc",
) -> list[GalleryItem]:
    """Filter (all | correct | incorrect, true / predicted class) and sort (confidence_desc | confidence_asc | path)."""
    if correctness not in ("all", "correct", "incorrect"):
        raise ValueError(f"correctness must be all, correct or incorrect, got {correctness!r}")
    out = [
        it for it in items
        if (correctness == "all" or it.correct == (correctness == "correct"))
        and (true_class is None or it.truth == true_class)
        and (pred_class is None or it.pred == pred_class)
    ]
    if order == "confidence_desc":
        out.sort(key=lambda it: (-it.confidence, it.path))
    elif order == "confidence_asc":
        out.sort(key=lambda it: (it.confidence, it.path))
    elif order == "path":
        out.sort(key=lambda it: it.path)
    else:
        raise ValueError(f"unknown order {order!r}")
    return out
