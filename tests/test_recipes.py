"""Issue 14: named recipes, temperature scaling, validation-chosen operating points, lung focus, recipe table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_core.calibration import (
    apply_temperature,
    calibrated_threshold,
    fit_temperature,
    fixed_sensitivity_threshold,
    probs_to_logits,
)
from cxr_core.cards import read_card
from cxr_core.lung_focus import LUNG_BOX, focus_films, lung_focus
from cxr_core.training import RECIPES, TrainConfig


def test_fit_temperature_recovers_a_known_temperature_binary():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 20000)
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z / 2.5))).astype(int)  # true probabilities are sigmoid(z / 2.5)
    assert fit_temperature(z, y, "binary") == pytest.approx(2.5, rel=0.08)
    assert fit_temperature(z[:, None], y, "binary") == pytest.approx(2.5, rel=0.08)  # (N, 1) as a head gives it


def test_fit_temperature_recovers_a_known_temperature_multiclass():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (20000, 3))
    p = np.exp(z / 0.5)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature(z, y, "multiclass") == pytest.approx(0.5, rel=0.08)


def test_apply_temperature_keeps_decisions_and_identity():
    rng = np.random.default_rng(2)
    p1 = rng.random(50)
    probs = np.stack([1 - p1, p1], 1)
    assert np.allclose(apply_temperature(probs, "binary", 1.0), probs, atol=1e-6)
    soft = apply_temperature(probs, "binary", 2.0)
    assert np.allclose(soft.sum(1), 1.0)
    assert np.all(np.abs(soft[:, 1] - 0.5) <= np.abs(probs[:, 1] - 0.5) + 1e-9)  # T > 1 softens
    thr = 0.3
    assert np.array_equal(probs[:, 1] >= thr, soft[:, 1] >= calibrated_threshold(thr, 2.0) - 1e-12)
    m = rng.dirichlet(np.ones(3), 40)
    for t in (0.5, 3.0):
        assert np.array_equal(apply_temperature(m, "multiclass", t).argmax(1), m.argmax(1))
    assert np.allclose(apply_temperature(m, "multiclass", 1.0), m, atol=1e-6)
    assert probs_to_logits(probs, "binary").shape == (50,)


def test_card_temperature_reads_plain_and_tta():
    card = read_card({"kind": "classifier", "calibration": {"temperature": 1.7, "temperature_tta4": 2.1}})
    assert card.temperature() == 1.7 and card.temperature(4) == 2.1 and card.temperature(2) == 1.7
    assert read_card({"kind": "classifier"}).temperature() == 1.0  # a card written before calibration


def test_fixed_sensitivity_threshold_is_the_highest_keeping_the_sensitivity():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    thr = fixed_sensitivity_threshold(y, p, 0.95)
    sens = (p[y == 1] >= thr).mean()
    assert sens >= 0.95
    higher = np.sort(p[y == 1])[np.sort(p[y == 1]) > thr]
    if len(higher):
        assert (p[y == 1] >= higher[0]).mean() < 0.95


def test_lung_focus_peak_and_mass():
    cams = np.zeros((3, 100, 100))
    cams[0, 50, 50] = 1.0  # centre: inside
    cams[1, 2, 2] = 1.0  # top-left corner: outside (a shoulder / film border)
    cams[2] = 1.0  # uniform: peak at (0, 0) outside, mass = box area
    peak, mass = lung_focus(cams)
    r0, r1, c0, c1 = LUNG_BOX
    area = (r1 - r0) * (c1 - c0)
    assert peak == pytest.approx(1 / 3)
    assert mass == pytest.approx((1 + 0 + area) / 3, abs=0.01)
    idx = focus_films(624, 80)
    assert len(idx) == 80 and idx[0] == 0 and idx[-1] == 623
    assert len(focus_films(10, 80)) == 10


def test_recipes_build_valid_configs_and_cli_overrides():
    from train.classifier import build_parser, parse_args

    for name in RECIPES:
        cfg = TrainConfig.from_recipe(name, data="x")
        cfg.validate()
        assert cfg.recipe == name
        if cfg.freeze_stages:
            assert cfg.freeze_stages >= 1
    assert "cpu-best" in RECIPES
    cfg = parse_args(["--data", "x", "--recipe", "cpu-best", "--epochs", "3"])
    best = TrainConfig.from_recipe("cpu-best", data="x")
    assert cfg.recipe == "cpu-best" and cfg.epochs == 3
    assert (cfg.size, cfg.freeze_stages, cfg.architecture, cfg.train_views) == (best.size, best.freeze_stages, best.architecture, best.train_views)
    assert cfg.augment == best.augment
    assert parse_args(["--data", "x"]).recipe is None
    help_text = build_parser().format_help()
    assert "--recipe" in help_text and "cpu-best:" in help_text
    with pytest.raises(ValueError, match="unknown recipe"):
        TrainConfig.from_recipe("nope", data="x")
    with pytest.raises(ValueError, match="operating_point"):
        TrainConfig(data="x", operating_point="lucky").validate()


def test_cards_carry_calibration_operating_points_and_lung_focus(tiny_registry):
    from cxr_core.registry import list_entries

    cards = {s.card["task"]: s.card for s in list_entries(tiny_registry) if s.ok}
    for task, card in cards.items():
        cal = card["calibration"]
        assert cal["fitted_on"] == "val" and cal["temperature"] > 0 and "temperature_tta2" in cal
        assert sum(cal["reliability"]["test"]["calibrated"]["count"]) == card["dataset"]["used"]["test"]
        assert "ece_calibrated" in card["metrics"]["test"]
        focus = card["lung_focus"]
        assert 0 <= focus["peak_inside"] <= 1 and 0 <= focus["mass_inside"] <= 1 and focus["films"] >= 1
        assert focus["box"] == list(LUNG_BOX)
        assert card["threshold_source"] == ("default" if task == "binary" else "argmax")
    b = cards["binary"]
    assert {"youden_val", "sens95_val", "youden_val_tta2", "sens95_val_tta2"} <= set(b["thresholds"])
    assert "test@sens95_val" in b["metrics"] and b["threshold"] == 0.5


def test_recipe_and_lever_tables(tiny_registry, tmp_path):
    from cxr_core.registry import list_entries, update_card
    from train.results import main

    reg = tmp_path / "reg"
    import shutil

    shutil.copytree(tiny_registry, reg)
    for s in list_entries(reg):  # the recipe table lists real-data cards only
        update_card(s.entry(), lambda c: c["dataset"].update(name="kermany-224"))
    metrics_b = {"accuracy": 0.9, "auroc": 0.95, "sensitivity": 0.9, "specificity": 0.8, "ece": 0.04, "ece_calibrated": 0.02}
    metrics_m = {"accuracy": 0.8, "auroc_ovr": 0.93, "per_class_accuracy": {"normal": 0.7, "bacteria": 0.9, "virus": 0.8},
                 "ece": 0.05, "ece_calibrated": 0.03}
    levers = tmp_path / "levers.jsonl"
    common = {"arch": "tf_efficientnet_lite0", "size": 224, "cut": 6, "views": 2, "seconds_train": 60, "lung_peak80": 0.5,
              "lung_mass80": 0.6, "seed": 0}
    levers.write_text(
        json.dumps({**common, "task": "binary", "val": metrics_b, "test": metrics_b, "test_tta4": metrics_b,
                    "test@youden_val": metrics_b}) + "\n"
        + json.dumps({**common, "task": "multiclass", "val": metrics_m, "test": metrics_m, "test_tta4": metrics_m}) + "\n"
    )
    out = tmp_path / "R.md"
    assert main(["--root", str(reg), "--out", str(out), "--levers", str(levers)]) == 0
    text = out.read_text()
    assert "## Recipe table (issue 14)" in text and "## Lever screen" in text
    assert "lite0 224 px · freeze 6 · 2 views" in text
    assert text.count("| binary | `python -m train.classifier") == 1


def test_reliability_bins_match_the_ece():
    from cxr_core.calibration import reliability
    from cxr_core.metrics import expected_calibration_error

    rng = np.random.default_rng(4)
    p1 = rng.random(300)
    probs = np.stack([1 - p1, p1], 1)
    y = (rng.random(300) < p1).astype(int)
    r = reliability(probs, y, n_bins=15)
    assert sum(r["count"]) == 300 and len(r["edges"]) == 16
    ece = sum(c / 300 * abs(a - f) for a, f, c in zip(r["accuracy"], r["confidence"], r["count"], strict=True) if c)
    assert ece == pytest.approx(expected_calibration_error(probs, y, 15))


def test_a_recipe_command_round_trips():
    """A card trained from a recipe reproduces through its command line, also where a flag sets a field
    back to TrainConfig's own default (224 px over cpu-baseline's 160)."""
    import shlex
    from dataclasses import asdict

    from train.classifier import parse_args
    from train.results import command_from_args

    for argv in (["--recipe", "cpu-baseline", "--size", "224", "--zoom", "0.1", "--rotate", "3"], ["--recipe", "cpu-best"]):
        cfg = parse_args(["--data", "D", *argv])
        line = command_from_args({**asdict(cfg), "augment": cfg.augment.to_dict()})
        assert "--recipe" in line
        assert asdict(parse_args(shlex.split(line)[3:])) == asdict(cfg)


def test_lung_box_on_a_cropped_input():
    from cxr_core.lung_focus import box_on_input

    assert box_on_input(LUNG_BOX, 1.0) == pytest.approx(LUNG_BOX)
    r0, r1, c0, c1 = box_on_input(LUNG_BOX, 0.8)  # the input shows the film's rows and columns 10-90 %
    assert (r0, r1, c0, c1) == pytest.approx(((0.12 - 0.1) / 0.8, (0.85 - 0.1) / 0.8, 0.0, 1.0))


def test_issue14_status_reads_the_threshold_in_use():
    from cxr_core.cards import read_card
    from train.results import _matching_recipe, issue14_status

    at = {"accuracy": 0.95, "sensitivity": 0.96, "specificity": 0.93}
    card = {"task": "binary", "threshold_source": "sens95_val", "lung_focus": {"peak_inside": 0.9, "mass_inside": 0.7},
            "metrics": {"test": {"accuracy": 0.8, "auroc": 0.97, "sensitivity": 0.99, "specificity": 0.5, "ece": 0.1,
                                 "ece_calibrated": 0.04}, "test@sens95_val": at}}
    s = issue14_status(read_card({"kind": "classifier", **card}))
    assert "accuracy ≥ 0.928: **met** (0.9500)" in s and "specificity ≥ 0.9: **met**" in s and "ece ≤ 0.05: **met**" in s
    assert "lung focus ≥ 80 % / 80 %: not met" in s
    card["threshold_source"] = "default"
    assert "specificity ≥ 0.9: not met (0.5000)" in issue14_status(read_card({"kind": "classifier", **card}))
    assert _matching_recipe({**RECIPES["cpu-baseline"], "seed": 0}) == "= cpu-baseline"
    assert _matching_recipe({"size": 96}) == "—"
