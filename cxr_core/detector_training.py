"""Fitting healthy-only anomaly detectors and the chest X-ray guard into the registry.

What ``python -m train.anomaly`` (the command line) and the demo build run. Every detector
sees the healthy class of the training split only (NORMAL in the Kermany layout, else the
dataset's ``normal_class``; the validation split is drawn from train/ by patient, as for the
classifiers). Each writes one registry entry with per-image scores on val and test
(``scores.npz``), AUROC/AUPR per split, score histograms and threshold suggestions chosen on
validation. The ``ood`` detector is the guard that tells whether an upload looks like a chest
X-ray at all (fitted on every training CXR, healthy or not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .anomaly import (
    AE_LOSSES,
    FEATURE_METHODS,
    AEConfig,
    FeatureConfig,
    FeatureDetector,
    ThresholdTable,
    autoencoder_scores,
    histogram_data,
    score_metrics,
    select_pooling,
    shared_backbone,
    suggest_thresholds,
    train_autoencoder,
)
from .cards import DatasetInfo, DetectorCard
from .config import InputSpec, normal_class
from .data import Dataset, Sample, load_images, read_dataset, with_validation_split
from .feature_recon import RECON_KINDS, ReconConfig, extract_maps, train_recon
from .preprocess import prepare
from .progress import Progress
from .registry import Entry, write_entry

DETECTORS = ("autoencoder", "features", "recon", "ood", "all")


@dataclass
class AnomalyConfig:
    """One ``python -m train.anomaly`` run; stored in every card it writes."""

    data: str
    out: str | None = None
    detector: str = "all"
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    max_per_split: int | None = None
    target_sensitivity: float = 0.95
    normal_quantile: float = 0.95
    ae: AEConfig = field(default_factory=AEConfig)
    feature_methods: tuple[str, ...] = ("mahalanobis", "knn")
    features: FeatureConfig = field(default_factory=FeatureConfig)
    #: Feature reconstruction detectors fitted by ``--detector recon`` (and ``all``).
    recon_kinds: tuple[str, ...] = ("distill",)
    recon: ReconConfig = field(default_factory=ReconConfig)
    ood_quantile: float = 0.995
    ood_margin: float = 1.5
    ood_max_train: int = 1500
    #: The guard's feature taps; None = ``cxr_core.ood.OOD_FEATURES`` (tests shrink the input size).
    ood_features: FeatureConfig | None = None
    synthetic: bool = False
    notes: str = ""
    #: The healthy class detectors learn (None: NORMAL in the Kermany layout, else a class named normal).
    normal_class: str | None = None

    def args(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("ae", "features", "ood_features", "recon")}
        d["feature_methods"] = list(self.feature_methods)
        d["recon_kinds"] = list(self.recon_kinds)
        return d


def _cap(samples: list[Sample], cap: int | None, seed: int) -> list[Sample]:
    if cap is None or len(samples) <= cap:
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=cap, replace=False))
    return [samples[i] for i in keep]


class _Images:
    """Decode each split once per input spec (the one preprocessing path)."""

    def __init__(self, dataset: Dataset, progress: Progress | None):
        self.dataset, self.progress, self._cache = dataset, progress, {}

    def get(self, name: str, samples: list[Sample], spec: InputSpec) -> np.ndarray:
        key = (name, spec)
        if key not in self._cache:
            cb = (lambda i, n: self.progress(f"decode {name} @{spec.size}px", i, n)) if self.progress else None
            self._cache[key] = load_images(self.dataset, samples, lambda g: prepare(g, spec), progress=cb)
        return self._cache[key]


class _Features:
    """Backbone features of each split, extracted once (every tap, mean+std) and shared by all detectors."""

    def __init__(self, images: _Images, taps: set[str], progress: Progress | None):
        self.images, self.taps, self.progress, self._cache = images, taps, progress, {}

    def get(self, name: str, samples: list[Sample], architecture: str, size: int) -> dict[str, np.ndarray]:
        key = (name, architecture, size)
        if key not in self._cache:
            backbone = shared_backbone(architecture)
            cb = (lambda i, n: self.progress(f"features {name} @{size}px", i, n)) if self.progress else None
            imgs = self.images.get(name, samples, backbone.spec(size))
            self._cache[key] = backbone.extract_all(imgs, sorted(self.taps), progress=cb)
        return self._cache[key]


def _dataset_info(cfg: AnomalyConfig, ds: Dataset, splits: dict[str, list[Sample]], *labels: str) -> DatasetInfo:
    return DatasetInfo.of(ds, {k: len(v) for k, v in splits.items()}, cfg.val_fraction, cfg.seed,
                          train_labels=labels or (cfg.normal_class or "NORMAL",), synthetic=cfg.synthetic)


def _write(
    cfg: AnomalyConfig,
    card: DetectorCard,
    weights: dict[str, torch.Tensor],
    splits: dict[str, list[Sample]],
    scores: dict[str, np.ndarray],
    log: Callable[[str], None],
) -> Entry:
    """Metrics, histograms, thresholds and scores.npz around a fitted detector's scores; write the entry."""
    labels = {s: np.array([x.label != cfg.normal_class for x in splits[s]], dtype=np.int8) for s in scores}
    th = suggest_thresholds(labels["val"], scores["val"], target_sensitivity=cfg.target_sensitivity,
                            normal_quantile=cfg.normal_quantile)
    metrics, at_thr, hists = {}, {}, {}
    for s in scores:
        metrics[s] = score_metrics(labels[s], scores[s])
        at_thr[s] = ThresholdTable(labels[s], scores[s]).metrics(th["threshold"])
        hists[s] = histogram_data(labels[s], scores[s])
    order = [s for s in ("val", "test") if s in scores]
    arrays = {
        "scores": np.concatenate([scores[s] for s in order]).astype(np.float64),
        "labels": np.concatenate([labels[s] for s in order]),
        "paths": np.array([x.path for s in order for x in splits[s]]),
        "splits": np.array([s for s in order for _ in splits[s]]),
        "subtypes": np.array([x.subtype for s in order for x in splits[s]]),
    }
    card = replace(
        card, metrics=metrics, metrics_at_threshold=at_thr, histograms=hists, thresholds=th, threshold=th["threshold"],
        threshold_source={"name": th["chosen"], "split": "val", "note": th["note"]},
        score_direction="higher = less like the healthy training images; flagged when score >= threshold",
    )
    entry = write_entry(cfg.out, card, weights=weights, arrays={"scores.npz": arrays})
    for s in order:
        m = metrics[s]
        auroc = "n/a" if m["auroc"] is None else f"{m['auroc']:.4f}"
        aupr = "n/a" if m["aupr"] is None else f"{m['aupr']:.4f}"
        log(f"  {card.name:<34} {s:>4}: AUROC {auroc}  AUPR {aupr} (chance {m['aupr_chance']:.3f})  n={m['n']}")
    if th["fallback"]:
        log(f"  note: {th['note']}")
    return entry


