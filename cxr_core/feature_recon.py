"""Feature reconstruction anomaly detectors: in-painting and reverse distillation on frozen features.

A pixel autoencoder reconstructs sick lungs *better* than healthy ones (docs/ANOMALY.md):
haze removes the fine detail it cannot reproduce. These detectors reconstruct frozen
ImageNet EfficientNet-Lite0 **feature maps** instead (blocks 2, 3 and 4: strides 8 and
16), brought to one grid at stride 16 (block 2 is average-pooled 2×2) and standardised
per channel with the healthy training mean/std. Two networks, trained on NORMAL films
only:

- ``inpaint`` (:class:`FeatureInpainter`): positions are hidden (zeroed, with a mask
  channel) and the network predicts their features from the visible context. At scoring
  time a fixed set of masks partitions the grid, so every position is predicted once
  from its surroundings only; the error is the mean squared difference over channels.
- ``distill`` (:class:`DistillDecoder`, reverse distillation after Deng & Li, CVPR 2022):
  an encoder squeezes the features through a narrow bottleneck at stride 32 and a
  student decoder reconstructs each tapped block; the error is 1 − cosine similarity per
  block and position, averaged over blocks.

Either way the per-position error is an **anomaly map** (G×G at stride 16, 14×14 at
224 px), and the score is that map pooled over the lung field (a central box of the
film, as for the pixel autoencoder): the mean, or the mean of the highest
``top_fraction`` of positions. Weights are stored as safetensors, the recipe as the
card's ``feature_recon`` dict (:meth:`ReconConfig.to_dict`); nothing is pickled.

A detector at the classifiers' input spec need not run its own backbone pass: classifiers
with frozen ImageNet stages (the release's recipe) compute the same feature maps on their
way to the logits, and ``predict.Predictor`` hands them over (:class:`StageHandoff`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import InputSpec, JsonRecord
from .models import model_stages
from .preprocess import normalize, to_float
from .progress import StepProgress as Progress

#: Network kinds this module trains.
RECON_KINDS: tuple[str, ...] = ("inpaint", "distill")
#: Pooling of the per-position error over the scored box.
RECON_POOLING: tuple[str, ...] = ("mean", "top")
#: Stages a detector may tap (strides 4 to 16).
RECON_TAPS: tuple[str, ...] = ("1", "2", "3", "4")


@dataclass
class ReconConfig(JsonRecord):
    """A feature reconstruction detector's recipe; stored in the card as ``feature_recon``."""

    #: The defaults are the recipe chosen on validation (docs/ANOMALY.md): reverse distillation, hidden 64,
    #: a 7×7×8 bottleneck at 224 px, 10 epochs, mean error ÷ the healthy per-position error.
    kind: str = "distill"
    architecture: str = "tf_efficientnet_lite0"
    size: int = 224
    layers: tuple[str, ...] = ("2", "3", "4")
    hidden: int = 64
    #: distill: channels of the stride-32 bottleneck.
    bottleneck: int = 8
    #: inpaint: side (in grid positions) of the square patches hidden together.
    patch: int = 2
    #: inpaint: fraction of patches hidden per training example.
    mask_ratio: float = 0.5
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: Scored box (top, bottom, left, right) as fractions of the side.
    region: tuple[float, float, float, float] = (0.1, 0.9, 0.12, 0.88)
    pooling: str = "mean"
    top_fraction: float = 0.1
    #: Divide each position's error by its mean over the healthy training films before pooling (positions
    #: near the film's edges and the heart are hard to redraw even when healthy; this evens them out).
    error_norm: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.kind not in RECON_KINDS:
            raise ValueError(f"kind must be one of {RECON_KINDS}, got {self.kind!r}")
        if self.pooling not in RECON_POOLING:
            raise ValueError(f"pooling must be one of {RECON_POOLING}, got {self.pooling!r}")
        if not self.layers or any(x not in RECON_TAPS for x in self.layers):
            raise ValueError(f"layers must be some of blocks 1-4 (stride <= 16), got {self.layers}")
        if self.size % 32:
            raise ValueError(f"size must be a multiple of 32, got {self.size}")


# --------------------------------------------------------------------------------------------
# frozen feature maps


def grid_size(size: int) -> int:
    """Side of the stride-16 grid every tapped block is brought to."""
    return size // 16


