"""Training classifiers into the registry.

``train_classifier(TrainConfig)`` is what ``python -m train.classifier`` runs:
decode every image once into a uint8 cache on the training device, augment on the
device, bf16 autocast and channels_last on CUDA, select the epoch on the
patient-level validation split, evaluate on the test split (plain and TTA) and
write a registry entry whose card records every choice.

Multi-GPU: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank trains on its shard of
every epoch's batches through DistributedDataParallel (NCCL on CUDA, gloo on CPU);
rank 0 evaluates and writes the entry.

CPU budget mode (``freeze_stages`` > 0): the leading backbone stages keep their
pretrained weights and run once per image and view (``train_views`` augmented copies
for training, the TTA views for validation and test); only the remaining stages and
the head train, on those cached features. This is the transfer-learning recipe of
Kermany et al. (frozen convolutional trunk) and makes a run fit a few CPU cores. The
cache can be kept on disk (``feature_cache``) so that the binary and the 3-class run
share it. The entry is a complete model either way.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TASK_CLASSES, AugmentConfig, InputSpec
from .data import Dataset, check_patient_leakage, load_images, read_dataset, with_validation_split
from .metrics import binary_metrics, roc_points, task_metrics, youden_threshold
from .models import model_stages as _stages
from .preprocess import augment, normalize, prepare, to_float, tta_views

BALANCE_CHOICES = ("none", "oversample", "undersample", "class-weights")
OPTIMIZERS = ("adamw", "rmsprop")
SCHEDULES = ("cosine", "exponential", "none")
#: What picks the saved epoch: the task's score (AUROC / accuracy, log-loss breaking ties) or the log-loss alone.
SELECTIONS = ("score", "log_loss")
#: Binary operating points chosen on validation; the card stores all and puts one in use.
OPERATING_POINTS = ("default", "youden_val", "sens95_val")

#: Named training presets (``--recipe NAME``): TrainConfig fields, measured in docs/RESULTS.md (issue 14).
#: ``cpu-baseline`` is the 2-core recipe of 2026-11 (160 px, six frozen stages). The others are the
#: levers of issue 14 measured against it; ``cpu-best`` is the one chosen on validation.
RECIPES: dict[str, dict[str, Any]] = {
    "cpu-baseline": {
        "size": 160, "freeze_stages": 6, "train_views": 2, "epochs": 8, "lr": 1e-3, "label_smoothing": 0.1,
        "patience": 4, "device": "cpu",
    },
    "cpu-224": {
        "size": 224, "freeze_stages": 6, "train_views": 2, "epochs": 8, "lr": 1e-3, "label_smoothing": 0.1,
        "patience": 4, "device": "cpu",
    },
}
#: No measured lever beat cpu-baseline on validation (docs/RESULTS.md, issue 14): the best recipe trains the
#: baseline and puts the validation-chosen sensitivity >= 95 % threshold in use (binary; Youden and 0.5 stay stored).
RECIPES["cpu-best"] = {**RECIPES["cpu-baseline"], "operating_point": "sens95_val"}
#: One line per recipe for ``train.classifier --help``.
RECIPE_NOTES: dict[str, str] = {
    "cpu-baseline": "the 2-core recipe of 2026-11: lite0, 160 px, six frozen stages, two cached training views",
    "cpu-224": "lever: the data's own 224 px (frozen features cost ~2x; with the tail from stage 7 its validation AUROC was 0.9961 against 0.9985 at 160 px, docs/RESULTS.md)",
    "cpu-best": "cpu-baseline with the binary threshold at validation sensitivity >= 95 % in use (issue 14's winner)",
}


def recipe_fields(name: str) -> dict[str, Any]:
    """A copy of preset ``name``'s fields (nested augmentation settings copied too)."""
    return copy.deepcopy(RECIPES[name])


