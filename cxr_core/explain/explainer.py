"""The explainer: class activation maps of one classifier at one layer, on the original image.

The mechanism is pytorch-grad-cam's: its ``BaseCAM`` owns the hooks and the forward/backward
loop, and each method (``methods.METHODS``) supplies only how activations and gradients
combine. :class:`Explainer` adds what CXR Lens needs around it:

- a **private copy** of the model, so the cached model the Predict page infers with never
  carries hooks, in-place activations are switched off (an in-place ReLU after the hooked layer
  would rewrite the saved activation and break the gradient hook), and the parameters are
  frozen: autograd starts at the target layer's output, so the backward pass runs through the
  head only and the rest of the network keeps no graph. The map is the same as with the
  library's plain usage (a test checks it);
- grads enabled even when called inside ``torch.inference_mode()`` / ``no_grad`` (the app's
  predictor runs there);
- correct targets (``targets``): the default target is the class the model predicts, with the
  card's threshold for the binary head;
- maps on the **original** image (``geometry.to_original``).

Maps are float32 in [0, 1], min-max normalised per image after the ReLU (the library's
convention). A map with no positive evidence for its target is all zeros and is flagged
``empty``.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import nn

from ..config import TASK_CLASSES, InputSpec
from ..inference import load_classifier
from ..models import _unwrap, features_after, gradcam_target_layer, logits_to_probs
from ..preprocess import prepare, to_input
from .geometry import to_original
from .methods import DEFAULT_METHOD, METHODS, check_method
from .targets import PredictedClassTarget, Target, class_target


@dataclass(frozen=True)
class Explanation:
    """One image's CAM for one target class."""

    cam: np.ndarray  #: (H, W) float32 in [0, 1] on the original image
    cam_input: np.ndarray  #: (S, S) float32 in [0, 1] on the network input
    signed: np.ndarray  #: (h, w) channel-weighted activation sum before the ReLU, at the layer's resolution
    method: str
    target: int
    target_name: str
    probs: np.ndarray  #: class probabilities of this forward pass, in the head's class order
    layer: str
    #: True when no location has positive evidence for the target: ``cam`` is all zeros.
    empty: bool
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def peak(self) -> tuple[int, int]:
        """(row, col) of the map's maximum on the original image."""
        r, c = np.unravel_index(int(np.argmax(self.cam)), self.cam.shape)
        return int(r), int(c)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or "<model>"
    raise ValueError("the target layer is not part of the model")


def _restart_autograd_here(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    # Parameters are frozen, so nothing upstream is recorded; the CAM only needs d(score)/d(output).
    return output.detach().requires_grad_(True)


def _private_model(model: nn.Module, device: str | torch.device, copy_model: bool) -> nn.Module:
    """The explainer's own float32 eval copy: frozen parameters, no in-place activations."""
    with torch.inference_mode(False):
        net = _unwrap(model)
        net = copy.deepcopy(net) if copy_model else net
        net = net.to(torch.device(device)).float().eval()
    # Frozen: autograd then starts at the target layer (see _restart_autograd_here), not the input.
    for p in net.parameters():
        p.requires_grad_(False)
    # An in-place activation after the hooked layer would overwrite the saved activation.
    for m in net.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    return net


def _target_layer(net: nn.Module, architecture: str, method: str, name: str | None) -> nn.Module:
    """The module named ``name``, else ``method``'s default layer for ``architecture``."""
    if not name:
        return gradcam_target_layer(net, architecture, method)
    try:
        return net.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"{architecture} has no module named {name!r}") from exc


