"""Calibration and operating points chosen on validation.

Temperature scaling (one scalar per model and view count, fitted on the validation split by
log-loss), the fixed-sensitivity operating point, and the reliability diagram the Models &
data page draws. Thresholds stay on the raw probabilities; :func:`calibrated_threshold` maps
one onto the calibrated scale the app shows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: np.ndarray, y: np.ndarray, task: str, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the validation log-loss of ``logits / T`` (Guo et al. 2017).

    ``logits`` is (N, 1) or (N,) for binary (the P(PNEUMONIA) logit), (N, C) otherwise. A 1-D
    search over log T (golden section on a bracket, then refined); T > 1 softens over-confident
    probabilities, it never changes a ranking or an argmax, so AUROC and accuracy stay as they were.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(y).astype(np.int64))
    if task == "binary":
        z = z.reshape(-1)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        if task == "binary":
            return float(F.binary_cross_entropy_with_logits(s, t.double()))
        return float(F.cross_entropy(s, t))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    grid = np.linspace(lo, hi, 61)
    losses = [nll(g) for g in grid]
    i = int(np.argmin(losses))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if nll(c) < nll(d):
            b = d
        else:
            a = c
    return float(math.exp((a + b) / 2))


def fixed_sensitivity_threshold(y: np.ndarray, p_pos: np.ndarray, sensitivity: float = 0.95) -> float:
    """The highest threshold whose sensitivity on (y, p_pos) is at least ``sensitivity`` (``p >= thr`` is positive).

    Chosen on validation, it is the operating point that misses at most 1 - ``sensitivity`` of the
    pneumonias there while calling as few normals positive as that allows.
    """
    y = np.asarray(y).astype(int)
    pos = np.sort(np.asarray(p_pos, dtype=np.float64)[y == 1])
    if len(pos) == 0:
        return 0.5
    k = int(math.floor((1.0 - sensitivity) * len(pos) + 1e-9))  # positives that may fall below the threshold
    return float(pos[min(k, len(pos) - 1)])


def probs_to_logits(probs: np.ndarray, task: str) -> np.ndarray:
    """Logits that reproduce ``probs`` (binary: logit of P(PNEUMONIA), (N,); else log-probabilities, (N, C))."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    if task == "binary":
        return np.log(p[:, 1]) - np.log1p(-p[:, 1])
    return np.log(p)


def apply_temperature(probs: np.ndarray, task: str, temperature: float) -> np.ndarray:
    """Probabilities (N, C) recalibrated by a temperature: softmax(logits / T) (binary: sigmoid)."""
    z = probs_to_logits(probs, task) / float(temperature)
    if task == "binary":
        p1 = 1.0 / (1.0 + np.exp(-z))
        return np.stack([1 - p1, p1], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrated_threshold(threshold: float, temperature: float) -> float:
    """A threshold on raw P(PNEUMONIA) expressed on the temperature-scaled probability (same decisions)."""
    t = min(max(float(threshold), 1e-7), 1 - 1e-7)
    return float(1.0 / (1.0 + math.exp(-math.log(t / (1 - t)) / float(temperature))))


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """Top-label reliability diagram: per equal-width confidence bin, its mean confidence, accuracy and count
    (the bins of ``metrics.expected_calibration_error``; empty bins are kept with None)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list] = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = idx == b
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
        out["count"].append(int(m.sum()))
    return out


def reliability_by_split(probs: np.ndarray, targets: np.ndarray, splits: np.ndarray, task: str, temperature: float,
                         wanted: tuple[str, ...] = ("val", "test")) -> dict[str, dict[str, dict[str, list]]]:
    """Per split, the reliability diagram of the raw and the temperature-scaled probabilities.

    For cards written before training stored the diagrams: the embedding index keeps every image's
    probabilities, target and split, which is all the diagram needs.
    """
    out = {}
    for split in wanted:
        rows = np.asarray(splits) == split
        if rows.any():
            out[split] = reliability_pair(np.asarray(probs)[rows], np.asarray(targets)[rows], task, temperature)
    return out


def reliability_pair(probs: np.ndarray, y: np.ndarray, task: str, temperature: float) -> dict[str, dict[str, list]]:
    """The reliability diagram of ``probs`` as they are (``raw``) and temperature-scaled (``calibrated``)."""
    return {"raw": reliability(probs, y), "calibrated": reliability(apply_temperature(probs, task, temperature), y)}