def taps_on_grid(outputs: dict[int, torch.Tensor], layers: Sequence[str], g: int) -> torch.Tensor:
    """(N, C, G, G) float32: the stage outputs ``{stage index: (N, C_i, h, w)}`` of ``layers``, those at
    strides finer than 16 average-pooled onto the G×G grid, concatenated in ``layers`` order."""
    taps = [outputs[int(x)] for x in layers]
    return torch.cat([F.adaptive_avg_pool2d(h, g) if h.shape[-1] != g else h for h in taps], 1).float().contiguous()


@torch.inference_mode()
def extract_maps(
    model: nn.Module,
    images_u8: np.ndarray,
    spec: InputSpec,
    layers: Sequence[str],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    architecture: str = "tf_efficientnet_lite0",
) -> np.ndarray:
    """(N, C, G, G) float32 feature maps of the stages ``layers`` of ``model`` (an ``architecture``,
    its stages as its ArchSpec names them) for prepared uint8 images (N, S, S).

    Blocks at strides finer than 16 are average-pooled onto the stride-16 grid; the
    blocks' channels are concatenated in ``layers`` order (:func:`taps_on_grid`).
    """
    arr = images_u8 if images_u8.flags.writeable else np.array(images_u8)
    g = grid_size(arr.shape[-1])
    want = [int(x) for x in layers]
    stem, stages, _ = model_stages(model, architecture)
    out = []
    for i in range(0, len(arr), batch_size):
        x = normalize(to_float(torch.from_numpy(np.ascontiguousarray(arr[i : i + batch_size]))), spec)
        h = x
        for mod in stem:
            h = mod(h)
        outputs = {}
        for bi in range(max(want) + 1):
            h = stages[bi](h)
            if bi in want:
                outputs[bi] = h
        out.append(taps_on_grid(outputs, layers, g))
        if progress:
            progress(min(i + batch_size, len(arr)), len(arr))
    return torch.cat(out).numpy()


def layer_channels(architecture: str, layers: Sequence[str]) -> list[int]:
    """Channels of each tapped block (EfficientNet-Lite0: 16, 24, 40, 80, 112 for blocks 0-4)."""
    lite0 = {"0": 16, "1": 24, "2": 40, "3": 80, "4": 112}
    if architecture != "tf_efficientnet_lite0":
        raise ValueError(f"channel table known for tf_efficientnet_lite0 only, not {architecture!r}")
    return [lite0[x] for x in layers]


# --------------------------------------------------------------------------------------------
# networks


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(8, cout),
        nn.GELU(),
    )


class FeatureInpainter(nn.Module):
    """Predicts hidden positions of a standardised feature map from the visible ones.

    Input (B, C, G, G) features with hidden positions zeroed and a (B, 1, G, G) mask
    (1 = hidden); output (B, C, G, G). Dilated 3×3 convolutions give every position a
    receptive field of ±7 grid steps, wider than a hidden patch.
    """

    def __init__(self, channels: int, hidden: int = 128):
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(channels + 1, hidden, 1), nn.GELU())
        self.body = nn.Sequential(_block(hidden, hidden, 1), _block(hidden, hidden, 2), _block(hidden, hidden, 4),
                                  _block(hidden, hidden, 1))
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.inp(torch.cat([z * (1 - mask), mask], 1))))


