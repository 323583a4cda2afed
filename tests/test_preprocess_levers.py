"""Film-level preprocessing options (issue 14): letters, border, histogram matching; off by default."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr_core.config import InputSpec
from cxr_core.imaging import (
    film_options,
    histogram_quantiles,
    mask_border,
    mask_letters,
    match_histogram,
    mean_histogram,
)
from cxr_core.preprocess import prepare

OLD_KEYS = {"size", "channels", "mean", "std", "crop_fraction", "clahe"}


def _film(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((200, 200), 20, np.uint8)  # dark margin
    img[20:190, 30:170] = 110 + rng.integers(0, 30, (170, 140))  # body
    img[60:150, 50:90] = 60  # a lung
    img[40:160, 95:105] = 230  # spine: bright, long, central
    img[10:22, 6:14] = 250  # a burnt-in letter on the margin
    return img


def test_spec_defaults_keep_old_cards_and_keys():
    spec = InputSpec(size=160)
    assert set(spec.to_dict()) == OLD_KEYS  # cards and feature-cache keys as before the options existed
    old_card = {"size": 160, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_fraction": 1.0, "clahe": False}
    assert InputSpec.from_dict(old_card) == spec
    on = InputSpec(size=160, mask_letters=True, mask_border=0.03, hist_ref=(0.0, 100.0, 255.0))
    d = on.to_dict()
    assert d["mask_letters"] is True and d["mask_border"] == 0.03 and list(d["hist_ref"]) == [0.0, 100.0, 255.0]
    assert InputSpec.from_dict({**d, "hist_ref": list(d["hist_ref"])}) == on


def test_default_prepare_is_unchanged():
    img = _film()
    want = np.asarray(Image.fromarray(img).resize((96, 96), Image.Resampling.BILINEAR))
    assert np.array_equal(prepare(img, InputSpec(size=96)), want)


def test_letters_masked_bone_and_body_kept():
    img = _film()
    out = mask_letters(img)
    assert out[10:22, 6:14].max() <= 40  # the letter took the margin's grey
    assert np.array_equal(out[40:160, 95:105], img[40:160, 95:105])  # spine untouched
    assert np.array_equal(out[30:190, 40:170], img[30:190, 40:170])
    assert np.array_equal(mask_letters(np.full((50, 50), 128, np.uint8)), np.full((50, 50), 128, np.uint8))


def test_border_replaced_by_the_edge_inside():
    img = _film()
    img[:, 195:] = 255  # a scanner line
    out = mask_border(img, 0.03)
    assert out.shape == img.shape and out[:, 194:].max() == img[:, 193].max()
    assert np.array_equal(out[6:194, 6:194], img[6:194, 6:194])
    assert np.array_equal(mask_border(img, 0.0), img)


def test_histogram_matching_follows_the_reference():
    rng = np.random.default_rng(1)
    dark = rng.integers(0, 100, (120, 120)).astype(np.uint8)
    bright = rng.integers(100, 256, (120, 120)).astype(np.uint8)
    flat = histogram_quantiles(np.ones(256))
    assert len(flat) == 33 and flat[0] == 0.0 and flat[-1] == 256.0 and abs(flat[16] - 128) < 0.01
    ref = histogram_quantiles(mean_histogram([bright, bright]))
    out = match_histogram(dark, ref)
    assert abs(np.median(out) - np.median(bright)) < 6
    order = np.argsort(dark.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # grey order kept


def test_prepare_applies_film_options_first():
    img = _film()
    ref = histogram_quantiles(mean_histogram([_film(2)]))
    spec = InputSpec(size=96, mask_letters=True, mask_border=0.03, hist_ref=ref)
    film = film_options(img, letters=True, border=0.03, hist_ref=ref)
    want = np.asarray(Image.fromarray(film).resize((96, 96), Image.Resampling.BILINEAR))
    assert np.array_equal(prepare(img, spec), want)


def test_on_prepared_turns_off_everything_that_changes_pixels():
    spec = InputSpec(size=64, clahe=True, crop_fraction=0.9, mask_letters=True, mask_border=0.05, hist_ref=(0.0, 128.0, 255.0))
    plain = spec.on_prepared()
    assert (plain.size, plain.mean, plain.std) == (spec.size, spec.mean, spec.std)
    img = prepare(_film(), spec)
    assert (prepare(img, plain) == img).all()  # a prepared film goes through unchanged


def test_train_classifier_stores_the_film_options_and_the_app_applies_them(tmp_path):
    """``--mask-letters --mask-border --hist-match`` reach the card (the reference from the train split only) and
    the Predictor prepares uploads with them."""
    from cxr_core.inference import load_classifier
    from cxr_core.registry import list_entries, select
    from cxr_core.synthetic import SyntheticSpec, write_dataset
    from cxr_core.training import train_classifier
    from train.classifier import parse_args

    data = write_dataset(tmp_path / "data", SyntheticSpec(n_per_class={"train": 8, "val": 3, "test": 3}, size=96, seed=5))
    cfg = parse_args(["--data", str(data), "--out", str(tmp_path / "reg"), "--size", "64", "--epochs", "1", "--tta", "1",
                      "--device", "cpu", "--lung-focus-films", "2", "--mask-letters", "--mask-border", "0.03", "--hist-match"])
    assert (cfg.mask_letters, cfg.mask_border, cfg.hist_match) == (True, 0.03, True)
    entry = train_classifier(cfg, log=lambda s: None)
    spec = entry.classifier_card.input
    assert spec.mask_letters and spec.mask_border == 0.03 and len(spec.hist_ref) == 33
    assert list(spec.hist_ref) == sorted(spec.hist_ref) and spec.hist_ref[0] < spec.hist_ref[-1]
    loaded = load_classifier(select(list_entries(tmp_path / "reg"), "classifier", None))
    assert loaded.spec == spec  # what the Predict page prepares every upload with
    with pytest.raises(SystemExit):
        parse_args(["--data", str(data), "--mask-border", "0.3"])


def test_describe_names_every_option_that_is_on():
    assert InputSpec(size=160).describe() == "160 px"
    d = InputSpec(size=160, clahe=True, mask_letters=True, mask_border=0.03, hist_ref=(0.0, 255.0)).describe()
    assert d == "160 px · CLAHE · letters masked · border 3% masked · histogram-matched"