@dataclass
class TrainConfig:
    """Every knob of a training run; stored verbatim in the card."""

    data: str
    task: str = "binary"
    out: str | None = None  # registry root
    architecture: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | rmsprop
    schedule: str = "cosine"  # cosine | exponential | none
    gamma: float = 0.9  # exponential decay per epoch
    warmup_epochs: float = 0.5
    balance: str = "class-weights"
    label_smoothing: float = 0.0
    patience: int = 6  # epochs without validation improvement before stopping
    #: "score": validation AUROC (binary) / accuracy (3-class), ties broken by the log-loss;
    #: "log_loss": the log-loss alone, for a validation split too small for the score to move
    #: (the demo's 45 images saturate AUROC by epoch 4; see ``_selection_key``).
    selection: str = "score"
    val_fraction: float = 0.1
    seed: int = 0
    tta: int = 4
    size: int = 224
    clahe: bool = False
    crop_fraction: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"
    max_per_split: int | None = None  # cap images per split for quick CPU runs
    entry_id: str | None = None
    notes: str = ""
    #: Leading backbone stages kept frozen (0 = fine-tune everything); see the module docstring.
    freeze_stages: int = 0
    #: Augmented views per training image cached when stages are frozen (view 0 is the plain image).
    train_views: int = 2
    #: Folder keeping frozen-stage features between runs (None = recompute).
    feature_cache: str | None = None
    #: torch CPU threads (None = torch's default, divided between ranks under torchrun on CPU).
    threads: int | None = None
    #: The named preset (``RECIPES``) this configuration started from, recorded in the card.
    recipe: str | None = None
    #: Binary: the threshold the card puts in use ("threshold"): "default" (0.5), "youden_val" or
    #: "sens95_val" (the highest threshold keeping validation sensitivity >= 0.95). All are stored.
    operating_point: str = "default"
    #: Official-test films on which HiResCAM's peak / mass inside the lung box is measured (0 = skip).
    lung_focus_films: int = 80

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """A configuration from a named preset of ``RECIPES``, with ``overrides`` on top."""
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
        kw = {**recipe_fields(name), **overrides}
        if isinstance(kw.get("augment"), dict):
            kw["augment"] = AugmentConfig(**kw["augment"])
        return cls(**kw, recipe=name)

    def spec(self, mean: tuple[float, ...], std: tuple[float, ...]) -> InputSpec:
        return InputSpec(size=self.size, mean=mean, std=std, crop_fraction=self.crop_fraction, clahe=self.clahe)

    def validate(self) -> None:
        """Raise ``ValueError`` for a combination that cannot run, before any work is done."""
        from .preprocess import TTA_VIEWS

        if self.task not in TASK_CLASSES:
            raise ValueError(f"task must be one of {list(TASK_CLASSES)}")
        if self.balance not in BALANCE_CHOICES:
            raise ValueError(f"balance must be one of {BALANCE_CHOICES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}")
        if not 1 <= self.tta <= len(TTA_VIEWS):
            raise ValueError(f"tta must be between 1 and {len(TTA_VIEWS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label smoothing must be in [0, 1)")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError("crop fraction must be in (0, 1]")
        if self.freeze_stages < 0 or self.train_views < 1:
            raise ValueError("freeze_stages must be >= 0 and train_views >= 1")
        if self.operating_point not in OPERATING_POINTS:
            raise ValueError(f"operating_point must be one of {OPERATING_POINTS}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; expected one of {sorted(RECIPES)}")
        if self.freeze_stages and not self.pretrained:
            raise ValueError("freezing stages of a randomly initialised network makes no sense: drop --freeze-stages")


Progress = Callable[[str, int, int], None]


def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _subsample(samples: list, cap: int | None, seed: int) -> list:
    if cap is None or len(samples) <= cap:
        return samples
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(samples), size=cap, replace=False))
    return [samples[i] for i in keep]


def epoch_indices(y: np.ndarray, balance: str, rng: np.random.Generator) -> np.ndarray:
    """The training indices of one epoch under the chosen class-balance policy."""
    n = len(y)
    if balance in ("none", "class-weights"):
        return rng.permutation(n)
    classes, counts = np.unique(y, return_counts=True)
    target = counts.max() if balance == "oversample" else counts.min()
    parts = [
        rng.choice(np.flatnonzero(y == c), size=target, replace=balance == "oversample" and cnt < target)
        for c, cnt in zip(classes, counts, strict=True)
    ]
    return rng.permutation(np.concatenate(parts))


