"""Healthy-only anomaly detection: detectors, scores and threshold arithmetic.

Every detector here is fitted on NORMAL training images only and returns one score
per image, higher = less like the healthy training set. Two families:

- :class:`ConvAutoencoder` (``kind="autoencoder"``): a small convolutional
  autoencoder; the score is the mean reconstruction error (squared error, 1 − SSIM,
  or their mix) over a central region of the image, and the per-pixel error map is
  returned for display. A reconstruction model can generalise to sick lungs as well
  as to healthy ones (the seed study saw pneumonia reconstructed *better*), so its
  numbers are reported whatever they are.
- :class:`FeatureDetector` (``kind="detector"``): distance of pretrained ImageNet
  EfficientNet-Lite features, pooled from several intermediate blocks, to the
  healthy feature distribution: Mahalanobis with Ledoit–Wolf shrinkage per block, or
  the mean distance to the k nearest healthy training images.

Threshold suggestions (:func:`suggest_thresholds`) are computed on the validation
split: Youden's J, best F1 and a target sensitivity when validation holds both
classes, and always a high quantile of the *normal* validation scores, which is the
fallback when validation has no anomalies (an F1-optimal threshold there would be
the minimum score, flagging everything). :class:`ThresholdTable` answers "what
happens at threshold t" in O(log n) from sorted scores, for the live slider.

The convention everywhere: an image is flagged anomalous when ``score >= threshold``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cards import DetectorCard
from .config import AugmentConfig, InputSpec, JsonRecord
from .models import create_model, model_stages
from .preprocess import augment, normalize, to_float
from .progress import StepProgress as Progress
from .registry import Entry, EntryStatus

# --------------------------------------------------------------------------------------------
# threshold arithmetic


def score_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Threshold-free metrics of anomaly scores against labels (1 = pneumonia / anomalous).

    AUROC below 0.5 is reported as it is: it means the detector scores healthy images
    as *more* anomalous than sick ones.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    both = len(np.unique(y)) == 2
    auroc = float(roc_auc_score(y, s)) if both else None
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_normal": int((y == 0).sum()),
        "n_anomalous": int((y == 1).sum()),
        "auroc": auroc,
        "aupr": float(average_precision_score(y, s)) if both else None,
        # AUPR of a random scorer equals the prevalence: the honest baseline to compare with.
        "aupr_chance": float(y.mean()) if len(y) else None,
        "score_mean_normal": float(s[y == 0].mean()) if (y == 0).any() else None,
        "score_mean_anomalous": float(s[y == 1].mean()) if (y == 1).any() else None,
    }
    if auroc is not None:
        out["verdict"] = (
            "worse than chance (sick images score lower than healthy ones)"
            if auroc < 0.5
            else "about chance" if auroc < 0.55 else "better than chance"
        )
    return out


class ThresholdTable:
    """Confusion counts at any threshold in O(log n), from scores sorted once.

    Built once per (detector, split); the threshold page calls :meth:`metrics` on
    every slider move.
    """

    def __init__(self, y: np.ndarray, scores: np.ndarray):
        y = np.asarray(y).astype(bool)
        s = np.asarray(scores, dtype=np.float64)
        self.pos = np.sort(s[y])
        self.neg = np.sort(s[~y])
        self.n_pos, self.n_neg = len(self.pos), len(self.neg)
        self.lo = float(s.min()) if len(s) else 0.0
        self.hi = float(s.max()) if len(s) else 1.0
        self._roc: tuple[np.ndarray, np.ndarray] | None = None

    def counts(self, threshold: float) -> tuple[int, int, int, int]:
        """(tn, fp, fn, tp) when ``score >= threshold`` is flagged."""
        fn = int(np.searchsorted(self.pos, threshold, side="left"))
        tn = int(np.searchsorted(self.neg, threshold, side="left"))
        return tn, self.n_neg - tn, fn, self.n_pos - fn

    def metrics(self, threshold: float) -> dict[str, Any]:
        tn, fp, fn, tp = self.counts(threshold)
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        prec = tp / (tp + fp) if tp + fp else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        n = tn + fp + fn + tp
        return {
            "threshold": float(threshold),
            "tn": tn, "fp": fp, "fn": fn, "tp": tp,
            "sensitivity": sens,
            "specificity": spec,
            "precision": prec,
            "f1": f1,
            "accuracy": (tp + tn) / n if n else float("nan"),
            "fpr": fp / (fp + tn) if fp + tn else float("nan"),
            "flagged": tp + fp,
        }

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """(fpr, tpr) over every distinct threshold, computed once."""
        if self._roc is None:
            if not self.n_pos or not self.n_neg:
                self._roc = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
            else:
                thr = np.unique(np.concatenate([self.pos, self.neg]))[::-1]
                tp = self.n_pos - np.searchsorted(self.pos, thr, side="left")
                fp = self.n_neg - np.searchsorted(self.neg, thr, side="left")
                self._roc = (
                    np.concatenate([[0.0], fp / self.n_neg]),
                    np.concatenate([[0.0], tp / self.n_pos]),
                )
        return self._roc


def _above(scores: np.ndarray, value: float) -> float:
    """The smallest float strictly above ``value`` (a threshold that flags nothing at ``value``)."""
    return float(np.nextafter(value, math.inf))


def _class_suggestions(normal: np.ndarray, sick: np.ndarray, target_sensitivity: float,
                       normal_quantile: float) -> dict[str, dict[str, Any]]:
    """The suggestions one class alone supports: a quantile of the normals, a sensitivity target on the sick."""
    sug: dict[str, dict[str, Any]] = {}
    if len(normal):
        sug[f"normal_q{round(normal_quantile * 100)}"] = {
            "value": float(np.quantile(normal, normal_quantile)),
            "label": f"{normal_quantile:.0%} of normals pass",
            "note": f"flags about {1 - normal_quantile:.0%} of healthy validation images; needs no anomalous examples",
        }
    if len(sick):
        # Largest threshold that still reaches the target sensitivity on validation.
        k = int(math.floor((1.0 - target_sensitivity) * len(sick) + 1e-9))
        sug[f"sensitivity_{round(target_sensitivity * 100)}"] = {
            "value": float(np.sort(sick)[min(k, len(sick) - 1)]),
            "label": f"sensitivity ≥ {target_sensitivity:.0%}",
            "note": f"highest threshold that flags at least {target_sensitivity:.0%} of anomalous validation images",
        }
    return sug


def _curve_suggestions(y: np.ndarray, s: np.ndarray) -> dict[str, dict[str, Any]]:
    """Youden's J on the ROC curve and the best F1 on the precision-recall curve (both classes needed)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    j = tpr - fpr
    best = int(np.argmax(j))
    youden = float(thr[best]) if np.isfinite(thr[best]) else _above(s, float(s.max()))
    prec, rec, pthr = precision_recall_curve(y, s)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)[:-1]
    bi = int(np.argmax(f1))
    note = f"maximises F1 on validation (F1 = {f1[bi]:.3f})"
    if float(pthr[bi]) <= float(s.min()):
        # Anomalies are the majority here, so flagging everything can win on F1; say so.
        note += "; at this threshold every validation image is flagged"
    return {
        "youden": {"value": youden, "label": "Youden's J",
                   "note": f"maximises sensitivity + specificity − 1 on validation (J = {j[best]:.3f})"},
        "best_f1": {"value": float(pthr[bi]), "label": "best F1", "note": note},
    }


