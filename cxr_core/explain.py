"""Class activation maps: heatmaps on the original image, overlays, PNG export, pointing game.

The mechanism is pytorch-grad-cam's (``grad-cam`` on PyPI): its ``BaseCAM`` owns the hooks and
the forward/backward loop, and each method supplies only how activations and gradients combine:
``HiResCAM`` (gradient x activation summed over channels, the default), ``GradCAM`` and
``GradCAMPlusPlus`` (channel weights from the gradient averaged over the map). HiResCAM is
Grad-CAM without that average: both give the same map at the final feature map of a pooled
linear head, and only HiResCAM stays faithful at an earlier, finer layer (Draelos & Carin 2020),
which is where it localises the phantoms' lesions (``models.gradcam_target_layer``).
:class:`Explainer` adds what CXR Lens needs around it:

- a **private copy** of the model, so the cached model the Predict page infers with never
  carries hooks, in-place activations are switched off (an in-place ReLU after the hooked layer
  would rewrite the saved activation and break the gradient hook), and the parameters are
  frozen: autograd starts at the target layer's output, so the backward pass runs through the
  head only and the rest of the network keeps no graph. The map is the same as with the
  library's plain usage (a test checks it);
- grads enabled even when called inside ``torch.inference_mode()`` / ``no_grad`` (the app's
  predictor runs there);
- correct targets: the binary head is a **single logit** (sigmoid = P(PNEUMONIA)), so the
  library's default (argmax over the outputs) always picks output 0, i.e. always explains
  PNEUMONIA, even for an image called NORMAL. Here PNEUMONIA uses the logit and NORMAL the
  negated logit (the library's ``BinaryClassifierOutputTarget``); the 3-class head uses
  ``ClassifierOutputTarget(k)``. The default target is the class the model predicts, with the
  card's threshold for the binary head;
- maps on the **original** image: the network sees a centre crop (``InputSpec.crop_fraction``)
  squashed to a square, so the CAM is resized back onto that crop box of the original and is 0
  outside it (the model never saw those pixels).

Maps are float32 in [0, 1], min-max normalised per image after the ReLU (the library's
convention). A map with no positive evidence for its target is all zeros and is flagged
``empty``.
"""

from __future__ import annotations

import copy
import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget
from torch import nn

from .config import TASK_CLASSES, InputSpec
from .preprocess import prepare, to_input

