"""Classification metrics for cards, evaluation and the app.

Thin wrappers over scikit-learn that return plain JSON-ready dicts, plus the
expected calibration error (ECE), which scikit-learn lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def predicted_class(task: str, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The class shown for each row of ``probs`` (N, C): the binary task puts the card's threshold on
    P(positive); every other task takes the most probable class. The one rule the app, the index and
    the metrics share."""
    probs = np.asarray(probs)
    if task == "binary":
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: mean |accuracy - confidence| over equal-width confidence bins."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    correct = (pred == np.asarray(y)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def binary_metrics(y: np.ndarray, p_pos: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics for a positive-class probability (PNEUMONIA = 1) at ``threshold``."""
    y = np.asarray(y).astype(int)
    p_pos = np.asarray(p_pos, dtype=np.float64)
    pred = (p_pos >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    probs2 = np.stack([1 - p_pos, p_pos], axis=1)
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": float((tp + tn) / max(len(y), 1)),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else 0.0,
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auroc": float(roc_auc_score(y, p_pos)) if both else None,
        "aupr": float(average_precision_score(y, p_pos)) if both else None,
        "ece": expected_calibration_error(probs2, y),
        "confusion": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, one-vs-rest AUROC, per-class accuracy, confusion, ECE."""
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    cm = confusion_matrix(y, pred, labels=labels)
    per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    try:
        auroc = float(roc_auc_score(y, probs, multi_class="ovr", labels=labels))
    except ValueError:
        auroc = None
    # Pneumonia-vs-normal view of the 3-class model, comparable with the binary task.
    p_pneu = probs[:, 1:].sum(axis=1)
    y_pneu = (y > 0).astype(int)
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "precision_macro": float(precision_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "recall_macro": float(recall_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auroc_ovr": auroc,
        "per_class_accuracy": per_class,
        "confusion": cm.tolist(),
        "ece": expected_calibration_error(probs, y),
        "pneumonia_vs_normal_auroc": float(roc_auc_score(y_pneu, p_pneu)) if len(np.unique(y_pneu)) == 2 else None,
    }


def task_metrics(task: str, y: np.ndarray, probs: np.ndarray, classes: list[str] | tuple[str, ...], threshold: float = 0.5) -> dict[str, Any]:
    """``binary_metrics`` on column 1 for the binary task, ``multiclass_metrics`` otherwise."""
    if task == "binary":
        return binary_metrics(y, np.asarray(probs)[:, 1], threshold)
    return multiclass_metrics(y, probs, classes)


def youden_threshold(y: np.ndarray, p_pos: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J)."""
    fpr, tpr, thr = roc_curve(np.asarray(y).astype(int), np.asarray(p_pos, dtype=np.float64))
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(max(thr[best], 0.0), 1.0))


def roc_points(y: np.ndarray, scores: np.ndarray, max_points: int = 400) -> dict[str, list[float]]:
    """ROC curve thinned to ``max_points`` for storage in a card and plotting."""
    fpr, tpr, thr = roc_curve(np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64))
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    thr = np.where(np.isfinite(thr), thr, np.nan)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [None if np.isnan(t) else float(t) for t in thr]}