def shard_batches(idx: np.ndarray, batch_size: int, world: int, rank: int) -> list[np.ndarray]:
    """This rank's part of every global batch of one epoch.

    The epoch is padded (wrapping around, as DistributedSampler does) to a multiple of
    ``world`` so that every rank gets the same number of non-empty batches: a rank
    that skipped a step would leave the others waiting in the gradient all-reduce.
    """
    if world > 1 and len(idx) % world:
        idx = np.concatenate([idx, idx[: world - len(idx) % world]])
    step = batch_size * world
    return [idx[b : b + step][rank::world] for b in range(0, len(idx), step)]


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = counts.sum() / (n_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def lr_factor(step: int, *, warmup: int, total: int, steps_per_epoch: int, schedule: str, gamma: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (linear warm-up, then decay)."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    if schedule == "cosine":
        t = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "exponential":
        return gamma ** ((step - warmup) / max(steps_per_epoch, 1))
    return 1.0


def _loss(logits: torch.Tensor, y: torch.Tensor, task: str, weights: torch.Tensor | None, smoothing: float) -> torch.Tensor:
    if task == "binary":
        target = y.float() * (1 - smoothing) + 0.5 * smoothing
        pos_weight = (weights[1] / weights[0]).view(1) if weights is not None else None
        return F.binary_cross_entropy_with_logits(logits.squeeze(1).float(), target, pos_weight=pos_weight)
    return F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=smoothing)


def _selection_score(task: str, m: dict[str, Any]) -> float:
    # AUROC is threshold-free, so a binary model is not selected for a lucky 0.5 cut.
    if task == "binary":
        return float(m["auroc"] if m.get("auroc") is not None else m["accuracy"])
    return float(m["accuracy"])


def _log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes; ``probs`` is (N, C), C = 2 for binary."""
    p_true = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y).astype(int)]
    return float(-np.mean(np.log(np.clip(p_true, 1e-7, 1.0))))


def _selection_key(
    task: str, m: dict[str, Any], y: np.ndarray, probs: np.ndarray, selection: str = "score"
) -> tuple[float, float]:
    """What picks the saved epoch (higher is better): the selection score, ties broken by the lower
    validation log-loss, or (``selection="log_loss"``) the log-loss alone.

    A small validation split saturates AUROC (and accuracy) early: on the 45-image synthetic
    split, an epoch-2 model with val AUROC 1.0 but val accuracy 0.40 was kept over later epochs
    with AUROC 1.0 and accuracy 1.0, and scored 0.35 on test. The log-loss separates them.
    """
    loss = _log_loss(y, probs)
    if selection == "log_loss":
        return (-loss, _selection_score(task, m))
    return (_selection_score(task, m), -loss)


def report_metrics(
    task: str, y: np.ndarray, probs: np.ndarray, classes: list[str] | tuple[str, ...], threshold: float = 0.5
) -> dict[str, Any]:
    """``task_metrics`` plus what a reader compares across tasks.

    Binary: per-class accuracy (specificity for NORMAL, sensitivity for PNEUMONIA).
    Multiclass: per-class sensitivity/specificity, their macro means, and the model read
    as normal-vs-pneumonia (argmax ≠ normal), so a 3-class model's specificity is on the
    same footing as the binary model's.
    """
    m = task_metrics(task, y, probs, classes, threshold)
    if task == "binary":
        m["per_class_accuracy"] = {classes[0]: m["specificity"], classes[1]: m["sensitivity"]}
        return m
    cm = np.asarray(m["confusion"], dtype=np.float64)
    total = cm.sum()
    sens, spec = {}, {}
    for i, c in enumerate(classes):
        tp, fn = cm[i, i], cm[i].sum() - cm[i, i]
        fp = cm[:, i].sum() - tp
        tn = total - tp - fn - fp
        sens[c] = float(tp / (tp + fn)) if tp + fn else None
        spec[c] = float(tn / (tn + fp)) if tn + fp else None
    m["sensitivity_per_class"], m["specificity_per_class"] = sens, spec
    m["specificity_macro"] = float(np.mean([v for v in spec.values() if v is not None])) if spec else None
    y = np.asarray(y).astype(int)
    pred_pneu = (np.asarray(probs).argmax(axis=1) > 0).astype(int)
    as_bin = binary_metrics((y > 0).astype(int), np.asarray(probs)[:, 1:].sum(axis=1), 0.5)
    # The 0.5 cut on P(bacteria)+P(virus) can disagree with argmax for 3 classes; use argmax.
    tn = int(((y == 0) & (pred_pneu == 0)).sum())
    fp = int(((y == 0) & (pred_pneu == 1)).sum())
    fn = int(((y > 0) & (pred_pneu == 0)).sum())
    tp = int(((y > 0) & (pred_pneu == 1)).sum())
    as_bin.update(
        threshold=None,
        accuracy=(tp + tn) / max(len(y), 1),
        sensitivity=tp / (tp + fn) if tp + fn else 0.0,
        specificity=tn / (tn + fp) if tn + fp else 0.0,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        f1=2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        confusion=[[tn, fp], [fn, tp]],
    )
    m["as_binary"] = as_bin
    return m


# --- calibration and operating points -----------------------------------------------------------


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


def card_temperature(card: dict[str, Any], tta: int = 1) -> float:
    """The card's validation-fitted temperature for ``tta`` views (1.0 when the card has none)."""
    cal = card.get("calibration") or {}
    return float(cal.get(f"temperature_tta{tta}", cal.get("temperature", 1.0)) if tta > 1 else cal.get("temperature", 1.0))


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
                        films: int = 80, batch: int = 16) -> dict[str, Any]:
    """HiResCAM (the app's default map and layer) for the predicted class on ``films`` evenly spaced films of
    ``prepared_u8`` (N, S, S, already through ``prepare``): peak and mass inside ``LUNG_BOX``."""
    from dataclasses import replace

    from .explain import DEFAULT_METHOD, Explainer

    idx = focus_films(len(prepared_u8), films)
    # The films are already prepared: CLAHE and the crop must not run twice.
    ex = Explainer(model.cpu(), architecture, task, replace(spec, clahe=False, crop_fraction=1.0), method=DEFAULT_METHOD)
    cams, empty = [], 0
    for start in range(0, len(idx), batch):
        for e in ex.explain_batch([prepared_u8[i] for i in idx[start : start + batch]]):
            cams.append(e.cam_input)
            empty += int(e.empty)
    # An empty map (no positive evidence anywhere) counts as neither peak nor mass inside.
    peak, mass = lung_focus(np.stack(cams), box_on_input(LUNG_BOX, spec.crop_fraction))
    return {"films": len(idx), "method": DEFAULT_METHOD, "layer": ex.layer_name, "box": list(LUNG_BOX),
            "peak_inside": peak, "mass_inside": mass, "empty_maps": empty}