def _base_card(cfg: AnomalyConfig, ds: Dataset, splits: dict[str, list[Sample]], kind: str, method: str,
               **fields: Any) -> DetectorCard:
    """What every healthy-only detector's card says, with ``fields`` (name, architecture, config, ...) on top."""
    normal = cfg.normal_class or "NORMAL"
    return DetectorCard(
        kind=kind, task="anomaly", method=method, normal_class=cfg.normal_class, notes=cfg.notes,
        classes=("NORMAL", "PNEUMONIA") if normal == "NORMAL" else (normal, f"not {normal}"),
        dataset=_dataset_info(cfg, ds, splits), **fields,
    )


def fit_autoencoder(cfg: AnomalyConfig, ds: Dataset, splits: dict[str, list[Sample]], images: _Images,
                    progress: Progress | None, log: Callable[[str], None]) -> Entry:
    ae = cfg.ae
    spec = InputSpec(size=ae.size, channels=1, mean=(0.0,), std=(1.0,))
    t0 = time.perf_counter()
    train = images.get("train_normal", splits["train_normal"], spec)
    val_normal = [i for i, s in enumerate(splits["val"]) if s.label == cfg.normal_class]
    val = images.get("val", splits["val"], spec)
    model, history = train_autoencoder(train, ae, val_u8=val[val_normal], device=cfg.device, progress=progress, log=log)
    model = model.cpu()
    scores = {}
    for s in ("val", "test"):
        if splits[s]:
            cb = (lambda i, n, s=s: progress(f"score {s}", i, n)) if progress else None
            scores[s] = autoencoder_scores(model, images.get(s, splits[s], spec), ae.loss, ae.region, progress=cb)[0]
    card = _base_card(
        cfg, ds, splits, "autoencoder", "autoencoder", name=f"Autoencoder ({ae.loss}, {ae.size}px)",
        detector=f"autoencoder-{ae.loss}", architecture="conv_autoencoder", pretrained=False, input=spec,
        config=ae.to_dict(),
        score=f"mean {ae.loss} reconstruction error over the central box {list(ae.region)} (top, bottom, left, right)",
        training={
            "args": cfg.args(),
            "epochs_run": len(history),
            "seconds_total": time.perf_counter() - t0,
            "device": f"{cfg.device} ({torch.get_num_threads()} threads)" if cfg.device == "cpu" else cfg.device,
            "n_train_normal": len(splits["train_normal"]),
            "history": history,
        },
    )
    return _write(cfg, card, model.state_dict(), splits, scores, log)