class Explainer:
    """Class activation maps (HiResCAM, Grad-CAM, Grad-CAM++) for one classifier, at one layer.

    ``target_layer`` overrides the per-architecture default by module name (``"blocks.5"``,
    ``"layer4.1"``...); without it the layer is ``method``'s default (``models.gradcam_target_layer``):
    the stride-16 stage for HiResCAM, the final feature map for Grad-CAM and Grad-CAM++. The
    model is deep-copied unless ``copy_model=False`` hands over a model nobody else uses (its
    parameters are frozen and its activations made out-of-place). No hook stays on the model
    between calls. Calls are serialised by a lock, so one explainer can serve several threads.
    """

    def __init__(
        self,
        model: nn.Module,
        architecture: str,
        task: str,
        spec: InputSpec,
        *,
        classes: Sequence[str] | None = None,
        threshold: float = 0.5,
        target_layer: str | None = None,
        method: str = DEFAULT_METHOD,
        device: str | torch.device = "cpu",
        copy_model: bool = True,
    ) -> None:
        if classes is None and task not in TASK_CLASSES:
            raise ValueError(f"task {task!r} is not a Kermany task ({sorted(TASK_CLASSES)}): pass its classes")
        net = _private_model(model, device, copy_model)
        layer = _target_layer(net, architecture, method, target_layer)
        self.model = net
        self.layer = layer
        self.layer_name = _module_name(net, layer)
        self.architecture = architecture
        self.task = task
        self.spec = spec
        self.classes = list(classes) if classes is not None else list(TASK_CLASSES[task])
        self.threshold = float(threshold)
        # The app shares one explainer between sessions (st.cache_resource) and each CAM call hooks the
        # model's layer: two calls at once would each record the other's activations and gradients.
        self._lock = threading.Lock()
        #: The rest of the feature extractor after the target layer (None: no shortcut, see kept_layer).
        self._rest = features_after(net, architecture, self.layer_name)
        self._weighting: dict[str, Any] = {}  # method -> a hook-free library CAM object (its weighting only)

    @classmethod
    def from_loaded(
        cls, clf: Any, target_layer: str | None = None, copy_model: bool = True, method: str = DEFAULT_METHOD
    ) -> Explainer:
        """From an ``inference.LoadedClassifier`` (its model is copied, never hooked)."""
        return cls(
            clf.model, clf.architecture, clf.task, clf.spec, classes=clf.classes,
            threshold=clf.threshold, target_layer=target_layer, method=method, copy_model=copy_model,
        )

    @classmethod
    def from_entry(cls, entry: Any, target_layer: str | None = None, method: str = DEFAULT_METHOD) -> Explainer:
        """Load a registry classifier entry into a model owned by the explainer."""
        return cls.from_loaded(load_classifier(entry), target_layer=target_layer, copy_model=False, method=method)

    def class_index(self, target: int | str) -> int:
        """Class index of a name (case-insensitive) or an index, checked against the head."""
        if isinstance(target, str):
            names = [c.lower() for c in self.classes]
            if target.lower() not in names:
                raise ValueError(f"unknown class {target!r}; this model's classes are {self.classes}")
            return names.index(target.lower())
        idx = int(target)
        if not 0 <= idx < len(self.classes):
            raise ValueError(f"class index {idx} out of range for classes {self.classes}")
        return idx

    def _target(self, target: Target) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable that picks ``target``'s score (the predicted class when None)."""
        if target is None:
            return PredictedClassTarget(self.task, self.threshold)
        return class_target(self.task, self.class_index(target))

    def explain(self, gray: np.ndarray, method: str = DEFAULT_METHOD, target: Target = None) -> Explanation:
        """CAM of one grayscale uint8 image for ``target`` (predicted class when None)."""
        return self.explain_batch([gray], method, [target])[0]

    @property
    def kept_layer(self) -> str | None:
        """The module whose output :meth:`explain_features` starts from (None: it runs the full pass).

        The classification pass keeps that output (``Prediction.feature_maps[task][kept_layer]``),
        so the Predict page's CAM costs only the network after the layer, forward and backward.
        """
        return self.layer_name if self._rest is not None else None

    def explain_features(
        self, gray: np.ndarray, features: torch.Tensor, method: str = DEFAULT_METHOD, target: Target = None
    ) -> Explanation:
        """The CAM of ``gray`` from the target layer's output (1, C, h, w) for this image.

        ``features`` is what the classification pass kept at :attr:`kept_layer`, so only the
        network after that layer runs here, forward and backward: the map equals :meth:`explain`'s
        (a test checks it) at a fraction of its cost. Falls back to :meth:`explain` when the
        target layer has no shortcut (``kept_layer`` is None).
        """
        check_method(method)
        if self._rest is None:
            return self.explain(gray, method, target)
        t0 = time.perf_counter()
        chosen = self._target(target)
        device = next(self.model.parameters()).device
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            acts = features.detach().clone().to(device=device, dtype=torch.float32).requires_grad_(True)
            outputs = self.model.forward_head(self._rest(acts))
            (grads,) = torch.autograd.grad(chosen(outputs[0]), acts)
            # The library's own weighting (Grad-CAM or Grad-CAM++) on these activations and gradients;
            # its hooks are released at once, the forward/backward above replaces its loop.
            cam = self._weighting.get(method)
            if cam is None:  # built once per method: the constructor walks every module (model.eval())
                cam = self._weighting[method] = METHODS[method](model=self.model, target_layers=[self.layer])
                cam.activations_and_grads.release()
            a_np, g_np = acts.detach().cpu().numpy(), grads.cpu().numpy()
            signed = cam.get_cam_image(None, self.layer, [chosen], a_np, g_np, eigen_smooth=False)
        size = (self.spec.size, self.spec.size)
        # As BaseCAM: ReLU, min-max and resize per layer, then ReLU, mean over layers, min-max.
        maps = scale_cam_image(np.maximum(scale_cam_image(np.maximum(signed, 0), size), 0))
        probs = logits_to_probs(outputs.detach().float().cpu(), self.task, len(self.classes)).numpy()
        idx = chosen.category if isinstance(chosen, PredictedClassTarget) else self.class_index(target)  # type: ignore[arg-type]
        assert idx is not None
        return self._explanation(gray, maps[0], signed[0], method, int(idx), probs[0], time.perf_counter() - t0)

    def _explanation(
        self, gray: np.ndarray, cam_map: np.ndarray, signed: np.ndarray, method: str, idx: int, probs: np.ndarray,
        seconds: float,
    ) -> Explanation:
        cam_in = np.clip(np.nan_to_num(cam_map.astype(np.float32), nan=0.0), 0.0, 1.0)
        return Explanation(
            cam=to_original(cam_in, gray.shape, self.spec),
            cam_input=cam_in,
            signed=np.asarray(signed, dtype=np.float32),
            method=method,
            target=idx,
            target_name=self.classes[idx],
            probs=probs,
            layer=self.layer_name,
            empty=not bool(np.max(signed) > 0),
            seconds=seconds,
        )

    def explain_batch(
        self, images: Sequence[np.ndarray], method: str = DEFAULT_METHOD, targets: Sequence[Target] | None = None
    ) -> list[Explanation]:
        """CAMs of several grayscale uint8 images (any sizes) in one forward/backward pass."""
        check_method(method)
        if not images:
            return []
        targets = list(targets) if targets is not None else [None] * len(images)
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        t0 = time.perf_counter()
        device = next(self.model.parameters()).device
        x = to_input(torch.from_numpy(np.stack([prepare(g, self.spec) for g in images])), self.spec).to(device)
        x = x.contiguous(memory_format=torch.channels_last)  # as inference.infer feeds the model: same numbers
        chosen = [self._target(t) for t in targets]
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            # Prepended, so the library's hooks on the same layer see the restarted tensor; removed
            # after the call so the model never carries a hook at rest (a copy of it stays clean).
            restart = self.layer.register_forward_hook(_restart_autograd_here, prepend=True)
            cam = METHODS[method](model=self.model, target_layers=[self.layer])
            try:
                maps = cam(input_tensor=x.clone(), targets=chosen)
                acts = cam.activations_and_grads.activations[0].numpy()
                grads = cam.activations_and_grads.gradients[0].numpy()
                signed = cam.get_cam_image(x, self.layer, chosen, acts, grads, eigen_smooth=False)
                logits = cam.outputs.detach().float().cpu()
            finally:
                # Not `with cam:` — BaseCAM.__exit__ swallows IndexError, which would hide bugs.
                cam.activations_and_grads.release()
                restart.remove()
        probs = logits_to_probs(logits, self.task, len(self.classes)).numpy()
        seconds = (time.perf_counter() - t0) / len(images)
        out: list[Explanation] = []
        for i, gray in enumerate(images):
            tgt = chosen[i]
            idx = tgt.category if isinstance(tgt, PredictedClassTarget) else self.class_index(targets[i])  # type: ignore[arg-type]
            assert idx is not None
            out.append(self._explanation(gray, maps[i], signed[i], method, int(idx), probs[i], seconds))
        return out
