"""Pieces of the training system: augmentation, TTA, schedules, sharding, frozen-trunk split, CLI, metrics, results."""

from __future__ import annotations

import math
import shlex

import numpy as np
import pytest
import torch

from cxr_core.config import AugmentConfig
from cxr_core.preprocess import TTA_VIEWS, augment, tta_views
from cxr_core.training import (
    TrainConfig,
    _selection_key,
    lr_factor,
    num_stages,
    report_metrics,
    shard_batches,
    split_model,
)

torch.set_num_threads(1)


def _batch(n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, size, size, generator=g)


def test_augment_keeps_shape_and_range_and_changes_pixels():
    x = _batch()
    g = torch.Generator().manual_seed(1)
    y = augment(x, AugmentConfig(rotate_deg=15, shift=0.1, zoom=0.2, contrast=0.5, brightness=0.3), g)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.allclose(x, y)
    assert augment(x, AugmentConfig(enabled=False), g) is x


def test_augment_is_reproducible_with_a_seeded_generator():
    x = _batch()
    a = augment(x, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment(x, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_tta_view_zero_is_identity_and_views_differ():
    x = _batch()
    views = tta_views(x, len(TTA_VIEWS))
    assert views[0] is x or torch.equal(views[0], x)
    assert all(v.shape == x.shape for v in views)
    assert all(not torch.allclose(v, x) for v in views[1:])
    with pytest.raises(ValueError):
        tta_views(x, len(TTA_VIEWS) + 1)


def test_schedules():
    kw = {"warmup": 10, "total": 110, "steps_per_epoch": 10}
    warm = [lr_factor(s, schedule="cosine", gamma=0.9, **kw) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(10, schedule="cosine", gamma=0.9, **kw) == pytest.approx(1.0)
    assert lr_factor(60, schedule="cosine", gamma=0.9, **kw) == pytest.approx(0.5)
    assert lr_factor(110, schedule="cosine", gamma=0.9, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(500, schedule="cosine", gamma=0.9, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(30, schedule="exponential", gamma=0.9, **kw) == pytest.approx(0.9**2)
    assert lr_factor(77, schedule="none", gamma=0.9, **kw) == 1.0
    assert lr_factor(0, schedule="cosine", gamma=0.9, warmup=0, total=5, steps_per_epoch=5) == 1.0
    cos = [lr_factor(s, schedule="cosine", gamma=0.9, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(cos, cos[1:], strict=False))


@pytest.mark.parametrize("n,bs,world", [(47, 5, 2), (48, 8, 2), (10, 4, 3), (7, 64, 2), (9, 4, 1)])
def test_shard_batches_give_every_rank_the_same_number_of_nonempty_batches(n, bs, world):
    idx = np.arange(n)
    shards = [shard_batches(idx, bs, world, r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert all(len(b) > 0 for s in shards for b in s)
    seen = np.concatenate([b for s in shards for b in s])
    assert set(seen.tolist()) == set(range(n))  # every image, padding repeats a few
    assert len(seen) == math.ceil(n / world) * world


@pytest.mark.parametrize("arch,k", [("tf_efficientnet_lite0", 6), ("tf_efficientnet_lite0", 7), ("resnet18", 3), ("small_cnn", 2)])
def test_split_model_tail_of_trunk_equals_model(arch, k):
    from cxr_core.models import create_model

    model, _ = create_model(arch, 3, pretrained=False)
    model.eval()
    trunk, tail = split_model(model, arch, k)
    tail.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(x)), model(x), atol=1e-5)
    assert k <= num_stages(model, arch)
    trunk_ids = {id(p) for p in trunk.parameters()}
    assert trunk_ids.isdisjoint(id(p) for p in tail.parameters())
    with pytest.raises(ValueError):
        split_model(model, arch, num_stages(model, arch) + 1)


def test_config_validation():
    TrainConfig(data="x").validate()
    for bad in ({"tta": 0}, {"tta": 99}, {"balance": "smote"}, {"optimizer": "sgd"}, {"schedule": "step"},
                {"label_smoothing": 1.0}, {"crop_fraction": 0.0}, {"freeze_stages": 3, "pretrained": False}):
        with pytest.raises(ValueError):
            TrainConfig(data="x", **bad).validate()


ALL_FLAGS = (
    "--data D --task multiclass --out R --arch resnet18 --no-pretrained --epochs 3 --batch-size 7 --lr 0.01 "
    "--weight-decay 0.001 --optimizer rmsprop --schedule exponential --gamma 0.8 --warmup-epochs 1.5 "
    "--balance oversample --label-smoothing 0.1 --patience 2 --selection log_loss --val-fraction 0.2 --seed 5 --tta 3 --size 96 --clahe "
    "--crop-fraction 0.9 --rotate 3 --shift 0.02 --zoom 0.05 --contrast 0.2 --brightness 0.05 --device cpu "
    "--max-per-split 40 --entry-id my-entry --notes hello --freeze-stages 2 --train-views 3 --feature-cache FC --threads 1 "
    "--operating-point sens95_val --lung-focus-films 10 --normal-class normal --mask-letters --mask-border 0.02 --hist-match"
)


def test_cli_parses_every_documented_flag():
    from train.classifier import parse_args

    cfg = parse_args(shlex.split(ALL_FLAGS.replace("--freeze-stages 2 ", "")))
    assert (cfg.data, cfg.task, cfg.out, cfg.architecture, cfg.pretrained) == ("D", "multiclass", "R", "resnet18", False)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (3, 7, 0.01, 0.001)
    assert (cfg.optimizer, cfg.schedule, cfg.gamma, cfg.warmup_epochs) == ("rmsprop", "exponential", 0.8, 1.5)
    assert (cfg.balance, cfg.label_smoothing, cfg.patience, cfg.val_fraction, cfg.seed) == ("oversample", 0.1, 2, 0.2, 5)
    assert (cfg.tta, cfg.size, cfg.clahe, cfg.crop_fraction) == (3, 96, True, 0.9)
    a = cfg.augment
    assert (a.rotate_deg, a.shift, a.zoom, a.contrast, a.brightness, a.enabled) == (3, 0.02, 0.05, 0.2, 0.05, True)
    assert (cfg.device, cfg.max_per_split, cfg.entry_id, cfg.notes) == ("cpu", 40, "my-entry", "hello")
    assert (cfg.train_views, cfg.feature_cache, cfg.threads, cfg.selection) == (3, "FC", 1, "log_loss")
    assert (cfg.operating_point, cfg.lung_focus_films, cfg.recipe, cfg.normal_class) == ("sens95_val", 10, None, "normal")
    assert (cfg.mask_letters, cfg.mask_border, cfg.hist_match) == (True, 0.02, True)
    assert parse_args(["--data", "D"]).task == "auto"  # binary for the Kermany layout, the dataset's task otherwise
    assert parse_args(["--data", "D", "--no-augment"]).augment.enabled is False
    assert parse_args(["--data", "D", "--freeze-stages", "6"]).freeze_stages == 6
    # every flag of the parser is exercised above
    from train.classifier import build_parser

    parser_flags = {o for act in build_parser()._actions for o in act.option_strings}
    seen = set(shlex.split(ALL_FLAGS)) | {"--no-augment", "-h", "--help", "--recipe"}  # --recipe: tests/test_recipes.py
    assert parser_flags <= seen, parser_flags - seen


def test_cli_rejects_impossible_combinations(capsys):
    from train.classifier import parse_args

    """argparse's usage error (exit code 2) with the reason on stderr, for each impossible combination."""
    from cxr_core.preprocess import TTA_VIEWS

    cases = [
        (["--data", "D", "--tta", "0"], f"error: tta must be between 1 and {len(TTA_VIEWS)}"),
        (["--data", "D", "--no-pretrained", "--freeze-stages", "3"],
         "error: freezing stages of a randomly initialised network makes no sense: drop --freeze-stages"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2, f"{argv}: exit code {info.value.code!r}, expected argparse's 2"
        assert message in err, f"{argv}: {message!r} not in stderr {err!r}"
        assert err.startswith("usage: "), err


def test_results_command_round_trips_through_the_cli():
    from dataclasses import asdict

    from train.classifier import parse_args
    from train.results import command_from_args

    cfg = parse_args(shlex.split(ALL_FLAGS.replace("--no-pretrained ", "")))
    args = {**asdict(cfg), "augment": cfg.augment.to_dict()}
    line = command_from_args(args)
    assert line.startswith("python -m train.classifier --data D --task multiclass")
    again = parse_args(shlex.split(line)[3:])
    assert asdict(again) == asdict(cfg)


def test_report_metrics_multiclass_adds_specificity_and_binary_view():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    m = report_metrics("multiclass", y, probs, ("normal", "bacteria", "virus"))
    assert m["accuracy"] == pytest.approx(3 / 6)
    ab = m["as_binary"]
    # normal row: one normal called pneumonia; one virus called normal
    assert ab["confusion"] == [[1, 1], [1, 3]]
    assert ab["specificity"] == pytest.approx(0.5) and ab["sensitivity"] == pytest.approx(0.75)
    assert m["specificity_per_class"]["normal"] == pytest.approx(3 / 4)
    b = report_metrics("binary", np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), ("NORMAL", "PNEUMONIA"))
    assert b["per_class_accuracy"] == {"NORMAL": 1.0, "PNEUMONIA": 0.5}


def test_frozen_trunk_training_matches_the_saved_model(synthetic_data, tmp_path):
    """Features cached once per view, tail trained; the saved full model gives the card's numbers."""
    from cxr_core.data import read_dataset
    from cxr_core.imaging import read_gray
    from cxr_core.inference import infer, load_classifier
    from cxr_core.preprocess import prepare
    from cxr_core.training import train_classifier

    cache = tmp_path / "fc"
    cfg = TrainConfig(data=str(synthetic_data), task="multiclass", out=str(tmp_path / "reg"), size=64, epochs=2,
                      batch_size=16, tta=2, device="cpu", freeze_stages=6, train_views=2, feature_cache=str(cache), lr=1e-3)
    entry = train_classifier(cfg, log=lambda s: None)
    assert len(list(cache.glob("features-*.safetensors"))) == 3
    t = entry.card["training"]
    clf = load_classifier(entry)
    total = sum(p.numel() for p in clf.model.parameters())
    assert t["frozen_stages"] == 6 and t["trainable_parameters"] < 0.4 * total
    ds = read_dataset(synthetic_data)
    test = ds.split("test")
    x = np.stack([prepare(read_gray(ds.abspath(s)), clf.spec) for s in test])
    probs, _ = infer(clf.model, x, clf.spec, clf.task, tta=2)
    y = np.array([s.target("multiclass") for s in test])
    m = report_metrics("multiclass", y, probs, clf.classes)
    assert m["accuracy"] == pytest.approx(entry.card["metrics"]["test_tta2"]["accuracy"])
    assert m["auroc_ovr"] == pytest.approx(entry.card["metrics"]["test_tta2"]["auroc_ovr"], abs=1e-4)
    # the pretrained trunk did not move
    from cxr_core.models import create_model

    ref, _ = create_model("tf_efficientnet_lite0", 3, pretrained=True)
    assert torch.equal(ref.conv_stem.weight, clf.model.conv_stem.weight)
    assert torch.equal(ref.blocks[5][0].conv_pw.weight, clf.model.blocks[5][0].conv_pw.weight)
    assert not torch.equal(ref.blocks[6][0].conv_pw.weight, clf.model.blocks[6][0].conv_pw.weight)
    # a second task reuses the cached features
    logs: list[str] = []
    second = train_classifier(TrainConfig(**{**cfg.__dict__, "task": "binary"}), log=logs.append)
    assert sum("frozen-stage features from" in s for s in logs) == 3
    assert t["features_from_cache"] == [] and sorted(second.card["training"]["features_from_cache"]) == ["test", "train", "val"]


def test_throughput_bench_runs_and_prints_the_device(capsys):
    from bench.train_throughput import main

    assert main(["--sizes", "32", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: cpu") and "tf_efficientnet_lite0" in out


def test_a_saturated_validation_score_is_broken_by_log_loss():
    """Two epochs with val AUROC 1.0: the one whose probabilities sit on the right side of 0.5 wins.

    Regression: the first epoch to reach AUROC 1.0 on a 45-image split was kept with val accuracy
    0.40 (every pneumonia below 0.5) and scored 0.35 on test.
    """
    from cxr_core.metrics import task_metrics

    y = np.array([0, 0, 0, 1, 1, 1])
    early = np.array([0.10, 0.12, 0.15, 0.30, 0.35, 0.40])  # ranked perfectly, all called NORMAL
    late = np.array([0.05, 0.10, 0.20, 0.80, 0.90, 0.95])
    keys = {}
    for name, p in (("early", early), ("late", late)):
        probs = np.stack([1 - p, p], axis=1)
        m = task_metrics("binary", y, probs, ("NORMAL", "PNEUMONIA"))
        assert m["auroc"] == 1.0
        keys[name] = _selection_key("binary", m, y, probs)
    assert keys["late"] > keys["early"]
    # A higher score still wins over a lower log-loss.
    worse_rank = np.array([0.05, 0.10, 0.85, 0.80, 0.90, 0.95])
    probs = np.stack([1 - worse_rank, worse_rank], axis=1)
    m = task_metrics("binary", y, probs, ("NORMAL", "PNEUMONIA"))
    assert _selection_key("binary", m, y, probs) < keys["early"]
    # Multiclass: equal accuracy, lower log-loss wins.
    y3 = np.array([0, 1, 2])
    sure = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    unsure = np.array([[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]])
    k = [_selection_key("multiclass", task_metrics("multiclass", y3, q, ("N", "B", "V")), y3, q) for q in (sure, unsure)]
    assert k[0][0] == k[1][0] == 1.0 and k[0] > k[1]


def test_log_loss_selection_prefers_calibrated_epochs_over_a_saturated_score():
    """``selection="log_loss"``: a lower log-loss wins even against a higher AUROC (the demo's binary model
    kept an epoch with val AUROC 1.0 and log-loss 0.44 over one with 0.987 and 0.15; test accuracy 0.78)."""
    from cxr_core.metrics import task_metrics

    y = np.array([0, 0, 0, 1, 1, 1])
    ranked = np.array([0.30, 0.35, 0.40, 0.45, 0.48, 0.49])  # AUROC 1.0, everything near 0.4
    sharp = np.array([0.02, 0.05, 0.60, 0.55, 0.95, 0.97])  # one pair swapped, confident and mostly right
    keys = {}
    for name, p in (("ranked", ranked), ("sharp", sharp)):
        probs = np.stack([1 - p, p], axis=1)
        m = task_metrics("binary", y, probs, ("NORMAL", "PNEUMONIA"))
        keys[name] = (_selection_key("binary", m, y, probs, "score"), _selection_key("binary", m, y, probs, "log_loss"))
    assert keys["ranked"][0] > keys["sharp"][0]  # by AUROC
    assert keys["sharp"][1] > keys["ranked"][1]  # by log-loss
    with pytest.raises(ValueError, match="selection"):
        TrainConfig(data="x", selection="auroc").validate()
