"""Training classifiers into the registry.

``train_classifier(TrainConfig)`` is what ``python -m train.classifier`` runs:
decode every image once into a uint8 cache on the training device, augment on the
device, bf16 autocast and channels_last on CUDA, select the epoch on the
patient-level validation split, evaluate on the test split (plain and TTA) and
write a registry entry whose card records every choice.

Multi-GPU: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank trains on its shard of
every epoch's batches through DistributedDataParallel (NCCL on CUDA, gloo on CPU);
rank 0 evaluates and writes the entry.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import TASK_CLASSES, AugmentConfig, InputSpec
from .data import Dataset, check_patient_leakage, load_images, read_dataset, with_validation_split
from .metrics import roc_points, task_metrics, youden_threshold
from .preprocess import augment, normalize, prepare, to_float

BALANCE_CHOICES = ("none", "oversample", "undersample", "class-weights")


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

    def spec(self, mean: tuple[float, ...], std: tuple[float, ...]) -> InputSpec:
        return InputSpec(size=self.size, mean=mean, std=std, crop_fraction=self.crop_fraction, clahe=self.clahe)


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
    parts = [rng.choice(np.flatnonzero(y == c), size=target, replace=balance == "oversample" and cnt < target) for c, cnt in zip(classes, counts, strict=True)]
    return rng.permutation(np.concatenate(parts))


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = counts.sum() / (n_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


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


def train_classifier(cfg: TrainConfig, progress: Progress | None = None, log: Callable[[str], None] = print):
    """Train, evaluate and register a classifier. Returns the registry ``Entry`` (rank 0) or None."""
    from .inference import infer, pick_device
    from .models import create_model, num_outputs_for
    from .registry import write_entry

    if cfg.task not in TASK_CLASSES:
        raise ValueError(f"task must be one of {list(TASK_CLASSES)}")
    if cfg.balance not in BALANCE_CHOICES:
        raise ValueError(f"balance must be one of {BALANCE_CHOICES}")
    rank, world, local_rank = _dist()
    distributed = world > 1
    device = pick_device(cfg.device)
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
    train_model: torch.nn.Module = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, alpha=0.9, momentum=0.9, eps=1e-3)
    else:
        raise ValueError("optimizer must be adamw or rmsprop")

    y_train = targets["train"]
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = max(1, math.ceil(len(epoch_indices(y_train, cfg.balance, np.random.default_rng(0))) / (cfg.batch_size * world)))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        if cfg.schedule == "cosine":
            t = (step - warmup) / max(total_steps - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "exponential":
            return cfg.gamma ** ((step - warmup) / steps_per_epoch)
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    weights = class_weights(y_train, len(classes)).to(device) if cfg.balance == "class-weights" else None
    y_train_t = torch.from_numpy(y_train).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    use_bf16 = device.type == "cuda"

    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch, stale = -math.inf, None, -1, 0
    images_seen, train_seconds = 0, 0.0
    for epoch in range(cfg.epochs):
        train_model.train()
        idx_all = epoch_indices(y_train, cfg.balance, rng)
        # Every rank draws the same permutation (same rng) and takes its own stride.
        n_batches = math.ceil(len(idx_all) / (cfg.batch_size * world))
        t0 = time.perf_counter()
        loss_sum, loss_n = 0.0, 0
        for b in range(n_batches):
            chunk = idx_all[b * cfg.batch_size * world : (b + 1) * cfg.batch_size * world][rank::world]
            if len(chunk) == 0:
                continue
            idx = torch.from_numpy(chunk).to(device)
            x = normalize(augment(to_float(caches["train"][idx]), cfg.augment, gen), spec).contiguous(memory_format=torch.channels_last)
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
                progress(f"epoch {epoch + 1}/{cfg.epochs}", b + 1, n_batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_seconds += dt
        images_seen += loss_n * world
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_n, 1), "seconds": dt, "lr": sched.get_last_lr()[0]}
        if rank == 0:
            model.eval()
            probs, _ = infer(model, caches["val"], spec, cfg.task, device=device, want_embeddings=False)
            vm = task_metrics(cfg.task, targets["val"], probs, classes)
            score = _selection_score(cfg.task, vm)
            record.update({"val_accuracy": vm["accuracy"], "val_auroc": vm.get("auroc", vm.get("auroc_ovr")), "val_score": score})
            log(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val acc {vm['accuracy']:.4f}  val score {score:.4f}  ({dt:.1f}s)")
            if score > best_score:
                best_score, best_epoch, stale = score, epoch + 1, 0
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

    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    val_probs, _ = infer(model, caches["val"], spec, cfg.task, device=device, want_embeddings=False)
    thresholds: dict[str, float] = {"default": 0.5}
    if cfg.task == "binary":
        thresholds["youden_val"] = youden_threshold(targets["val"], val_probs[:, 1])
    for s in ("val", "test"):
        if s not in caches:
            continue
        for tta in sorted({1, cfg.tta}):
            probs, _ = infer(model, caches[s], spec, cfg.task, device=device, tta=tta, want_embeddings=False)
            key = s if tta == 1 else f"{s}_tta{tta}"
            metrics[key] = task_metrics(cfg.task, targets[s], probs, classes)
            if cfg.task == "binary":
                metrics[key + "@youden_val"] = task_metrics(cfg.task, targets[s], probs, classes, thresholds["youden_val"])
                if tta == 1:
                    curves[s] = roc_points(targets[s], probs[:, 1])
    seconds = time.perf_counter() - t_start

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
            "seconds_train": train_seconds,
            "images_per_second": images_seen / max(train_seconds, 1e-9),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "world_size": world,
            "torch": torch.__version__,
            "history": history,
        },
        "metrics": metrics,
        "curves": curves,
        "thresholds": thresholds,
        "threshold": 0.5,
    }
    entry = write_entry(cfg.out, card, weights=model.state_dict(), entry_id=cfg.entry_id)
    if distributed:
        torch.distributed.destroy_process_group()
    return entry