# --- frozen trunk / trainable tail --------------------------------------------------------------



class _Tail(nn.Module):
    """The trainable end of a network: stages after the cut, the last conv, pooling, dropout, classifier.

    It holds the model's own modules, so training it trains the model.
    """

    def __init__(self, stages: list[nn.Module], post: list[nn.Module], pool: nn.Module, drop: float, classifier: nn.Module):
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.post = nn.Sequential(*post)
        self.pool = pool
        self.drop = drop
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.post(self.stages(x))).flatten(1)
        if self.drop > 0:
            x = F.dropout(x, p=self.drop, training=self.training)
        return self.classifier(x)


def num_stages(model: nn.Module, architecture: str) -> int:
    """How many stages ``freeze_stages`` can count for this network."""
    return len(_stages(model, architecture)[1])


def split_model(model: nn.Module, architecture: str, k: int) -> tuple[nn.Module, nn.Module]:
    """(trunk, tail): the stem and the first ``k`` stages, and the rest up to the logits.

    ``tail(trunk(x))`` equals ``model(x)``; both share the model's parameters.
    """
    stem, stages, post = _stages(model, architecture)
    if not 0 < k <= len(stages):
        raise ValueError(f"{architecture} has {len(stages)} stages; freeze_stages must be in 1..{len(stages)}")
    trunk = nn.Sequential(*stem, *stages[:k])
    drop = float(getattr(model, "drop_rate", 0.0))
    tail = _Tail(stages[k:], post, model.global_pool, drop, model.get_classifier())
    return trunk, tail


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], n: int, batch: int, progress: Callable[[int, int], None] | None) -> torch.Tensor:
    out = []
    for start in range(0, n, batch):
        out.append(fn(torch.arange(start, min(start + batch, n))))
        if progress:
            progress(min(start + batch, n), n)
    return torch.cat(out)