def suggest_thresholds(
    y_val: np.ndarray,
    s_val: np.ndarray,
    *,
    target_sensitivity: float = 0.95,
    normal_quantile: float = 0.95,
) -> dict[str, Any]:
    """Threshold suggestions on validation scores, and the one to use by default.

    Returns ``{"suggestions": {name: {"value", "label", "note"}}, "chosen": name,
    "threshold": value, "fallback": bool, "note": str}``. With both classes present the
    default is Youden's J. Without anomalies in validation the only honest choice is a
    high quantile of the normal scores (it fixes the false-alarm rate on healthy images
    at about ``1 - normal_quantile``); that case is said in ``note``.
    """
    y = np.asarray(y_val).astype(int)
    s = np.asarray(s_val, dtype=np.float64)
    if len(s) == 0:
        raise ValueError("no validation scores to choose a threshold from")
    normal, sick = s[y == 0], s[y == 1]
    sug = _class_suggestions(normal, sick, target_sensitivity, normal_quantile)
    fallback = not (len(normal) and len(sick))
    if not fallback:
        sug.update(_curve_suggestions(y, s))
        chosen, note = "youden", "Youden's J on validation"
    elif len(normal):
        chosen = f"normal_q{round(normal_quantile * 100)}"
        note = (
            f"validation has no anomalous images, so the threshold is the {normal_quantile:.0%} quantile of "
            "the healthy validation scores (fallback: sensitivity cannot be tuned without anomalies)"
        )
    else:
        chosen = f"sensitivity_{round(target_sensitivity * 100)}"
        note = "validation has no healthy images; the threshold only targets sensitivity (fallback)"
    return {
        "suggestions": sug, "chosen": chosen, "threshold": float(sug[chosen]["value"]), "fallback": fallback,
        "note": note, "target_sensitivity": target_sensitivity, "normal_quantile": normal_quantile,
    }