def fit_feature_detectors(cfg: AnomalyConfig, ds: Dataset, splits: dict[str, list[Sample]], features: _Features,
                          progress: Progress | None, log: Callable[[str], None]) -> list[Entry]:
    fc = cfg.features
    t0 = time.perf_counter()
    backbone = shared_backbone(fc.architecture)
    spec = backbone.spec(fc.size)
    feats = {}
    for s in ("train_normal", "val", "test"):
        if splits[s]:
            feats[s] = select_pooling(features.get(s, splits[s], fc.architecture, fc.size), fc.layers, fc.pooling)
    t_feat = time.perf_counter() - t0
    made = []
    for method in cfg.feature_methods:
        mcfg = replace(fc, method=method)
        t1 = time.perf_counter()
        det = FeatureDetector.fit(mcfg, feats["train_normal"])
        scores = {s: det.score(feats[s]) for s in ("val", "test") if s in feats}
        label = "Mahalanobis" if method == "mahalanobis" else f"{mcfg.k}-NN distance"
        card = _base_card(
            cfg, ds, splits, "detector", "features", name=f"Pretrained features, {label}", detector=f"features-{method}",
            architecture=fc.architecture, pretrained=True, pretrained_source=backbone.source, input=spec,
            config=mcfg.to_dict(),
            score=(f"{label} of ImageNet {fc.architecture} features ({fc.pooling}-pooled blocks "
                   f"{', '.join(fc.layers)}) to the healthy training images, averaged over blocks"),
            training={
                "args": cfg.args(),
                "seconds_total": t_feat + time.perf_counter() - t1,
                "seconds_features": t_feat,
                "device": f"cpu ({torch.get_num_threads()} threads)",
                "n_train_normal": len(splits["train_normal"]),
            },
        )
        made.append(_write(cfg, card, det.tensors, splits, scores, log))
    return made


#: One line per network kind, for the card's name and score description.
RECON_NAMES = {
    "inpaint": "Feature in-painting",
    "distill": "Feature reverse distillation",
}