@torch.no_grad()
def trunk_features(
    trunk: nn.Module,
    cache_u8: torch.Tensor,
    spec: InputSpec,
    views: list[Callable[[torch.Tensor], torch.Tensor]],
    *,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Trunk outputs (N, V, C, H, W) of every image under each view function ([0,1] batch → [0,1] batch)."""
    dev = cache_u8.device

    def one(idx: torch.Tensor) -> torch.Tensor:
        x01 = to_float(cache_u8[idx.to(dev)])
        feats = [trunk(normalize(v(x01), spec).contiguous(memory_format=torch.channels_last)).to(dtype) for v in views]
        return torch.stack(feats, dim=1)

    return _batched(one, cache_u8.shape[0], batch_size, progress)


def _feature_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cached_features(cache_dir: str | None, key: str, compute: Callable[[], torch.Tensor], log: Callable[[str], None]) -> torch.Tensor:
    """Load features stored under ``key`` or compute and store them (safetensors, atomic rename)."""
    if cache_dir is None:
        return compute()
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"features-{key}.safetensors"
    if path.is_file():
        log(f"frozen-stage features from {path}")
        return load_file(str(path))["features"]
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"features": feats.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return feats


@torch.no_grad()
def _tail_probs(tail: nn.Module, feats: torch.Tensor, task: str, n_views: int, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Mean over the first ``n_views`` views of the tail's probabilities: what ``infer(tta=n)`` computes."""
    from .models import logits_to_probs

    tail.eval()
    out = []
    for start in range(0, feats.shape[0], batch_size):
        fb = feats[start : start + batch_size, :n_views].to(device).float()
        p = sum(logits_to_probs(tail(fb[:, v].contiguous(memory_format=torch.channels_last)), task) for v in range(n_views))
        out.append((p / n_views).cpu())
    return torch.cat(out).numpy()


# --- the run ------------------------------------------------------------------------------------


def train_classifier(cfg: TrainConfig, progress: Progress | None = None, log: Callable[[str], None] = print):
    """Train, evaluate and register a classifier. Returns the registry ``Entry`` (rank 0) or None."""
    from .inference import infer, pick_device
    from .models import create_model, num_outputs_for
    from .registry import write_entry

    cfg.validate()
    rank, world, local_rank = _dist()
    distributed = world > 1
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif distributed and device.type == "cpu":
        # Ranks on one CPU would otherwise each start a thread per core and thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    classes = TASK_CLASSES[cfg.task]
    t_start = time.perf_counter()

    dataset: Dataset = with_validation_split(read_dataset(cfg.data), cfg.val_fraction, cfg.seed)
    leaks = check_patient_leakage(dataset.samples, ("train", "val"))
    if leaks:
        raise ValueError(f"{len(leaks)} patients occur in more than one split, e.g. {next(iter(leaks))}")
    splits = {s: _subsample(dataset.split(s), cfg.max_per_split, cfg.seed) for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if not splits[s]:
            raise ValueError(f"the dataset has no {s} images")

    model, info = create_model(cfg.architecture, num_outputs_for(cfg.task), pretrained=cfg.pretrained)
    spec = cfg.spec(info.mean, info.std)

    def prep(g: np.ndarray) -> np.ndarray:
        return prepare(g, spec)

    caches: dict[str, torch.Tensor] = {}
    targets: dict[str, np.ndarray] = {}
    for s, samples in splits.items():
        if not samples:
            continue
        arr = load_images(dataset, samples, prep, progress=(lambda i, n, s=s: progress(f"decode {s}", i, n)) if progress else None)
        caches[s] = torch.from_numpy(arr).to(device)
        targets[s] = np.array([x.target(cfg.task) for x in samples])
    t_decoded = time.perf_counter()

    model = model.to(device).to(memory_format=torch.channels_last)
    frozen = cfg.freeze_stages > 0
    feats: dict[str, torch.Tensor] = {}
    from_cache: list[str] = []
    if frozen:
        trunk, tail = split_model(model, cfg.architecture, cfg.freeze_stages)
        for p in trunk.parameters():
            p.requires_grad_(False)
        trunk.eval()  # frozen BatchNorm statistics too: the trunk is exactly the pretrained one
        bank_gen = torch.Generator(device=device).manual_seed(cfg.seed)

        def aug_view(x01: torch.Tensor) -> torch.Tensor:
            return augment(x01, cfg.augment, bank_gen)

        def identity(x01: torch.Tensor) -> torch.Tensor:
            return x01

        def tta_view(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x01: tta_views(x01, i + 1)[i]

        base_key = {
            "arch": cfg.architecture, "source": info.pretrained_source, "spec": spec.to_dict(), "k": cfg.freeze_stages,
            "fingerprint": dataset.fingerprint(), "torch": torch.__version__,
        }
        for s in caches:
            if s == "train":
                views = [identity] + [aug_view] * (cfg.train_views - 1)
                key = {**base_key, "split": s, "views": cfg.train_views, "augment": cfg.augment.to_dict(), "seed": cfg.seed}
                dtype = torch.float16  # the largest tensor of the run; half precision is plenty for a training input
            else:
                views = [tta_view(i) for i in range(cfg.tta)]
                key = {**base_key, "split": s, "tta": cfg.tta}
                dtype = torch.float32
            key["paths"] = hashlib.sha256("\n".join(x.path for x in splits[s]).encode()).hexdigest()
            bar = (lambda i, n, s=s: progress(f"frozen-stage features {s}", i, n)) if progress else None
            computed: list[bool] = []

            def compute(views=views, s=s, dtype=dtype, bar=bar, computed=computed) -> torch.Tensor:
                computed.append(True)
                return trunk_features(trunk, caches[s], spec, views, dtype=dtype, progress=bar)

            feats[s] = _cached_features(
                cfg.feature_cache if rank == 0 or not distributed else None, _feature_key(key), compute, log
            ).to(device)
            if not computed:
                from_cache.append(s)
        trainable: nn.Module = tail
    else:
        trainable = model
    t_features = time.perf_counter()

    train_model: nn.Module = trainable
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(trainable, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in trainable.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, alpha=0.9, momentum=0.9, eps=1e-3)

    y_train = targets["train"]
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = len(shard_batches(epoch_indices(y_train, cfg.balance, np.random.default_rng(0)), cfg.batch_size, world, rank))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda step: lr_factor(step, warmup=warmup, total=total_steps, steps_per_epoch=steps_per_epoch, schedule=cfg.schedule, gamma=cfg.gamma),
    )
    weights = class_weights(y_train, len(classes)).to(device) if cfg.balance == "class-weights" else None
    y_train_t = torch.from_numpy(y_train).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    use_bf16 = device.type == "cuda"

    def batch_input(idx: torch.Tensor) -> torch.Tensor:
        if frozen:
            view = torch.randint(0, feats["train"].shape[1], (len(idx),), device=device, generator=gen)
            return feats["train"][idx, view].float().contiguous(memory_format=torch.channels_last)
        x01 = augment(to_float(caches["train"][idx]), cfg.augment, gen)
        return normalize(x01, spec).contiguous(memory_format=torch.channels_last)

    def val_probs() -> np.ndarray:
        if frozen:
            return _tail_probs(trainable, feats["val"], cfg.task, 1, device)
        return infer(model, caches["val"], spec, cfg.task, device=device, want_embeddings=False)[0]

    history: list[dict[str, Any]] = []
    best_key, best_state, best_epoch, stale = (-math.inf, -math.inf), None, -1, 0
    images_seen, train_seconds = 0, 0.0
    for epoch in range(cfg.epochs):
        trainable.train()
        # Every rank draws the same permutation (same rng) and takes its own stride.
        batches = shard_batches(epoch_indices(y_train, cfg.balance, rng), cfg.batch_size, world, rank)
        t0 = time.perf_counter()
        loss_sum, loss_n = 0.0, 0
        for b, chunk in enumerate(batches):
            idx = torch.from_numpy(chunk).to(device)
            x = batch_input(idx)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = train_model(x)
            loss = _loss(logits, y_train_t[idx], cfg.task, weights, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(chunk)
            loss_n += len(chunk)
            if progress and rank == 0:
                progress(f"epoch {epoch + 1}/{cfg.epochs}", b + 1, len(batches))
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_seconds += dt
        images_seen += loss_n * world
        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": loss_sum / max(loss_n, 1), "seconds": dt, "lr": sched.get_last_lr()[0],
            "images": loss_n * world,
        }
        if rank == 0:
            trainable.eval()
            probs_val = val_probs()
            vm = task_metrics(cfg.task, targets["val"], probs_val, classes)
            key = _selection_key(cfg.task, vm, targets["val"], probs_val, cfg.selection)
            score, val_loss = _selection_score(cfg.task, vm), _log_loss(targets["val"], probs_val)
            record.update({"val_accuracy": vm["accuracy"], "val_auroc": vm.get("auroc", vm.get("auroc_ovr")), "val_score": score,
                           "val_log_loss": val_loss})
            log(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val acc {vm['accuracy']:.4f}  val score {score:.4f}  "
                f"val log-loss {val_loss:.4f}  ({dt:.1f}s)")
            if key > best_key:
                best_key, best_epoch, stale = key, epoch + 1, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                stale += 1
        history.append(record)
        stop = torch.tensor([1 if stale >= cfg.patience else 0], device=device)
        if distributed:
            torch.distributed.broadcast(stop, 0)
        if int(stop.item()):
            if rank == 0:
                log(f"early stop: no validation improvement for {cfg.patience} epochs")
            break

    if distributed:
        torch.distributed.barrier()
    if rank != 0:
        torch.distributed.destroy_process_group()
        return None
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()

    def probs_for(s: str, tta: int) -> np.ndarray:
        if frozen:
            return _tail_probs(trainable, feats[s], cfg.task, tta, device)
        return infer(model, caches[s], spec, cfg.task, device=device, tta=tta, want_embeddings=False)[0]

    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    thresholds: dict[str, float] = {"default": 0.5}
    tta_levels = sorted({1, cfg.tta})
    all_probs = {(s, t): probs_for(s, t) for s in ("val", "test") if s in caches for t in tta_levels}
    # Temperature scaling, fitted on validation only (plain and TTA probabilities separately).
    temperatures = {t: fit_temperature(probs_to_logits(all_probs[("val", t)], cfg.task), targets["val"], cfg.task) for t in tta_levels}
    if cfg.task == "binary":
        # The operating points are chosen on validation, separately for plain and TTA probabilities.
        for t in tta_levels:
            suffix = "" if t == 1 else f"_tta{t}"
            thresholds["youden_val" + suffix] = youden_threshold(targets["val"], all_probs[("val", t)][:, 1])
            thresholds["sens95_val" + suffix] = fixed_sensitivity_threshold(targets["val"], all_probs[("val", t)][:, 1], 0.95)
    for (s, t), probs in all_probs.items():
        key = s if t == 1 else f"{s}_tta{t}"
        metrics[key] = report_metrics(cfg.task, targets[s], probs, classes)
        metrics[key]["ece_calibrated"] = report_metrics(
            cfg.task, targets[s], apply_temperature(probs, cfg.task, temperatures[t]), classes)["ece"]
        if cfg.task == "binary":
            for op in ("youden_val", "sens95_val"):
                thr = thresholds[op if t == 1 else f"{op}_tta{t}"]
                metrics[f"{key}@{op}"] = report_metrics(cfg.task, targets[s], probs, classes, thr)
        if t == 1 and len(np.unique(targets[s])) > 1:
            if cfg.task == "binary":
                curves[s] = roc_points(targets[s], probs[:, 1])
            else:
                curves[s] = {c: roc_points((targets[s] == i).astype(int), probs[:, i]) for i, c in enumerate(classes)}
    seconds = time.perf_counter() - t_start
    focus = None
    if cfg.lung_focus_films and "test" in caches:
        t_focus = time.perf_counter()
        focus = lung_focus_of_model(model, cfg.architecture, cfg.task, spec, caches["test"].cpu().numpy(), cfg.lung_focus_films)
        focus["seconds"] = time.perf_counter() - t_focus
        log(f"lung focus on {focus['films']} test films: peak inside {focus['peak_inside']:.3f}, mass inside {focus['mass_inside']:.3f}")
    threshold_in_use = thresholds.get(cfg.operating_point, 0.5) if cfg.task == "binary" else 0.5

    card: dict[str, Any] = {
        "kind": "classifier",
        "task": cfg.task,
        "classes": list(classes),
        "architecture": cfg.architecture,
        "num_outputs": info.num_outputs,
        "pretrained": info.pretrained,
        "pretrained_source": info.pretrained_source,
        "embedding_dim": info.embedding_dim,
        "input": spec.to_dict(),
        "dataset": {
            "name": dataset.name,
            "root": str(dataset.root.resolve()),
            "counts": dataset.counts(),
            "used": {s: len(v) for s, v in splits.items()},
            "fingerprint": dataset.fingerprint(),
            "validation": {"fraction": cfg.val_fraction, "seed": cfg.seed, "by": "patient"},
        },
        "training": {
            "args": {**asdict(cfg), "augment": cfg.augment.to_dict()},
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "seconds_total": seconds,
            "seconds_decode": t_decoded - t_start,
            "seconds_features": t_features - t_decoded,
            "seconds_train": train_seconds,
            "images_per_second": images_seen / max(train_seconds, 1e-9),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "world_size": world,
            "frozen_stages": cfg.freeze_stages,
            "features_from_cache": from_cache,
            "trainable_parameters": sum(p.numel() for p in params),
            "torch": torch.__version__,
            "history": history,
        },
        "metrics": metrics,
        "curves": curves,
        "thresholds": thresholds,
        "threshold": threshold_in_use,
        # Which stored validation-chosen threshold "threshold" is (the app shows it beside the value).
        "threshold_source": cfg.operating_point if cfg.task == "binary" else "argmax",
        # Probabilities the app shows: softmax(logits / T) (binary: sigmoid). Thresholds stay on the raw
        # probabilities; calibrated_threshold() maps one onto the calibrated scale.
        "calibration": {
            "method": "temperature", "fitted_on": "val", "temperature": temperatures[1],
            **{f"temperature_tta{t}": temperatures[t] for t in tta_levels if t != 1},
            # Reliability diagrams (plain probabilities) before and after the temperature, per split.
            "reliability": {
                s: {"raw": reliability(all_probs[(s, 1)], targets[s]),
                    "calibrated": reliability(apply_temperature(all_probs[(s, 1)], cfg.task, temperatures[1]), targets[s])}
                for s in ("val", "test") if (s, 1) in all_probs
            },
        },
        "recipe": cfg.recipe,
    }
    if focus is not None:
        card["lung_focus"] = focus
    entry = write_entry(cfg.out, card, weights=model.state_dict(), entry_id=cfg.entry_id)
    if distributed:
        torch.distributed.destroy_process_group()
    return entry
