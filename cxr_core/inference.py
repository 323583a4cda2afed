"""Batch inference shared by evaluation, indexing and the app.

Loads a classifier from its registry entry and turns prepared uint8 images into
class probabilities and penultimate-layer embeddings, with optional test-time
augmentation (mean of the probabilities over deterministic views).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .cards import ClassifierCard
from .compact import load_classifier_weights
from .config import InputSpec
from .models import forward_features_keeping, logits_to_probs
from .preprocess import normalize, to_float, tta_views
from .registry import Entry, RegistryError


@dataclass
class LoadedClassifier:
    """A classifier ready for inference, with what its card says about its inputs."""

    entry: Entry
    model: torch.nn.Module
    spec: InputSpec
    task: str
    classes: list[str]
    threshold: float

    @property
    def card(self) -> ClassifierCard:
        """The entry's typed card (parsed once by the entry)."""
        return self.entry.classifier_card

    @property
    def architecture(self) -> str:
        return str(self.card.architecture)

    def temperature(self, tta: int = 1) -> float:
        """The card's validation-fitted temperature for ``tta`` views (1.0 without calibration)."""
        return self.card.temperature(tta)

    @property
    def threshold_source(self) -> str | None:
        source = self.card.threshold_source
        return source if isinstance(source, str) else None


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_classifier(entry: Entry, device: str = "cpu") -> LoadedClassifier:
    """Build the card's architecture and load its safetensors weights (strict, or the release's
    trained part over the pip ImageNet weights: ``compact.load_classifier_weights``)."""
    card = entry.info
    if not isinstance(card, ClassifierCard) or card.input is None or card.task is None:
        raise RegistryError(f"entry {entry.id} is a {card.kind or 'card without a kind'}, not a classifier with an input spec")
    model = load_classifier_weights(card, entry.load_weights())
    model = model.to(pick_device(device)).eval().to(memory_format=torch.channels_last)
    threshold = 0.5 if card.threshold is None else card.threshold
    return LoadedClassifier(entry=entry, model=model, spec=card.input, task=card.task, classes=list(card.classes), threshold=threshold)


@torch.inference_mode()
def infer(
    model: torch.nn.Module,
    images_u8: np.ndarray | torch.Tensor,
    spec: InputSpec,
    task: str,
    *,
    tta: int = 1,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    want_embeddings: bool = True,
    progress: Callable[[int, int], None] | None = None,
    keep_layers: dict[str, list[torch.Tensor]] | None = None,
    architecture: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (N, n_classes) and embeddings (N, D) for prepared uint8 images (N, S, S).

    With ``tta > 1`` probabilities are averaged over views; the embedding is always
    the plain view's, so the index and the map do not depend on the TTA setting.
    ``keep_layers`` (with ``architecture``) maps module names to lists that receive those
    modules' outputs for the plain view, per batch (float32 on the CPU): the Predict page hands
    the Grad-CAM layer's to ``Explainer.explain_features`` so that Grad-CAM needs no second
    forward pass. No hook is put on the model (``models.forward_features_keeping``): it is
    shared between sessions.
    """
    dev = torch.device(device) if isinstance(device, str) else device
    if isinstance(images_u8, np.ndarray) and not images_u8.flags.writeable:
        images_u8 = images_u8.copy()  # torch refuses to wrap read-only memory (e.g. memory-mapped caches)
    data = torch.as_tensor(images_u8)
    n = data.shape[0]
    probs_out, emb_out = [], []
    for start in range(0, n, batch_size):
        x01 = to_float(data[start : start + batch_size].to(dev, non_blocking=True))
        probs, emb = _infer_batch(model, x01, spec, task, tta, want_embeddings, keep_layers, architecture)
        probs_out.append(probs)
        if emb is not None:
            emb_out.append(emb)
        if progress:
            progress(min(start + batch_size, n), n)
    probs = torch.cat(probs_out).numpy()
    embs = torch.cat(emb_out).numpy() if want_embeddings else None
    return probs, embs


def _infer_batch(
    model: torch.nn.Module,
    x01: torch.Tensor,
    spec: InputSpec,
    task: str,
    tta: int,
    want_embeddings: bool,
    keep_layers: dict[str, list[torch.Tensor]] | None,
    architecture: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities averaged over the TTA views, the plain view's embedding or None) of one batch."""
    views = tta_views(x01, tta)
    acc = None
    emb = None
    for vi, view in enumerate(views):
        x = normalize(view, spec).contiguous(memory_format=torch.channels_last)
        if vi == 0 and want_embeddings:
            feats = _features(model, x, keep_layers, architecture)
            e = model.forward_head(feats, pre_logits=True)
            logits = model.forward_head(feats)
            emb = e.float().cpu()
        else:
            logits = model(x)
        p = logits_to_probs(logits.float(), task)
        acc = p if acc is None else acc + p
    return (acc / len(views)).cpu(), emb


def _features(
    model: torch.nn.Module, x: torch.Tensor, keep_layers: dict[str, list[torch.Tensor]] | None, architecture: str | None
) -> torch.Tensor:
    """The backbone's feature map of ``x``, handing the requested layers' outputs to ``keep_layers``."""
    if not (keep_layers and architecture):
        return model.forward_features(x)
    feats, kept = forward_features_keeping(model, architecture, x, list(keep_layers))
    for name, sink in keep_layers.items():
        if name in kept:
            sink.append(kept[name].detach().float().cpu())
    return feats