def fit_feature_recon(cfg: AnomalyConfig, ds: Dataset, splits: dict[str, list[Sample]], images: _Images,
                      progress: Progress | None, log: Callable[[str], None]) -> list[Entry]:
    """Feature reconstruction detectors (``cxr_core.feature_recon``) on frozen ImageNet feature maps."""
    rc = cfg.recon
    backbone = shared_backbone(rc.architecture)
    spec = backbone.spec(rc.size)
    t0 = time.perf_counter()
    maps = {}
    for s in ("train_normal", "val", "test"):
        if splits[s]:
            cb = (lambda i, n, s=s: progress(f"feature maps {s} @{rc.size}px", i, n)) if progress else None
            maps[s] = extract_maps(backbone.model, images.get(s, splits[s], spec), spec, rc.layers, progress=cb)
    t_feat = time.perf_counter() - t0
    made = []
    for kind in cfg.recon_kinds:
        kcfg = ReconConfig.from_dict({**rc.to_dict(), "kind": kind})
        t1 = time.perf_counter()
        det, history = train_recon(kcfg, maps["train_normal"], log=log)
        t_train = time.perf_counter() - t1
        t2 = time.perf_counter()
        err_maps = {s: det.error_maps(maps[s]) for s in ("val", "test") if s in maps}
        scores = {s: det.score_maps(e) for s, e in err_maps.items()}
        n_scored = sum(len(v) for v in scores.values())
        val_normal = np.array([x.label == cfg.normal_class for x in splits["val"]])
        # The error drawn at full colour on the maps: 99th percentile over healthy validation films' positions.
        map_scale = float(np.quantile(err_maps["val"][val_normal], 0.99)) if val_normal.any() else None
        err = "mean squared error" if kind == "inpaint" else "1 − cosine similarity"
        card = _base_card(
            cfg, ds, splits, "detector", "feature_recon", name=f"{RECON_NAMES[kind]} ({rc.size}px)",
            detector=f"feature-recon-{kind}", family="feature reconstruction", architecture=rc.architecture,
            pretrained=True, pretrained_source=backbone.source, input=spec, config=kcfg.to_dict(), map_scale=map_scale,
            map_grid=int(maps["train_normal"].shape[-1]),
            score=(f"{err} of reconstructed ImageNet {rc.architecture} feature maps (blocks {', '.join(rc.layers)}, "
                   f"stride-16 grid), {kcfg.pooling} over the box {list(kcfg.region)} (top, bottom, left, right)"),
            training={
                "args": cfg.args(),
                "seconds_total": t_feat + t_train,
                "seconds_features": t_feat,
                "seconds_train": t_train,
                "ms_per_image_recon": 1000 * (time.perf_counter() - t2) / max(n_scored, 1),
                "device": f"cpu ({torch.get_num_threads()} threads)",
                "n_train_normal": len(splits["train_normal"]),
                "history": history,
            },
        )
        made.append(_write(cfg, card, det.tensors(), splits, scores, log))
    return made


def fit_ood(cfg: AnomalyConfig, ds: Dataset, splits: dict[str, list[Sample]], features: _Features,
            progress: Progress | None, log: Callable[[str], None]) -> Entry:
    from .ood import OOD_FEATURES, fit_ood_guard

    oc = cfg.ood_features or OOD_FEATURES
    t0 = time.perf_counter()
    backbone = shared_backbone(oc.architecture)
    spec = backbone.spec(oc.size)
    feats = {}
    for s in ("train_normal", "train_sick", "val", "test"):
        if splits.get(s):
            feats[s] = select_pooling(features.get(s, splits[s], oc.architecture, oc.size), oc.layers, oc.pooling)
    feats["train_all"] = {k: np.concatenate([feats[s][k] for s in ("train_normal", "train_sick") if s in feats])
                          for k in oc.layers}
    guard = fit_ood_guard(feats["train_all"], feats["val"], quantile=cfg.ood_quantile, margin=cfg.ood_margin, cfg=oc)
    scores = {s: guard.detector.score(feats[s]) for s in ("val", "test") if s in feats}
    rates = {s: float((scores[s] >= guard.threshold).mean()) for s in scores}
    card = DetectorCard(
        kind="detector", task="ood", method="ood", name="Chest X-ray look-alike guard", detector="ood-features-mahalanobis",
        architecture=oc.architecture, pretrained=True, pretrained_source=backbone.source, input=spec, config=oc.to_dict(),
        threshold=guard.threshold,
        thresholds={"quantile": cfg.ood_quantile, "margin": cfg.ood_margin, "split": "val", "note": guard.note},
        cheap_checks=guard.cheap_checks(), false_alarm_rate=rates,
        dataset=_dataset_info(cfg, ds, splits, "NORMAL", "PNEUMONIA"),
        training={"args": cfg.args(), "seconds_total": time.perf_counter() - t0,
                  "n_train": len(splits["train_normal"]) + len(splits.get("train_sick", []))},
    )
    entry = write_entry(cfg.out, card, weights=guard.detector.tensors)
    log(f"  OOD guard: threshold {guard.threshold:.3f}; real CXRs flagged: "
        + ", ".join(f"{s} {r:.1%}" for s, r in rates.items()))
    return entry