#: CAM methods by the name the app and the CLI use; the first is the default.
METHODS: dict[str, type[BaseCAM]] = {"hirescam": HiResCAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
METHOD_LABELS: dict[str, str] = {"hirescam": "HiResCAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
#: The method the pages and the CLI use unless told otherwise (why: ``models.gradcam_target_layer``).
DEFAULT_METHOD = "hirescam"
#: Matplotlib colormaps offered for overlays (any matplotlib name works in :func:`overlay`).
COLORMAPS: tuple[str, ...] = ("jet", "turbo", "inferno", "viridis", "magma")

Target = int | str | None


# --- targets ---------------------------------------------------------------------------------


def class_target(task: str, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score whose gradient explains class ``index`` of ``task``'s head (one sample's output)."""
    if task == "binary":
        if index not in (0, 1):
            raise ValueError(f"binary class index must be 0 (NORMAL) or 1 (PNEUMONIA), got {index}")
        # +logit for PNEUMONIA, -logit for NORMAL: the head's only output is log-odds of PNEUMONIA.
        return BinaryClassifierOutputTarget(index)
    return ClassifierOutputTarget(index)


class PredictedClassTarget:
    """Target whatever class the model predicts in this very forward pass, and remember it.

    Deciding inside the target (which the library calls on the output it already computed)
    saves the extra forward pass that choosing the class beforehand would cost.
    """

    def __init__(self, task: str, threshold: float = 0.5) -> None:
        self.task = task
        self.threshold = threshold
        self.category: int | None = None

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        out = model_output.detach().float()
        if self.task == "binary":
            self.category = int(float(torch.sigmoid(out.reshape(-1)[0])) >= self.threshold)
        else:
            self.category = int(out.argmax())
        return class_target(self.task, self.category)(model_output)


# --- geometry --------------------------------------------------------------------------------


def crop_box(shape: tuple[int, int], spec: InputSpec) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the region of an (H, W) image that ``prepare`` feeds the model."""
    h, w = shape
    if spec.crop_fraction >= 1.0:
        return 0, 0, h, w
    ch, cw = max(1, round(h * spec.crop_fraction)), max(1, round(w * spec.crop_fraction))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize_float(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map (antialiased when shrinking, like ``prepare``)."""
    if a.shape == (height, width):
        return a.astype(np.float32, copy=True)
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def to_original(cam_input: np.ndarray, shape: tuple[int, int], spec: InputSpec) -> np.ndarray:
    """Map a CAM on the network input (S, S) back onto the original (H, W) image.

    Inside the crop box the map is resized from the square input; outside it, 0.
    """
    top, left, ch, cw = crop_box(shape, spec)
    out = np.zeros(shape, dtype=np.float32)
    out[top : top + ch, left : left + cw] = _resize_float(cam_input, ch, cw)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


# --- the explainer ---------------------------------------------------------------------------


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
        from .models import _unwrap, gradcam_target_layer

        if task not in TASK_CLASSES:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_CLASSES)}")
        with torch.inference_mode(False):
            net = _unwrap(model)
            net = copy.deepcopy(net) if copy_model else net
            net = net.to(torch.device(device)).float().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        for m in net.modules():
            if isinstance(getattr(m, "inplace", None), bool):
                m.inplace = False
        if target_layer:
            try:
                layer = net.get_submodule(target_layer)
            except AttributeError as exc:
                raise ValueError(f"{architecture} has no module named {target_layer!r}") from exc
        else:
            layer = gradcam_target_layer(net, architecture, method)
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
        from .models import features_after

        #: The rest of the feature extractor after the target layer (None: no shortcut, see kept_layer).
        self._rest = features_after(net, architecture, self.layer_name)
        self._weighting: dict[str, Any] = {}  # method -> a hook-free library CAM object (its weighting only)

    @classmethod
    def from_loaded(
        cls, clf: Any, target_layer: str | None = None, copy_model: bool = True, method: str = DEFAULT_METHOD
    ) -> Explainer:
        """From an ``inference.LoadedClassifier`` (its model is copied, never hooked)."""
        return cls(
            clf.model, clf.entry.card["architecture"], clf.task, clf.spec, classes=clf.classes,
            threshold=clf.threshold, target_layer=target_layer, method=method, copy_model=copy_model,
        )

    @classmethod
    def from_entry(cls, entry: Any, target_layer: str | None = None, method: str = DEFAULT_METHOD) -> Explainer:
        """Load a registry classifier entry into a model owned by the explainer."""
        from .inference import load_classifier

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
        if method not in METHODS:
            raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(METHODS)}")
        if self._rest is None:
            return self.explain(gray, method, target)
        t0 = time.perf_counter()
        chosen = PredictedClassTarget(self.task, self.threshold) if target is None else class_target(
            self.task, self.class_index(target)
        )
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
        from .models import logits_to_probs

        probs = logits_to_probs(outputs.detach().float().cpu(), self.task).numpy()
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
        if method not in METHODS:
            raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(METHODS)}")
        if not images:
            return []
        targets = list(targets) if targets is not None else [None] * len(images)
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        t0 = time.perf_counter()
        device = next(self.model.parameters()).device
        x = to_input(torch.from_numpy(np.stack([prepare(g, self.spec) for g in images])), self.spec).to(device)
        x = x.contiguous(memory_format=torch.channels_last)  # as inference.infer feeds the model: same numbers
        chosen: list[Callable[[torch.Tensor], torch.Tensor]] = [
            PredictedClassTarget(self.task, self.threshold) if t is None else class_target(self.task, self.class_index(t))
            for t in targets
        ]
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
        from .models import logits_to_probs

        probs = logits_to_probs(logits, self.task).numpy()
        seconds = (time.perf_counter() - t0) / len(images)
        out: list[Explanation] = []
        for i, gray in enumerate(images):
            tgt = chosen[i]
            idx = tgt.category if isinstance(tgt, PredictedClassTarget) else self.class_index(targets[i])  # type: ignore[arg-type]
            assert idx is not None
            out.append(self._explanation(gray, maps[i], signed[i], method, int(idx), probs[i], seconds))
        return out


# --- overlays and export ---------------------------------------------------------------------


def _lut(colormap: str) -> np.ndarray:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError as exc:
        raise ValueError(f"unknown colormap {colormap!r}; e.g. {', '.join(COLORMAPS)}") from exc
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped CAM over a grayscale image: RGB uint8 (H, W, 3).

    ``alpha`` is the heatmap's weight (0 = image only, 1 = heatmap only).
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    if cam.shape != gray.shape:
        raise ValueError(f"CAM shape {cam.shape} does not match the image's {gray.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    # A 256-entry lookup table instead of cmap(cam): the latter allocates float64 RGBA per pixel.
    idx = (np.clip(np.nan_to_num(cam, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    heat = _lut(colormap)[idx].astype(np.float32)
    base = gray.astype(np.float32)[..., None]
    return np.clip(base * (1.0 - alpha) + heat * alpha + 0.5, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap so a long title stays on a narrow image."""
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    out: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if line and measure.textlength(trial, font=font) > width:
                out.append(line)
                line = word
            else:
                line = trial
        if line:
            out.append(line)
    return out or [""]


def cam_png(
    gray: np.ndarray,
    cam: np.ndarray,
    title_text: str,
    *,
    alpha: float = 0.4,
    colormap: str = "jet",
    max_side: int | None = None,
) -> bytes:
    """PNG bytes: the overlay between a banner that prints ``title_text`` (the prediction) and a colour bar.

    ``max_side`` shrinks a large image (and its map) first; None keeps the original size.
    """
    if max_side is not None and max(gray.shape) > max_side:
        gray, cam = downscale(gray, cam, max_side)
    rgb = overlay(gray, cam, alpha, colormap)
    h, w = gray.shape
    font_px = max(11, min(40, w // 32))
    font, small = _font(font_px), _font(max(9, font_px * 2 // 3))
    pad = font_px // 2
    lines = _wrap(title_text, font, w - 2 * pad)
    banner_h = pad * 2 + len(lines) * (font_px + pad // 2)
    # Footer: a colour bar, so the exported file says which end of the map is "high".
    bar_w, bar_h = max(40, min(w - 2 * pad, w // 3)), max(6, font_px // 2)
    footer_h = pad * 2 + bar_h + font_px
    canvas = Image.new("RGB", (w, banner_h + h + footer_h), (20, 20, 20))
    canvas.paste(Image.fromarray(rgb), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (font_px + pad // 2)), line, fill=(255, 255, 255), font=font)
    bar = _lut(colormap)[np.linspace(0, 255, bar_w).astype(np.uint8)][None].repeat(bar_h, axis=0)
    y0 = banner_h + h + pad
    canvas.paste(Image.fromarray(bar), (pad, y0))
    draw.text((pad, y0 + bar_h + 2), "low", fill=(220, 220, 220), font=small)
    draw.text((pad + bar_w, y0 + bar_h + 2), "high", fill=(220, 220, 220), font=small, anchor="ra")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def downscale(gray: np.ndarray, cam: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink an image and its map together so the longer side is at most ``max_side``."""
    h, w = gray.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return gray, cam
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    g = np.asarray(Image.fromarray(gray).resize((nw, nh), Image.Resampling.BILINEAR))
    return g, np.clip(_resize_float(cam, nh, nw), 0.0, 1.0)


# --- pointing game ---------------------------------------------------------------------------


@dataclass
class PointingResult:
    """How often the CAM peak falls inside the lesion mask, with the baselines beside it."""

    n: int  #: images scored
    hits: int
    rate: float
    #: Mean (dilated) mask area fraction: the hit rate of a uniformly random point.
    chance: float
    #: Hit rate of always pointing at the image centre.
    center_rate: float
    tolerance_px: int
    method: str
    n_skipped_incorrect: int
    n_empty: int
    per_image: list[dict[str, Any]] = field(default_factory=list)
    #: ``{subtype: {"n", "rate", "chance"}}``
    by_subtype: dict[str, dict[str, float]] = field(default_factory=dict)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


def pointing_game(
    explainer: Explainer,
    root: str,
    split: str = "test",
    *,
    method: str = DEFAULT_METHOD,
    tolerance_px: int = 0,
    only_correct: bool = True,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> PointingResult:
    """Pointing game on a synthetic set written by ``synthetic.write_dataset`` (lesion masks known).

    For every PNEUMONIA image of ``split`` (optionally only those the model classifies
    correctly), the CAM of the image's true class (PNEUMONIA for the binary head, its subtype
    for the 3-class head) is a hit when its peak lies inside the lesion mask, dilated by
    ``tolerance_px`` pixels (0 = the mask as drawn).
    """
    from scipy import ndimage

    from .data import read_dataset
    from .imaging import read_gray
    from .synthetic import load_mask

    dataset = read_dataset(root)
    samples = [s for s in dataset.split(split) if s.label == "PNEUMONIA"]
    if not samples:
        raise ValueError(f"no PNEUMONIA images in the {split!r} split of {root}")
    res = PointingResult(0, 0, 0.0, 0.0, 0.0, tolerance_px, method, 0, 0)
    chance_sum, center_hits = 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        grays = [read_gray(dataset.abspath(s)) for s in batch]
        truth = [s.target(explainer.task) for s in batch]
        exps = explainer.explain_batch(grays, method, truth)
        for s, gray, y, e in zip(batch, grays, truth, exps, strict=True):
            pred = int(e.probs[1] >= explainer.threshold) if explainer.task == "binary" else int(np.argmax(e.probs))
            if only_correct and pred != y:
                res.n_skipped_incorrect += 1
                continue
            mask = load_mask(root, s.path)
            if mask.shape != gray.shape:
                raise ValueError(f"mask {mask.shape} and image {gray.shape} differ for {s.path}")
            if tolerance_px > 0:
                mask = ndimage.binary_dilation(mask, structure=_disk(tolerance_px))
            r, c = e.peak
            hit = bool(mask[r, c]) and not e.empty
            res.n += 1
            res.hits += hit
            res.n_empty += e.empty
            chance_sum += float(mask.mean())
            center_hits += bool(mask[gray.shape[0] // 2, gray.shape[1] // 2])
            res.per_image.append(
                {"path": s.path, "subtype": s.subtype, "hit": hit, "peak": (r, c), "mask_fraction": float(mask.mean())}
            )
        if progress:
            progress(min(start + batch_size, len(samples)), len(samples))
    for sub in sorted({p["subtype"] for p in res.per_image}):
        rows = [p for p in res.per_image if p["subtype"] == sub]
        res.by_subtype[sub] = {
            "n": len(rows),
            "rate": sum(p["hit"] for p in rows) / len(rows),
            "chance": sum(p["mask_fraction"] for p in rows) / len(rows),
        }
    if res.n:
        res.rate = res.hits / res.n
        res.chance = chance_sum / res.n
        res.center_rate = center_hits / res.n
    return res


# --- gallery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryItem:
    """One dataset image with the model's verdict, for the Explain gallery."""

    path: str  #: relative to the dataset root
    truth: int
    pred: int
    confidence: float  #: probability of the predicted class
    probs: tuple[float, ...]

    @property
    def correct(self) -> bool:
        return self.truth == self.pred


def card_dataset(card: dict[str, Any]) -> Any:
    """The dataset a classifier card was trained on, split exactly as in training.

    Raises ``data.DatasetError`` (with a clear message) when the folder is missing.
    """
    from .data import DatasetError, read_dataset, with_validation_split

    ds = card.get("dataset") or {}
    root = ds.get("root")
    if not root:
        raise DatasetError("the model card does not record its dataset folder")
    val = ds.get("validation") or {}
    return with_validation_split(read_dataset(root), float(val.get("fraction", 0.1)), int(val.get("seed", 0)))


def predict_split(
    clf: Any, dataset: Any, split: str, progress: Callable[[int, int], None] | None = None
) -> list[GalleryItem]:
    """Predictions of a ``LoadedClassifier`` for every image of ``split`` (the card's threshold for binary)."""
    from .data import load_images
    from .inference import infer
    from .predict import decide

    samples = dataset.split(split)
    if not samples:
        return []
    arr = load_images(dataset, samples, lambda g: prepare(g, clf.spec), progress=progress)
    probs, _ = infer(clf.model, arr, clf.spec, clf.task, want_embeddings=False)
    items = []
    for s, p in zip(samples, probs, strict=True):
        label, conf = decide(clf.task, clf.classes, p, clf.threshold)
        items.append(GalleryItem(s.path, s.target(clf.task), clf.classes.index(label), conf, tuple(float(v) for v in p)))
    return items


def select_items(
    items: Sequence[GalleryItem],
    *,
    correctness: str = "all",
    true_class: int | None = None,
    pred_class: int | None = None,
    order: str = "confidence_desc",
) -> list[GalleryItem]:
    """Filter (all | correct | incorrect, true / predicted class) and sort (confidence_desc | confidence_asc | path)."""
    if correctness not in ("all", "correct", "incorrect"):
        raise ValueError(f"correctness must be all, correct or incorrect, got {correctness!r}")
    out = [
        it for it in items
        if (correctness == "all" or it.correct == (correctness == "correct"))
        and (true_class is None or it.truth == true_class)
        and (pred_class is None or it.pred == pred_class)
    ]
    if order == "confidence_desc":
        out.sort(key=lambda it: (-it.confidence, it.path))
    elif order == "confidence_asc":
        out.sort(key=lambda it: (it.confidence, it.path))
    elif order == "path":
        out.sort(key=lambda it: it.path)
    else:
        raise ValueError(f"unknown order {order!r}")
    return out


# --- sanity check: cascading randomisation (Adebayo et al., 2018) ------------------------------

#: Top-down groups of modules re-initialised cumulatively, per architecture.
RANDOMISATION_CASCADE: dict[str, tuple[tuple[str, ...], ...]] = {
    **{
        f"tf_efficientnet_lite{v}": (("classifier",), ("conv_head", "bn2"), ("blocks.6",), ("blocks.5",))
        for v in (0, 1, 2)
    },
    "resnet18": (("fc",), ("layer4",), ("layer3",)),
    "resnet50": (("fc",), ("layer4",), ("layer3",)),
    "densenet121": (("classifier",), ("features.norm5", "features.denseblock4"), ("features.denseblock3",)),
    "small_cnn": (("classifier",), ("features.3",), ("features.2",), ("features.1",)),
}


@dataclass
class RandomisationStage:
    """Spearman rank correlations between the trained model's maps and a randomised model's."""

    randomised: tuple[str, ...]  #: every module group randomised so far
    rho: np.ndarray  #: one per image
    n_empty: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.rho))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    # A constant (e.g. empty) map has no ranking to share: count it as uncorrelated.
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    r = spearmanr(a.ravel(), b.ravel()).statistic
    return float(r) if np.isfinite(r) else 0.0


def cascading_randomisation(
    model: nn.Module,
    architecture: str,
    task: str,
    spec: InputSpec,
    images: Sequence[np.ndarray],
    *,
    method: str = DEFAULT_METHOD,
    target: Target = None,
    stages: Sequence[Sequence[str]] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, list[RandomisationStage]]:
    """Adebayo et al. (2018) model-parameter randomisation test, cascading from the top.

    Returns the rank correlations of two runs of the trained model (one per image; ~1 for a
    deterministic method) and, per cumulative stage, those between the trained model's maps and
    the randomised model's. Pass ``target`` to hold the explained class fixed; None explains each
    model's own prediction. Each parameter tensor of a randomised
    module is replaced by zero-mean Gaussian noise with that tensor's own standard deviation
    (scale kept, learned structure and sign destroyed); BatchNorm running statistics are kept.
    A map that explains the model must change when the model does.
    """
    stages = stages if stages is not None else RANDOMISATION_CASCADE[architecture]
    targets = [target] * len(images)
    base = Explainer(model, architecture, task, spec, method=method)
    trained = base.explain_batch(images, method, targets)
    # Same explainer, a second time: any nondeterminism in the method would show here.
    again = base.explain_batch(images, method, targets)
    repeat = np.array([_spearman(a.cam, b.cam) for a, b in zip(trained, again, strict=True)])

    from .models import _unwrap

    with torch.inference_mode(False):
        net = copy.deepcopy(_unwrap(model)).float().eval()
    gen = torch.Generator().manual_seed(seed)
    done: list[str] = []
    out: list[RandomisationStage] = []
    for group in stages:
        with torch.no_grad():
            for name in group:
                for p in net.get_submodule(name).parameters():
                    scale = p.std() if p.numel() > 1 else p.abs()
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
        done.extend(group)
        ex = Explainer(net, architecture, task, spec, method=method)
        rand = ex.explain_batch(images, method, targets)
        rho = np.array([_spearman(a.cam, b.cam) for a, b in zip(trained, rand, strict=True)])
        out.append(RandomisationStage(tuple(done), rho, sum(e.empty for e in rand)))
    return repeat, out
