"""One call from a decoded image to what the Predict page shows.

``Predictor`` holds the registry's classifiers (binary and 3-class) and turns a
grayscale image into a ``Prediction``: label and probabilities per task, the
embedding for neighbour search and map placement, and per-stage timings. Other
capabilities (neighbours, anomaly score, Grad-CAM) attach to the same object so
that the page makes one call.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .calibration import apply_temperature, calibrated_threshold
from .config import ordered_tasks
from .inference import LoadedClassifier, infer, load_classifier
from .metrics import predicted_class
from .preprocess import prepare
from .registry import EntryStatus, list_entries, select, usable


@dataclass
class TaskResult:
    """One classifier's answer for one image."""

    task: str
    entry_id: str
    classes: list[str]
    probs: list[float]  # the network's probabilities (what the index stores and decisions use)
    label: str
    confidence: float  # the label's shown (calibrated) probability
    threshold: float  # on the network's P(positive) (binary)
    tta: int
    #: The card's validation-fitted temperature for ``tta`` views (1.0: a card without calibration).
    temperature: float = 1.0
    #: Which stored operating point ``threshold`` is ("default", "youden_val", "sens95_val", "argmax").
    threshold_source: str | None = None

    @functools.cached_property
    def shown(self) -> list[float]:
        """The probabilities the app shows: temperature-scaled (same ranking and decisions as ``probs``)."""
        if self.temperature == 1.0:
            return list(self.probs)
        return [float(v) for v in apply_temperature(np.asarray([self.probs]), self.task, self.temperature)[0]]

    @property
    def shown_threshold(self) -> float:
        """``threshold`` on the shown (calibrated) scale: the same decisions."""
        return calibrated_threshold(self.threshold, self.temperature) if self.temperature != 1.0 else self.threshold

    @property
    def as_dict(self) -> dict[str, float]:
        """Class → shown probability."""
        return dict(zip(self.classes, self.shown, strict=True))


@dataclass
class Prediction:
    """Everything computed for one image."""

    results: dict[str, TaskResult]
    embedding: np.ndarray | None  # L2-normalised penultimate features of the binary model (or 3-class)
    embedding_entry: str | None
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    #: Per task, {module name: its output (1, C, h, w)} for every Grad-CAM layer the page offers
    #: (``models.gradcam_layer_names``): the page explains from these without running the
    #: network again (``Explainer.explain_features``).
    feature_maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)


def decide(task: str, classes: list[str], probs: np.ndarray, threshold: float) -> tuple[str, float]:
    """The label shown for ``probs``: the binary task uses the card's threshold on P(pneumonia)."""
    idx = int(predicted_class(task, np.asarray(probs)[None], threshold)[0])
    return classes[idx], float(probs[idx])


def task_result(clf: LoadedClassifier, probs: np.ndarray, tta: int) -> TaskResult:
    """One classifier's answer for one image: the label from the network's probabilities and the card's
    threshold, shown with the card's temperature."""
    label, _ = decide(clf.task, clf.classes, probs, clf.threshold)
    res = TaskResult(clf.task, clf.entry.id, clf.classes, [float(p) for p in probs], label, 0.0, clf.threshold, tta,
                     clf.temperature(tta), clf.threshold_source)
    res.confidence = res.shown[clf.classes.index(label)]
    return res


def _cam_layers(clf: LoadedClassifier) -> list[str]:
    from .models import gradcam_layer_names

    try:
        return gradcam_layer_names(clf.model, clf.architecture)
    except (ValueError, KeyError, AttributeError):  # an architecture without Grad-CAM layers: nothing to keep
        return []


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def shared_trunk_depth(a: LoadedClassifier, b: LoadedClassifier) -> int:
    """How many leading stages (after the stem) two classifiers share bit for bit; 0 for none.

    Classifiers trained with frozen pretrained stages (``freeze_stages``, the CPU recipe) carry
    identical copies of them: one pass through the common trunk then serves both. Compared on
    the weights themselves, not on what the cards say.
    """
    from .models import _unwrap, model_stages

    arch = a.architecture
    if arch != b.architecture or a.spec != b.spec:
        return 0
    try:
        stem_a, stages_a, _ = model_stages(_unwrap(a.model), arch)
        stem_b, stages_b, _ = model_stages(_unwrap(b.model), arch)
    except ValueError:
        return 0
    if not stem_a or not all(_same_weights(x, y) for x, y in zip(stem_a, stem_b, strict=True)):
        return 0
    depth = 0
    for x, y in zip(stages_a, stages_b, strict=True):
        if not _same_weights(x, y):
            break
        depth += 1
    return depth