def _normal_label(ds: Dataset, wanted: str | None) -> str:
    """The label of healthy images: NORMAL in the Kermany layout, else ``wanted`` or a class named normal."""
    if ds.layout == "kermany":
        return "NORMAL"
    found = normal_class(ds.tasks[ds.task], wanted)
    if found is None:
        raise ValueError(f"{ds.root} has no class named normal among {list(ds.tasks[ds.task])}: name the healthy "
                         "class with --normal-class")
    return found


def run(cfg: AnomalyConfig, progress: Progress | None = None, log: Callable[[str], None] = print) -> list[Entry]:
    """Fit the requested detectors; returns the entries written."""
    if cfg.detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}")
    bad = [m for m in cfg.feature_methods if m not in FEATURE_METHODS]
    if bad:
        raise ValueError(f"unknown feature method(s) {bad}; expected {FEATURE_METHODS}")
    bad = [k for k in cfg.recon_kinds if k not in RECON_KINDS]
    if bad:
        raise ValueError(f"unknown feature reconstruction kind(s) {bad}; expected {RECON_KINDS}")
    cfg.recon.validate()
    if cfg.ae.loss not in AE_LOSSES:
        raise ValueError(f"--ae-loss must be one of {AE_LOSSES}")
    ds = with_validation_split(read_dataset(cfg.data), cfg.val_fraction, cfg.seed)
    cfg = replace(cfg, normal_class=_normal_label(ds, cfg.normal_class))
    train = ds.split("train")
    splits = {
        "train_normal": _cap([s for s in train if s.label == cfg.normal_class], cfg.max_per_split, cfg.seed),
        "val": _cap(ds.split("val"), cfg.max_per_split, cfg.seed),
        "test": _cap(ds.split("test"), cfg.max_per_split, cfg.seed),
    }
    if not splits["train_normal"]:
        raise ValueError(f"{cfg.data} has no {cfg.normal_class} training images to fit a healthy-only detector on")
    if not splits["val"]:
        raise ValueError(f"{cfg.data} has no validation images to choose a threshold on")
    images = _Images(ds, progress)
    taps: set[str] = set()
    if cfg.detector in ("features", "all"):
        taps |= set(cfg.features.layers)
    if cfg.detector in ("ood", "all"):
        from .ood import OOD_FEATURES

        taps |= set((cfg.ood_features or OOD_FEATURES).layers)
        # The guard asks "is this a CXR at all", so it learns from sick and healthy films alike.
        sick = [s for s in train if s.label != cfg.normal_class]
        splits["train_sick"] = _cap(sick, max(cfg.ood_max_train - len(splits["train_normal"]), 0), cfg.seed)
    features = _Features(images, taps, progress)
    made: list[Entry] = []
    if cfg.detector in ("features", "all"):
        made += fit_feature_detectors(cfg, ds, splits, features, progress, log)
    if cfg.detector in ("recon", "all"):
        made += fit_feature_recon(cfg, ds, splits, images, progress, log)
    if cfg.detector in ("ood", "all"):
        made.append(fit_ood(cfg, ds, splits, features, progress, log))
    if cfg.detector in ("autoencoder", "all"):
        made.append(fit_autoencoder(cfg, ds, splits, images, progress, log))
    return made