def histogram_data(y: np.ndarray, scores: np.ndarray, bins: int = 40) -> dict[str, Any]:
    """Counts per class on shared bin edges (JSON-ready) for the card and the page."""
    y = np.asarray(y).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = (float(s.min()), float(s.max())) if len(s) else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    return {
        "edges": edges.tolist(),
        "normal": np.histogram(s[y == 0], edges)[0].tolist(),
        "anomalous": np.histogram(s[y == 1], edges)[0].tolist(),
    }


# --------------------------------------------------------------------------------------------
# convolutional autoencoder


def gaussian_ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of two [0, 1] batches (B, 1, H, W), Gaussian window, same-size output.

    Written out because the project has no torch image-metrics dependency; it is the
    standard Wang et al. (2004) definition with C1 = 0.01², C2 = 0.03².
    """
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, 1, -1)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(F.conv2d(t, g), g.transpose(2, 3))

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


AE_LOSSES = ("mse", "ssim", "mse+ssim")


def _writable(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array torch can wrap (memory-mapped or broadcast inputs are read-only)."""
    return np.ascontiguousarray(a) if a.flags.writeable else np.array(a, order="C")


def error_map(x: torch.Tensor, recon: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-pixel error (B, 1, H, W) that both the loss and the score average."""
    if loss == "mse":
        return (x - recon) ** 2
    dssim = (1.0 - gaussian_ssim_map(x, recon)) / 2.0
    if loss == "ssim":
        return dssim
    if loss == "mse+ssim":
        # Squared error on [0, 1] images is ~10x smaller than DSSIM; the weight puts both on a par.
        return 0.5 * dssim + 5.0 * (x - recon) ** 2
    raise ValueError(f"loss must be one of {AE_LOSSES}, got {loss!r}")


def region_mask(size: int, region: Sequence[float] | None) -> torch.Tensor:
    """(1, 1, S, S) float mask of the scored box ``(top, bottom, left, right)`` in fractions."""
    m = torch.zeros(1, 1, size, size)
    top, bottom, left, right = region if region is not None else (0.0, 1.0, 0.0, 1.0)
    m[..., round(top * size) : round(bottom * size), round(left * size) : round(right * size)] = 1.0
    return m


class ConvAutoencoder(nn.Module):
    """Four stride-2 conv blocks down, a narrow bottleneck, four transposed-conv blocks up.

    Input and output are single-channel [0, 1] images (B, 1, S, S), S divisible by 16.
    The bottleneck (``latent`` channels at S/16) is deliberately small so that the
    network cannot simply copy its input.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), latent: int = 16):
        super().__init__()
        enc: list[nn.Module] = []
        c = 1
        for w in widths:
            enc += [nn.Conv2d(c, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            c = w
        enc += [nn.Conv2d(c, latent, 1)]
        dec: list[nn.Module] = [nn.Conv2d(latent, c, 1), nn.LeakyReLU(0.2, inplace=True)]
        for w in list(widths[::-1][1:]) + [16]:
            dec += [nn.ConvTranspose2d(c, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        dec += [nn.Conv2d(c, 1, 3, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.widths, self.latent = tuple(widths), latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@dataclass
class AEConfig(JsonRecord):
    """Autoencoder recipe; stored in the card."""

    size: int = 128
    widths: tuple[int, ...] = (16, 32, 64, 128)
    latent: int = 16
    loss: str = "mse"
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    #: Scored box (top, bottom, left, right) as fractions of the side: the central part of
    #: the film, where the lungs are. The margins hold burnt-in letters, markers, arms and
    #: collimation edges that differ from film to film regardless of disease and would
    #: dominate a whole-image error.
    region: tuple[float, float, float, float] = (0.1, 0.9, 0.12, 0.88)
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(rotate_deg=5.0, shift=0.04, zoom=0.05, contrast=0.1, brightness=0.05)
    )
    seed: int = 0
    #: Re-estimate BatchNorm statistics on the (unaugmented) training images after training.
    #: Needed for short runs (the demo: a few dozen steps leave the running averages near
    #: their initial values); long runs have converged statistics and the reported kermany
    #: numbers were produced without it.
    bn_recalibrate: bool = False


def train_autoencoder(
    images_u8: np.ndarray,
    cfg: AEConfig,
    *,
    val_u8: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[ConvAutoencoder, list[dict[str, Any]]]:
    """Fit the autoencoder on healthy prepared images (N, S, S); returns the model and the history.

    ``val_u8`` (healthy validation images) only feeds the history; the last epoch is
    kept, because a lower healthy reconstruction loss says nothing about separating
    pneumonia and choosing on it would be choosing on the wrong thing.
    """
    if cfg.loss not in AE_LOSSES:
        raise ValueError(f"loss must be one of {AE_LOSSES}, got {cfg.loss!r}")
    if cfg.size % 16:
        raise ValueError(f"autoencoder size must be divisible by 16, got {cfg.size}")
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    model = ConvAutoencoder(cfg.widths, cfg.latent).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = torch.from_numpy(np.ascontiguousarray(images_u8)).to(dev)
    n = len(data)
    steps = max(1, math.ceil(n / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps * cfg.epochs, pct_start=0.15)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    mask = region_mask(cfg.size, cfg.region).to(dev)
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=dev)
        total = 0.0
        for b in range(steps):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = augment(to_float(data[idx]), cfg.augment, gen)
            loss = (error_map(x, model(x), cfg.loss) * mask).sum() / (mask.sum() * len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            if progress:
                progress(f"autoencoder epoch {epoch + 1}/{cfg.epochs}", b + 1, steps)
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / n, "seconds": time.perf_counter() - t0}
        if val_u8 is not None and len(val_u8):
            rec["val_normal_score"] = float(autoencoder_scores(model, val_u8, cfg.loss, cfg.region, device=dev)[0].mean())
        history.append(rec)
        log(f"autoencoder epoch {epoch + 1}: loss {rec['train_loss']:.5f}"
            + (f"  val normal score {rec['val_normal_score']:.5f}" if "val_normal_score" in rec else "")
            + f"  ({rec['seconds']:.1f}s)")
    if cfg.bn_recalibrate:
        _recalibrate_batchnorm(model, data, cfg.batch_size)
    model.eval()
    return model, history


@torch.no_grad()
def _recalibrate_batchnorm(model: nn.Module, data: torch.Tensor, batch_size: int) -> None:
    """Replace BatchNorm running statistics by their exact average over ``data`` (uint8 images)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass below
    model.train()
    for i in range(0, len(data), batch_size):
        model(to_float(data[i : i + batch_size]))
    for m in bns:
        m.momentum = 0.1
    model.eval()


@torch.inference_mode()
def autoencoder_scores(
    model: ConvAutoencoder,
    images_u8: np.ndarray,
    loss: str,
    region: Sequence[float] | None,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    want_maps: bool = False,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Scores (N,) = mean error over the region; with ``want_maps`` also reconstructions and error maps (N, S, S)."""
    model.eval()
    dev = torch.device(device)
    arr = _writable(images_u8)
    size = arr.shape[-1]
    mask = region_mask(size, region).to(dev)
    scores, recons, maps = [], [], []
    for i in range(0, len(arr), batch_size):
        x = to_float(torch.from_numpy(arr[i : i + batch_size]).to(dev))
        r = model(x)
        e = error_map(x, r, loss)
        scores.append(((e * mask).sum(dim=(1, 2, 3)) / mask.sum()).cpu())
        if want_maps:
            recons.append(r[:, 0].cpu())
            maps.append(e[:, 0].cpu())
        if progress:
            progress(min(i + batch_size, len(arr)), len(arr))
    s = torch.cat(scores).numpy().astype(np.float64)
    if not want_maps:
        return s, None, None
    return s, torch.cat(recons).numpy(), torch.cat(maps).numpy()


def autoencoder_from_card(card: DetectorCard, weights: dict[str, torch.Tensor]) -> ConvAutoencoder:
    ae = card.config
    model = ConvAutoencoder(tuple(ae["widths"]), int(ae["latent"]))
    model.load_state_dict(weights, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# pretrained-feature detectors

#: Feature taps of timm's EfficientNet-Lite: block indices 0-6 and "head" (after conv_head).
DEFAULT_LAYERS: tuple[str, ...] = ("3", "4", "5", "6")
FEATURE_METHODS = ("mahalanobis", "knn")


@dataclass
class FeatureConfig(JsonRecord):
    """A pretrained-feature detector recipe; stored in the card."""

    architecture: str = "tf_efficientnet_lite0"
    size: int = 224
    layers: tuple[str, ...] = DEFAULT_LAYERS
    #: "mean" (global average) or "meanstd" (average and spatial standard deviation: the
    #: latter carries texture, which consolidation and haze change).
    pooling: str = "meanstd"
    method: str = "mahalanobis"
    k: int = 5


class FeatureBackbone:
    """A frozen ImageNet-pretrained backbone that returns pooled features from several blocks."""

    def __init__(self, architecture: str = "tf_efficientnet_lite0", device: str | torch.device = "cpu"):
        model, info = create_model(architecture, 1000, pretrained=True)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        # Taps are the architecture's stages ("0", "1", ...) and "head", the modules after them (its ArchSpec).
        self.stem, self.stages, self.post = model_stages(self.model, architecture)
        self.taps: tuple[str, ...] = (*(str(i) for i in range(len(self.stages))), *(("head",) if self.post else ()))
        self.architecture = architecture
        self.mean, self.std = info.mean, info.std
        self.source = info.pretrained_source
        self._memo: dict[tuple, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def spec(self, size: int) -> InputSpec:
        return InputSpec(size=size, mean=self.mean, std=self.std)

    @torch.inference_mode()
    def extract_all(
        self, images_u8: np.ndarray, layers: Sequence[str], *, batch_size: int = 32, progress: Progress | None = None
    ) -> dict[str, np.ndarray]:
        """``{layer: (N, 2C) float32}``: spatial mean then spatial std of each tapped block.

        The mean half alone is the "mean" pooling, so one pass serves every detector
        (and the OOD guard) whatever their pooling.
        """
        wanted = set(layers)
        bad = wanted - set(self.taps)
        if bad:
            raise ValueError(f"unknown feature taps {sorted(bad)}; expected some of {self.taps}")
        arr = _writable(images_u8)
        key = None
        if len(arr) == 1:
            # The Predict page asks twice for one upload (anomaly detector, then OOD guard):
            # one pass computes every tap and serves both.
            key = (hashlib.sha1(arr.tobytes()).hexdigest(), arr.shape)
            with self._lock:
                hit = self._memo.get(key)
            if hit is not None:
                return {k: hit[k] for k in layers}
            wanted = set(self.taps)
        last_block = len(self.stages) - 1 if "head" in wanted else max(int(x) for x in wanted)
        spec = self.spec(arr.shape[-1])
        out: dict[str, list[torch.Tensor]] = {k: [] for k in wanted}

        def pool(h: torch.Tensor) -> torch.Tensor:
            h = h.float()
            return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)

        for i in range(0, len(arr), batch_size):
            x = normalize(to_float(torch.from_numpy(arr[i : i + batch_size]).to(self.device)), spec)
            h = x.contiguous(memory_format=torch.channels_last)
            for mod in self.stem:
                h = mod(h)
            for bi in range(last_block + 1):
                h = self.stages[bi](h)
                if str(bi) in wanted:
                    out[str(bi)].append(pool(h).cpu())
            if "head" in wanted:
                for mod in self.post:
                    h = mod(h)
                out["head"].append(pool(h).cpu())
            if progress:
                progress(min(i + batch_size, len(arr)), len(arr))
        res = {k: torch.cat(v).numpy() for k, v in out.items()}
        if key is not None:
            with self._lock:  # app sessions run in threads and share this backbone
                if len(self._memo) >= 8:
                    self._memo.pop(next(iter(self._memo)))
                self._memo[key] = res
        return {k: res[k] for k in layers}

    def extract(
        self,
        images_u8: np.ndarray,
        layers: Sequence[str],
        pooling: str = "meanstd",
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> dict[str, np.ndarray]:
        """``{layer: (N, C or 2C) float32}`` pooled features for prepared uint8 images (N, S, S)."""
        if pooling not in ("mean", "meanstd"):
            raise ValueError(f"pooling must be 'mean' or 'meanstd', got {pooling!r}")
        feats = self.extract_all(images_u8, layers, batch_size=batch_size, progress=progress)
        return select_pooling(feats, layers, pooling)


def select_pooling(feats: dict[str, np.ndarray], layers: Sequence[str], pooling: str) -> dict[str, np.ndarray]:
    """Pick ``layers`` out of :meth:`FeatureBackbone.extract_all` output at the given pooling."""
    if pooling == "meanstd":
        return {k: feats[k] for k in layers}
    return {k: feats[k][:, : feats[k].shape[1] // 2] for k in layers}


class FeatureDetector:
    """Distance of pooled pretrained features to the healthy training distribution.

    Per layer: features are standardised with the healthy mean/std, then scored by
    Mahalanobis distance (Ledoit–Wolf shrunk covariance; ~1,000 images cannot estimate
    a full covariance of several hundred dimensions) or by the mean Euclidean distance
    to the ``k`` nearest healthy training images. Layer distances are divided by
    sqrt(dimension), which puts layers of different widths on a comparable scale, and
    averaged.
    """

    def __init__(self, cfg: FeatureConfig, tensors: dict[str, torch.Tensor]):
        if cfg.method not in FEATURE_METHODS:
            raise ValueError(f"method must be one of {FEATURE_METHODS}, got {cfg.method!r}")
        self.cfg = cfg
        self.tensors = tensors
        # float64 copies made once: converting the precision matrices / the healthy bank on every
        # call cost more than the distance maths itself (~1.5 M values for the 5-NN bank).
        self._f64 = {k: v.double().numpy() for k, v in tensors.items()}
        for k in [k for k in self._f64 if k.endswith(".bank")]:
            self._f64[k + "_sq"] = (self._f64[k] ** 2).sum(1)

    @classmethod
    def fit(cls, cfg: FeatureConfig, feats: dict[str, np.ndarray]) -> FeatureDetector:
        """Fit on healthy features ``{layer: (N, D)}`` from :meth:`FeatureBackbone.extract`."""
        from sklearn.covariance import LedoitWolf

        t: dict[str, torch.Tensor] = {}
        for layer in cfg.layers:
            f = np.asarray(feats[layer], dtype=np.float64)
            if len(f) < 2:
                raise ValueError("a feature detector needs at least two healthy training images")
            mu, sd = f.mean(0), f.std(0) + 1e-6
            z = (f - mu) / sd
            t[f"{layer}.mean"] = torch.from_numpy(mu).float()
            t[f"{layer}.std"] = torch.from_numpy(sd).float()
            if cfg.method == "mahalanobis":
                lw = LedoitWolf(assume_centered=True).fit(z)
                t[f"{layer}.precision"] = torch.from_numpy(lw.precision_).float()
            else:
                t[f"{layer}.bank"] = torch.from_numpy(z).float()
        return cls(cfg, t)

    def layer_distances(self, feats: dict[str, np.ndarray], exclude_self: bool = False) -> dict[str, np.ndarray]:
        """Per-layer distances (N,) already divided by sqrt(dimension)."""
        out = {}
        for layer in self.cfg.layers:
            mu, sd = self._f64[f"{layer}.mean"], self._f64[f"{layer}.std"]
            z = (np.asarray(feats[layer], dtype=np.float64) - mu) / sd
            dim = z.shape[1]
            if self.cfg.method == "mahalanobis":
                prec = self._f64[f"{layer}.precision"]
                d = np.sqrt(np.maximum(((z @ prec) * z).sum(1), 0.0))  # z P z^T per row, through BLAS
            else:
                bank = self._f64[f"{layer}.bank"]
                d2 = (z**2).sum(1)[:, None] + self._f64[f"{layer}.bank_sq"][None, :] - 2 * z @ bank.T
                d2 = np.sqrt(np.maximum(d2, 0.0))
                k = min(self.cfg.k + int(exclude_self), d2.shape[1])
                near = np.sort(np.partition(d2, k - 1, axis=1)[:, :k], axis=1)
                d = near[:, int(exclude_self) :].mean(1)
            out[layer] = d / math.sqrt(dim)
        return out

    def score(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        d = self.layer_distances(feats)
        return np.mean(np.stack([d[k] for k in self.cfg.layers]), axis=0)

    @classmethod
    def from_card(cls, card: DetectorCard, tensors: dict[str, torch.Tensor]) -> FeatureDetector:
        return cls(FeatureConfig.from_dict(dict(card.config)), tensors)


@functools.lru_cache(maxsize=2)
def shared_backbone(architecture: str = "tf_efficientnet_lite0") -> FeatureBackbone:
    """One frozen pretrained backbone per process, shared by every feature detector and the OOD guard."""
    return FeatureBackbone(architecture)


# --------------------------------------------------------------------------------------------
# loading a registry entry and scoring one image


@dataclass
class DetectorOutput:
    """One image through one detector."""

    score: float
    threshold: float
    flagged: bool
    input_u8: np.ndarray  # the prepared image the detector saw (S, S)
    reconstruction: np.ndarray | None = None  # autoencoder only, [0, 1] (S, S)
    error_map: np.ndarray | None = None  # autoencoder and feature reconstruction (S, S)


@dataclass
class LoadedDetector:
    """A healthy-only detector ready to score images, with what its card says."""

    entry: Entry
    name: str
    spec: InputSpec
    threshold: float
    autoencoder: ConvAutoencoder | None = None
    features: FeatureDetector | None = None
    recon: Any | None = None  # cxr_core.feature_recon.FeatureReconDetector

    @property
    def card(self) -> DetectorCard:
        return self.entry.detector_card

    def score_prepared(self, images_u8: np.ndarray, want_maps: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Scores (N,) for prepared images (N, S, S); error maps for the reconstruction detectors,
        reconstructions for the autoencoder."""
        if self.recon is not None:
            from .feature_recon import score_images

            bb = shared_backbone(self.recon.cfg.architecture)
            s, maps = score_images(self.recon, bb.model, bb.spec(self.spec.size), images_u8, want_maps=want_maps)
            return s, None, maps
        if self.autoencoder is not None:
            ae = self.card.config
            return autoencoder_scores(self.autoencoder, images_u8, ae["loss"], ae["region"], want_maps=want_maps)
        assert self.features is not None
        cfg = self.features.cfg
        feats = shared_backbone(cfg.architecture).extract(images_u8, cfg.layers, cfg.pooling)
        return self.features.score(feats), None, None

    def score(self, gray: np.ndarray) -> DetectorOutput:
        from .preprocess import prepare

        x = prepare(gray, self.spec)
        s, recon, emap = self.score_prepared(x[None], want_maps=True)
        return DetectorOutput(
            score=float(s[0]),
            threshold=self.threshold,
            flagged=bool(s[0] >= self.threshold),
            input_u8=x,
            reconstruction=None if recon is None else recon[0],
            error_map=None if emap is None else emap[0],
        )


def load_detector(entry: Entry) -> LoadedDetector:
    """Build the detector an ``autoencoder``/``detector`` registry entry describes."""
    card = entry.info
    if not isinstance(card, DetectorCard) or card.input is None or not card.config:
        raise ValueError(f"entry {entry.id} is not an anomaly detector (kind {entry.kind!r})")
    spec, name, threshold = card.input, card.label, card.threshold_or(math.inf)
    weights = entry.load_weights()
    if card.method == "autoencoder":
        return LoadedDetector(entry, name, spec, threshold, autoencoder=autoencoder_from_card(card, weights))
    if card.method == "feature_recon":
        from .feature_recon import FeatureReconDetector, ReconConfig

        recon = FeatureReconDetector.from_tensors(ReconConfig.from_dict(dict(card.config)), weights)
        return LoadedDetector(entry, name, spec, threshold, recon=recon)
    return LoadedDetector(entry, name, spec, threshold, features=FeatureDetector.from_card(card, weights))


def anomaly_entries(statuses: Sequence[EntryStatus], task: str = "anomaly") -> list[Entry]:
    """Usable healthy-only detector entries (autoencoders and feature detectors), newest first."""
    return [
        s.entry()
        for s in statuses
        if s.info and s.info.kind in ("autoencoder", "detector") and s.info.task == task
    ]


def worse_than_chance(entry: Entry) -> bool:
    """Whether a detector ranks pneumonia below healthy images on its validation split (AUROC < 0.5).

    Its score reads backwards, so the Predict page names it instead of scoring uploads with it.
    """
    auroc = entry.detector_card.val_auroc
    return auroc is not None and auroc < 0.5