class Predictor:
    """The registry's classifiers, loaded once, applied to one image at a time."""

    def __init__(self, classifiers: dict[str, LoadedClassifier]):
        self.classifiers = classifiers
        tasks = list(classifiers)
        #: Per task, the modules whose outputs a prediction keeps for Grad-CAM (every offered layer).
        self._kept_layers = {task: _cam_layers(clf) for task, clf in classifiers.items()}
        #: Leading stages every classifier shares (see :func:`shared_trunk_depth`); 0 when none.
        self.trunk_depth = (
            min(shared_trunk_depth(classifiers[tasks[0]], classifiers[t]) for t in tasks[1:]) if len(tasks) > 1 else 0
        )
        #: Trunk stages (module name → stage index) whose outputs the shared pass offers to the feature
        #: reconstruction detectors (``feature_recon.STAGE_HANDOFF``); empty: nothing is offered.
        self.handoff_stages = self._handoff_stages()

    def _handoff_stages(self) -> dict[str, int]:
        """The shared trunk's stages a feature reconstruction detector may tap (``feature_recon.RECON_TAPS``)."""
        from .archs import arch_spec, named_stages
        from .feature_recon import RECON_TAPS
        from .models import _unwrap

        if not self.trunk_depth:
            return {}
        first = next(iter(self.classifiers.values()))
        try:
            _, stages, _ = named_stages(arch_spec(first.architecture), _unwrap(first.model))
        except (ValueError, KeyError):
            return {}
        return {name: i for i, (name, _) in enumerate(stages[: self.trunk_depth]) if str(i) in RECON_TAPS}

    @classmethod
    def from_registry(cls, root: str | None = None, statuses: list[EntryStatus] | None = None) -> Predictor:
        statuses = statuses if statuses is not None else list_entries(root)
        loaded: dict[str, LoadedClassifier] = {}
        # One classifier per task (the marked default, else the newest): binary, multiclass, then any other.
        for task in ordered_tasks(str(s.info.task) for s in usable(statuses, "classifier") if s.info):
            entry = select(statuses, "classifier", task)
            if entry is not None:
                loaded[task] = load_classifier(entry)
        return cls(loaded)

    @property
    def tasks(self) -> list[str]:
        return list(self.classifiers)

    def embedding_model(self) -> LoadedClassifier | None:
        """The classifier whose embeddings find the reference cases: the first task in display order."""
        return next(iter(self.classifiers.values()), None)

    def _shared_pass(
        self, gray: np.ndarray
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]], dict[str, float]]:
        """Both classifiers through their common trunk once: {task: (probs, embedding, kept layer outputs)}."""
        first = next(iter(self.classifiers.values()))
        t0 = time.perf_counter()
        x = prepare(gray, first.spec)
        t1 = time.perf_counter()
        out, timings = self._trunk_pass(x[None], keep=True)
        timings["preprocess_shared"] = t1 - t0
        return out, timings

    def _trunk_pass(
        self, x_u8: np.ndarray, keep: bool
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]], dict[str, float]]:
        """Prepared images (N, S, S) through the common trunk once, then each classifier's own stages.

        ``keep``: also return the Grad-CAM layers' outputs (the single-upload path); a batch leaves them out.
        """
        from .models import _unwrap, feature_steps, logits_to_probs, model_stages, run_steps
        from .preprocess import normalize, to_float

        first = next(iter(self.classifiers.values()))
        arch = first.architecture
        trunk_len = len(model_stages(_unwrap(first.model), arch)[0]) + self.trunk_depth  # stem + shared stages
        t1 = time.perf_counter()
        # A copy when read-only (arrays stacked from cached uploads): torch warns on non-writable memory.
        h = normalize(to_float(torch.from_numpy(np.ascontiguousarray(x_u8) if x_u8.flags.writeable else np.array(x_u8))), first.spec)
        h = h.contiguous(memory_format=torch.channels_last)
        # Module names are the same in both models (one architecture), so the trunk's kept outputs serve both.
        wanted_any = {name for names in self._kept_layers.values() for name in names} | set(self.handoff_stages) if keep else set()
        h, trunk_kept = run_steps(feature_steps(first.model, arch)[:trunk_len], h, wanted_any)
        if keep and self.handoff_stages:
            from .feature_recon import STAGE_HANDOFF

            # The frozen stages' outputs for a feature reconstruction detector with this input spec (no second pass).
            STAGE_HANDOFF.offer(x_u8, first.spec, arch, _unwrap(first.model),
                                {i: trunk_kept[name] for name, i in self.handoff_stages.items() if name in trunk_kept})
        t2 = time.perf_counter()
        out, timings = {}, {"classify_shared_trunk": t2 - t1}
        for task, clf in self.classifiers.items():
            t3 = time.perf_counter()
            wanted = set(self._kept_layers[task]) if keep else set()
            f, kept = run_steps(feature_steps(clf.model, arch)[trunk_len:], h, wanted)
            kept.update({name: v for name, v in trunk_kept.items() if name in wanted})
            net = _unwrap(clf.model)
            emb = net.forward_head(f, pre_logits=True)
            probs = logits_to_probs(net.forward_head(f).float(), task)
            out[task] = (probs.cpu().numpy(), emb.float().cpu().numpy(), {k: v.float().cpu() for k, v in kept.items()})
            timings[f"classify_{task}"] = time.perf_counter() - t3
        return out, timings

    @torch.inference_mode()
    def predict(self, gray: np.ndarray, tta: int = 1) -> Prediction:
        results: dict[str, TaskResult] = {}
        timings: dict[str, float] = {}
        embedding, emb_entry = None, None
        feature_maps: dict[str, dict[str, torch.Tensor]] = {}
        emb_model = self.embedding_model()
        shared: dict[str, tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]] = {}
        if self.trunk_depth and tta == 1:  # with TTA each view runs the full networks (rarely used; simpler)
            shared, timings = self._shared_pass(gray)
        for task, clf in self.classifiers.items():
            want = clf is emb_model
            t0 = t1 = t2 = time.perf_counter()
            if task in shared:
                probs, emb, fmap = shared[task]
                feature_maps[task] = fmap
            else:
                x = prepare(gray, clf.spec)
                t1 = time.perf_counter()
                sinks: dict[str, list[torch.Tensor]] = {name: [] for name in self._kept_layers[task]}
                probs, emb = infer(clf.model, x[None], clf.spec, task, tta=tta, want_embeddings=True, keep_layers=sinks,
                                   architecture=clf.architecture)
                feature_maps[task] = {name: v[0] for name, v in sinks.items() if v}
                t2 = time.perf_counter()
            results[task] = task_result(clf, probs[0], tta)
            if task not in shared:
                timings[f"preprocess_{task}"] = t1 - t0
                timings[f"classify_{task}"] = t2 - t1
            if want and emb is not None:
                v = emb[0].astype(np.float32)
                embedding, emb_entry = v / max(float(np.linalg.norm(v)), 1e-12), clf.entry.id
        return Prediction(results, embedding, emb_entry, timings, feature_maps=feature_maps)

    @torch.inference_mode()
    def predict_batch(self, grays: list[np.ndarray], batch_size: int = 16) -> list[Prediction]:
        """:meth:`predict` for many images at once (no TTA, no kept Grad-CAM layers): the worklist's path.

        The images are prepared one by one and go through the networks ``batch_size`` at a time
        (one pass through the shared trunk when the classifiers have one). The labels,
        probabilities and embeddings equal :meth:`predict`'s for each image (to float rounding).
        """
        if not grays:
            return []
        emb_model = self.embedding_model()
        probs: dict[str, list[np.ndarray]] = {task: [] for task in self.classifiers}
        embs: dict[str, list[np.ndarray]] = {task: [] for task in self.classifiers}
        specs = {task: clf.spec for task, clf in self.classifiers.items()}
        one_spec = len(set(map(repr, specs.values()))) == 1
        for start in range(0, len(grays), batch_size):
            chunk = grays[start : start + batch_size]
            if self.trunk_depth:
                first = next(iter(self.classifiers.values()))
                x = np.stack([prepare(g, first.spec) for g in chunk])
                shared, _ = self._trunk_pass(x, keep=False)
                for task, (p, e, _kept) in shared.items():
                    probs[task].append(p)
                    embs[task].append(e)
                continue
            prepared: dict[str, np.ndarray] = {}
            for task, clf in self.classifiers.items():
                key = "one" if one_spec else task
                if key not in prepared:
                    prepared[key] = np.stack([prepare(g, clf.spec) for g in chunk])
                p, e = infer(clf.model, prepared[key], clf.spec, task, tta=1, batch_size=batch_size,
                             want_embeddings=True, architecture=clf.architecture)
                probs[task].append(p)
                embs[task].append(e if e is not None else np.zeros((len(chunk), 0), np.float32))
        all_probs = {task: np.concatenate(v) for task, v in probs.items()}
        all_embs = {task: np.concatenate(v) for task, v in embs.items()}
        out: list[Prediction] = []
        for i in range(len(grays)):
            results: dict[str, TaskResult] = {}
            embedding, emb_entry = None, None
            for task, clf in self.classifiers.items():
                p = all_probs[task][i]
                results[task] = task_result(clf, p, 1)
                if clf is emb_model and all_embs[task].shape[1]:
                    v = all_embs[task][i].astype(np.float32)
                    embedding, emb_entry = v / max(float(np.linalg.norm(v)), 1e-12), clf.entry.id
            out.append(Prediction(results, embedding, emb_entry))
        return out