class DistillDecoder(nn.Module):
    """Reverse-distillation student: squeeze to a stride-32 bottleneck, decode every tapped block."""

    def __init__(self, channels: int, hidden: int = 128, bottleneck: int = 32):
        super().__init__()
        self.enc = nn.Sequential(_block(channels, hidden), nn.Conv2d(hidden, hidden, 3, 2, 1), nn.GELU(),
                                 nn.Conv2d(hidden, bottleneck, 1))
        self.dec = nn.Sequential(nn.Conv2d(bottleneck, hidden, 1), nn.GELU(),
                                 nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 _block(hidden, hidden), _block(hidden, hidden), nn.Conv2d(hidden, channels, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g = z.shape[-1]
        # Pad odd grids (160 px: 10×10 is even, but keep any size working) to an even side.
        pad = g % 2
        zz = F.pad(z, (0, pad, 0, pad), mode="replicate") if pad else z
        return self.dec(self.enc(zz))[..., :g, :g]


def build_network(cfg: ReconConfig) -> nn.Module:
    c = sum(layer_channels(cfg.architecture, cfg.layers))
    if cfg.kind == "inpaint":
        return FeatureInpainter(c, cfg.hidden)
    return DistillDecoder(c, cfg.hidden, cfg.bottleneck)


# --------------------------------------------------------------------------------------------
# masks, errors, pooling


def random_patch_mask(batch: int, g: int, patch: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """(B, 1, G, G) random masks hiding about ``ratio`` of ``patch``×``patch`` cells (1 = hidden)."""
    cells = math.ceil(g / patch)
    m = (torch.rand(batch, 1, cells, cells, generator=gen) < ratio).float()
    return m.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :g, :g]


def partition_masks(g: int, patch: int) -> torch.Tensor:
    """(K, 1, G, G) masks that hide every position exactly once: patches on a 2×2 lattice of patches.

    Mask k hides the patches whose (row, column) patch indices are congruent to k's
    offsets modulo 2, so each hidden patch is surrounded by visible ones.
    """
    idx = torch.arange(g) // patch
    masks = []
    for dr in (0, 1):
        for dc in (0, 1):
            masks.append(((idx[:, None] % 2 == dr) & (idx[None, :] % 2 == dc)).float())
    return torch.stack(masks)[:, None]


def split_channels(cfg: ReconConfig) -> list[int]:
    return layer_channels(cfg.architecture, cfg.layers)


def position_error(cfg: ReconConfig, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(B, G, G) per-position error: mean squared error over channels (inpaint) or 1 − cosine per block (distill)."""
    if cfg.kind == "inpaint":
        return ((z - r) ** 2).mean(1)
    errs = [1 - F.cosine_similarity(a, b, dim=1) for a, b in zip(z.split(split_channels(cfg), 1),
                                                                   r.split(split_channels(cfg), 1), strict=True)]
    return torch.stack(errs).mean(0)


def region_grid(g: int, region: Sequence[float]) -> torch.Tensor:
    """(G, G) boolean mask of the scored box on the grid (at least one position)."""
    top, bottom, left, right = region
    m = torch.zeros(g, g, dtype=torch.bool)
    r0, r1 = round(top * g), max(round(bottom * g), round(top * g) + 1)
    c0, c1 = round(left * g), max(round(right * g), round(left * g) + 1)
    m[r0:r1, c0:c1] = True
    return m


def pool_maps(cfg: ReconConfig, maps: torch.Tensor) -> torch.Tensor:
    """(B,) scores: the error maps (B, G, G) pooled over the scored box."""
    inside = maps[:, region_grid(maps.shape[-1], cfg.region)]
    if cfg.pooling == "mean":
        return inside.mean(1)
    k = max(1, round(cfg.top_fraction * inside.shape[1]))
    return inside.topk(k, dim=1).values.mean(1)


# --------------------------------------------------------------------------------------------
# the detector


class FeatureReconDetector:
    """A trained reconstruction network with the healthy feature statistics it standardises with."""

    def __init__(self, cfg: ReconConfig, net: nn.Module, mean: torch.Tensor, std: torch.Tensor,
                 error_mean: torch.Tensor | None = None):
        cfg.validate()
        self.cfg, self.net = cfg, net.eval()
        self.mean, self.std = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)
        #: (G, G) mean error of the healthy training films per position (``error_norm``).
        self.error_mean = None if error_mean is None else error_mean.float()

    def fit_error_norm(self, train_maps: np.ndarray) -> None:
        """Per-position mean error over the healthy training films (used when ``cfg.error_norm``)."""
        self.error_mean = torch.as_tensor(self.error_maps(train_maps, normalise=False)).mean(0).clamp_min(1e-6)

    def standardise(self, maps: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(maps, dtype=np.float32)) if isinstance(maps, np.ndarray) else maps.float()
        return (t - self.mean) / self.std

    def _reconstruct_error(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.kind == "distill":
            return position_error(self.cfg, z, self.net(z))
        err = torch.zeros(z.shape[0], z.shape[-2], z.shape[-1])
        for m in partition_masks(z.shape[-1], self.cfg.patch):
            mb = m.expand(z.shape[0], 1, -1, -1)
            e = position_error(self.cfg, z, self.net(z, mb))
            err += e * m[0]
        return err

    @torch.inference_mode()
    def error_maps(self, maps: np.ndarray, batch_size: int = 64, *, normalise: bool = True) -> np.ndarray:
        """(N, G, G) per-position error for raw feature maps (N, C, G, G) from :func:`extract_maps`;
        divided by the healthy per-position mean when ``cfg.error_norm`` (and ``normalise``)."""
        out = [self._reconstruct_error(self.standardise(maps[i : i + batch_size])) for i in range(0, len(maps), batch_size)]
        err = torch.cat(out) if out else torch.zeros(0, 0, 0)
        if normalise and self.cfg.error_norm:
            if self.error_mean is None:
                raise ValueError("error_norm is set but the healthy per-position error was never fitted")
            err = err / self.error_mean
        return err.numpy()

    def score_maps(self, error_maps: np.ndarray) -> np.ndarray:
        """(N,) float64 scores from error maps."""
        return pool_maps(self.cfg, torch.as_tensor(error_maps)).double().numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        sd = {f"net.{k}": v.detach().clone().contiguous() for k, v in self.net.state_dict().items()}
        sd["stats.mean"] = self.mean.flatten().clone()
        sd["stats.std"] = self.std.flatten().clone()
        if self.error_mean is not None:
            sd["stats.error_mean"] = self.error_mean.clone().contiguous()
        return sd

    @classmethod
    def from_tensors(cls, cfg: ReconConfig, tensors: dict[str, torch.Tensor]) -> FeatureReconDetector:
        net = build_network(cfg)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        return cls(cfg, net, tensors["stats.mean"], tensors["stats.std"], tensors.get("stats.error_mean"))


def _one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR | None:
    """One-cycle schedule over ``steps`` optimiser steps, warming up over 10 % of them and at least two
    (torch's schedule divides by zero when its warm-up is one step long); None (constant rate) under 4 steps."""
    if steps < 4:
        return None
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2 / steps))


def train_recon(
    cfg: ReconConfig,
    train_maps: np.ndarray,
    *,
    val_maps: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> tuple[FeatureReconDetector, list[dict[str, float]]]:
    """Train on healthy feature maps (N, C, G, G); returns the detector and per-epoch loss history.

    ``val_maps`` (healthy validation films only) is scored after each epoch for the
    history; it chooses nothing.
    """
    cfg.validate()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t = torch.as_tensor(np.asarray(train_maps, dtype=np.float32))
    mean = t.mean(dim=(0, 2, 3))
    std = t.std(dim=(0, 2, 3)) + 1e-4
    net = build_network(cfg)
    det = FeatureReconDetector(cfg, net, mean, std)
    z_all = det.standardise(t)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(z_all) / cfg.batch_size)
    sched = _one_cycle(opt, cfg.lr, steps)
    history: list[dict[str, float]] = []
    g = z_all.shape[-1]
    for ep in range(cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(len(z_all), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            z = z_all[perm[i : i + cfg.batch_size]]
            if cfg.kind == "inpaint":
                m = random_patch_mask(len(z), g, cfg.patch, cfg.mask_ratio, gen)
                e = ((net(z, m) - z) ** 2).mean(1, keepdim=True)
                loss = (e * m).sum() / m.sum().clamp_min(1.0)
            else:
                loss = position_error(cfg, z, net(z)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(z)
            n += len(z)
        net.eval()
        row = {"epoch": ep + 1, "loss": total / max(n, 1), "seconds": time.perf_counter() - t0}
        if val_maps is not None and len(val_maps):
            row["val_normal_score"] = float(det.score_maps(det.error_maps(val_maps, normalise=False)).mean())
        history.append(row)
        if log:
            log(f"  epoch {ep + 1}/{cfg.epochs} loss {row['loss']:.4f}" +
                (f" val-normal score {row['val_normal_score']:.4f}" if "val_normal_score" in row else ""))
        if progress:
            progress(ep + 1, cfg.epochs)
    if cfg.error_norm:
        det.fit_error_norm(train_maps)
    return det, history


def upsample_map(error_map: np.ndarray, size: int) -> np.ndarray:
    """A (G, G) error map bilinearly resized to the (size, size) input it came from, for overlays."""
    t = torch.as_tensor(np.asarray(error_map, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


# --------------------------------------------------------------------------------------------
# stage outputs handed over by the classification pass


def _same_weights(a: Sequence[nn.Module], b: Sequence[nn.Module]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        sa, sb = x.state_dict(), y.state_dict()
        if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


class StageHandoff:
    """Frozen-stage outputs that another pass over the same prepared image already computed.

    Classifiers trained with frozen ImageNet stages (``freeze_stages``, the release's CPU recipe)
    compute, on their way to the logits, exactly the feature maps a detector with the classifier's
    input spec taps. ``predict.Predictor`` offers them (:meth:`offer`, keyed by the prepared image,
    its spec and the architecture); :func:`detector_maps` takes them (:meth:`take`) instead of running
    its own backbone pass, once it has checked (once per offering network) that the network's stem
    and stages hold the detector's pretrained weights bit for bit. A detector whose spec differs
    never matches a key and keeps its own pass. Thread-safe: app sessions share one process.
    """

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict[tuple, tuple[nn.Module, dict[int, torch.Tensor]]] = OrderedDict()
        self._checked: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bool]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        #: Images whose maps were taken from an offer / computed by the detector's own pass.
        self.taken, self.missed = 0, 0

    @staticmethod
    def key(images_u8: np.ndarray, spec: InputSpec, architecture: str) -> tuple:
        return hashlib.sha1(np.ascontiguousarray(images_u8).tobytes()).hexdigest(), images_u8.shape, spec, architecture

    def offer(self, images_u8: np.ndarray, spec: InputSpec, architecture: str, source: nn.Module,
              outputs: dict[int, torch.Tensor]) -> None:
        """Stage outputs ``{stage index: (N, C, h, w)}`` of ``source`` (the whole network) for prepared images."""
        k = self.key(images_u8, spec, architecture)
        with self._lock:
            self._items[k] = (source, outputs)
            self._items.move_to_end(k)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def _holds_backbone(self, source: nn.Module, backbone: nn.Module, architecture: str, depth: int) -> bool:
        with self._lock:
            memo = self._checked.setdefault(source, {})
            k = (id(backbone), architecture, depth)
            if k not in memo:
                stem_a, stages_a, _ = model_stages(source, architecture)
                stem_b, stages_b, _ = model_stages(backbone, architecture)
                memo[k] = _same_weights(stem_a, stem_b) and _same_weights(stages_a[: depth + 1], stages_b[: depth + 1])
            return memo[k]

    def take(self, images_u8: np.ndarray, spec: InputSpec, architecture: str, layers: Sequence[str],
             backbone: nn.Module) -> dict[int, torch.Tensor] | None:
        """The offered outputs of ``layers`` when an offer for these images holds them and came from a
        network whose stages up to the deepest tap equal ``backbone``'s; else None."""
        want = [int(x) for x in layers]
        with self._lock:
            hit = self._items.get(self.key(images_u8, spec, architecture))
        ok = hit is not None and all(i in hit[1] for i in want)
        if not ok or not self._holds_backbone(hit[0], backbone, architecture, max(want)):  # type: ignore[index]
            self.missed += 1
            return None
        self.taken += 1
        return {i: hit[1][i] for i in want}  # type: ignore[index]


#: The process's hand-off from the classification pass to the feature reconstruction detectors.
STAGE_HANDOFF = StageHandoff()


def detector_maps(det: FeatureReconDetector, model: nn.Module, spec: InputSpec, images_u8: np.ndarray) -> np.ndarray:
    """(N, C, G, G) feature maps a detector scores: handed over by the classification pass when it computed
    them for this very image (:data:`STAGE_HANDOFF`, single uploads), else from its own pass through ``model``."""
    arch, layers = det.cfg.architecture, det.cfg.layers
    if len(images_u8) == 1:
        outputs = STAGE_HANDOFF.take(images_u8, spec, arch, layers, model)
        if outputs is not None:
            return taps_on_grid(outputs, layers, grid_size(images_u8.shape[-1])).numpy()
    return extract_maps(model, images_u8, spec, layers, architecture=arch)


@torch.inference_mode()
def score_images(
    det: FeatureReconDetector, model: nn.Module, spec: InputSpec, images_u8: np.ndarray, *, want_maps: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (N,) of prepared uint8 images (N, S, S) through the frozen ``model`` (or the maps the
    classification pass handed over, :func:`detector_maps`); with ``want_maps`` also the error maps
    upsampled to the input size (N, S, S)."""
    maps = detector_maps(det, model, spec, images_u8)
    err = det.error_maps(maps)
    scores = det.score_maps(err)
    if not want_maps:
        return scores, None
    return scores, np.stack([upsample_map(e, images_u8.shape[-1]) for e in err])


def peak_in_mask(error_map: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game: whether the map's maximum (after resizing to the mask's size) falls inside the mask."""
    m = np.asarray(mask, dtype=bool)
    e = upsample_map(error_map, m.shape[-1]) if error_map.shape != m.shape else np.asarray(error_map)
    r, c = np.unravel_index(int(np.argmax(e)), e.shape)
    return bool(m[r, c])
