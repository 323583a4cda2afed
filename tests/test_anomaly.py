"""Healthy-only anomaly detection: threshold arithmetic, detectors, registry entries, pages, OOD guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from cxr_core.anomaly import (
    AEConfig,
    ConvAutoencoder,
    FeatureConfig,
    FeatureDetector,
    ThresholdTable,
    gaussian_ssim_map,
    load_detector,
    score_metrics,
    suggest_thresholds,
)
from cxr_core.feature_recon import ReconConfig
from cxr_core.registry import list_entries, verify_entry
from tests.conftest import REPO

TIMEOUT = 120


# --------------------------------------------------------------------------- threshold arithmetic


def _two_gaussians(n_neg: int = 300, n_pos: int = 200, shift: float = 1.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = np.concatenate([rng.normal(0, 1, n_neg), rng.normal(shift, 1, n_pos)])
    y = np.concatenate([np.zeros(n_neg, int), np.ones(n_pos, int)])
    return y, s


def _brute(y, s, t):
    pred = s >= t
    return int(((~pred) & (y == 0)).sum()), int((pred & (y == 0)).sum()), int(((~pred) & (y == 1)).sum()), int((pred & (y == 1)).sum())


def test_threshold_table_counts_match_brute_force_including_ties():
    y, s = _two_gaussians()
    s = np.round(s, 1)  # many ties
    table = ThresholdTable(y, s)
    for t in [-10, s.min(), 0.0, 0.3, 1.0, float(np.median(s)), s.max(), 10]:
        assert table.counts(t) == _brute(y, s, t)
    m = table.metrics(0.7)
    tn, fp, fn, tp = _brute(y, s, 0.7)
    assert m["sensitivity"] == tp / (tp + fn) and m["specificity"] == tn / (tn + fp)
    assert m["f1"] == pytest.approx(f1_score(y, s >= 0.7))
    fpr, tpr = table.roc()
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def test_suggestions_with_both_classes_meet_their_definitions():
    y, s = _two_gaussians()
    out = suggest_thresholds(y, s, target_sensitivity=0.95, normal_quantile=0.95)
    sug = out["suggestions"]
    assert set(sug) == {"youden", "best_f1", "sensitivity_95", "normal_q95"}
    assert out["chosen"] == "youden" and not out["fallback"]
    table = ThresholdTable(y, s)
    # Youden: no candidate threshold has a higher sens + spec - 1.
    j = lambda t: table.metrics(t)["sensitivity"] + table.metrics(t)["specificity"] - 1  # noqa: E731
    assert j(sug["youden"]["value"]) >= max(j(t) for t in np.unique(s)) - 1e-12
    # Best F1: equal to the brute-force optimum.
    assert table.metrics(sug["best_f1"]["value"])["f1"] == pytest.approx(max(table.metrics(t)["f1"] for t in np.unique(s)))
    # Target sensitivity: reached, and the next higher score would miss it.
    t95 = sug["sensitivity_95"]["value"]
    assert table.metrics(t95)["sensitivity"] >= 0.95
    assert table.metrics(np.nextafter(t95, np.inf))["sensitivity"] < 0.95
    # Normal quantile: about 5% of normals flagged.
    assert table.metrics(sug["normal_q95"]["value"])["specificity"] == pytest.approx(0.95, abs=0.01)


def test_validation_without_anomalies_falls_back_to_a_normal_quantile_not_flag_everything():
    rng = np.random.default_rng(1)
    s = rng.normal(size=200)
    out = suggest_thresholds(np.zeros(200, int), s, normal_quantile=0.95)
    assert out["fallback"] and out["chosen"] == "normal_q95"
    assert "no anomalous" in out["note"]
    assert out["threshold"] == pytest.approx(np.quantile(s, 0.95))
    assert out["threshold"] > s.min()
    assert (s >= out["threshold"]).mean() == pytest.approx(0.05, abs=0.01)
    assert set(out["suggestions"]) == {"normal_q95"}


def test_best_f1_that_flags_everything_is_said_and_not_chosen():
    # Anomalies are the majority and score lower than normals: F1 is best when everything is flagged.
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(30, int), np.ones(90, int)]
    s = np.r_[rng.normal(3, 0.1, 30), rng.normal(0, 0.1, 90)]
    out = suggest_thresholds(y, s)
    assert "every validation image is flagged" in out["suggestions"]["best_f1"]["note"]
    assert out["chosen"] == "youden"


def test_score_metrics_report_worse_than_chance_honestly():
    y, s = _two_gaussians()
    m = score_metrics(y, -s)
    assert m["auroc"] < 0.5 and "worse than chance" in m["verdict"]
    assert m["aupr_chance"] == pytest.approx(0.4)
    assert score_metrics(np.zeros(5, int), np.arange(5.0))["auroc"] is None


# --------------------------------------------------------------------------- detectors


def test_ssim_and_autoencoder_shapes():
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(gaussian_ssim_map(x, x), torch.ones_like(x), atol=1e-4)
    assert gaussian_ssim_map(x, 1 - x).mean() < 0.5
    ae = ConvAutoencoder((8, 8, 16, 16), latent=4)
    assert ae(x).shape == x.shape


def test_feature_detector_separates_a_shifted_distribution():
    rng = np.random.default_rng(0)
    train = {"a": rng.normal(size=(200, 20)), "b": rng.normal(size=(200, 8))}
    test = {k: np.r_[rng.normal(size=(50, v.shape[1])), rng.normal(size=(50, v.shape[1])) + 1.0] for k, v in train.items()}
    y = np.r_[np.zeros(50), np.ones(50)]
    for method in ("mahalanobis", "knn"):
        det = FeatureDetector.fit(FeatureConfig(layers=("a", "b"), method=method), train)
        assert roc_auc_score(y, det.score(test)) > 0.9, method
        assert all(t.dtype == torch.float32 for t in det.tensors.values())


@pytest.fixture(scope="module")
def anomaly_registry(synthetic_data, tmp_path_factory) -> Path:
    """Every detector and the OOD guard fitted on the small synthetic set (seconds on CPU)."""
    from cxr_core.detector_training import AnomalyConfig, run

    root = tmp_path_factory.mktemp("anomaly_registry")
    cfg = AnomalyConfig(
        data=str(synthetic_data), out=str(root), detector="all", synthetic=True,
        ae=AEConfig(size=32, epochs=2, batch_size=8, widths=(8, 8, 16, 16), latent=4),
        features=FeatureConfig(size=64, layers=("2", "3")), ood_max_train=40,
        ood_features=FeatureConfig(size=64, layers=("3", "6"), pooling="mean"),
        recon_kinds=("inpaint", "distill"), recon=ReconConfig(size=64, epochs=2, hidden=16, bottleneck=8, batch_size=8),
    )
    made = run(cfg, log=lambda s: None)
    assert len(made) == 6
    return root


def test_training_writes_valid_entries(anomaly_registry, synthetic_data):
    statuses = list_entries(anomaly_registry)
    assert all(s.ok for s in statuses), [s.reason for s in statuses]
    kinds = sorted((s.card["kind"], s.card["task"], s.card.get("detector")) for s in statuses)
    assert kinds == [
        ("autoencoder", "anomaly", "autoencoder-mse"),
        ("detector", "anomaly", "feature-recon-distill"),
        ("detector", "anomaly", "feature-recon-inpaint"),
        ("detector", "anomaly", "features-knn"),
        ("detector", "anomaly", "features-mahalanobis"),
        ("detector", "ood", "ood-features-mahalanobis"),
    ]
    for s in statuses:
        card, entry = s.card, s.entry()
        assert card["dataset"]["fingerprint"] and card["dataset"]["synthetic"]
        assert card["input"]["size"] in (32, 64)
        assert "weights.safetensors" in card["files"]
        if card["task"] != "anomaly":
            continue
        assert card["dataset"]["train_labels"] == ["NORMAL"]
        z = entry.load_npz("scores.npz")
        assert set(z) == {"scores", "labels", "paths", "splits", "subtypes"}
        n_val, n_test = card["dataset"]["used"]["val"], card["dataset"]["used"]["test"]
        assert len(z["scores"]) == n_val + n_test and np.isfinite(z["scores"]).all()
        for split in ("val", "test"):
            m = card["metrics"][split]
            assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["aupr"] <= 1.0
            assert m["auroc"] == pytest.approx(roc_auc_score(z["labels"][z["splits"] == split], z["scores"][z["splits"] == split]))
            h = card["histograms"][split]
            assert sum(h["normal"]) + sum(h["anomalous"]) == m["n"]
        assert card["threshold"] == card["thresholds"]["threshold"]
        assert {"youden", "best_f1", "sensitivity_95", "normal_q95"} <= set(card["thresholds"]["suggestions"])
        # The loaded detector reproduces the stored score of a test image (no train/serve skew).
        from cxr_core.data import safe_join
        from cxr_core.imaging import read_gray

        det = load_detector(entry)
        i = int(np.flatnonzero(z["splits"] == "test")[0])
        out = det.score(read_gray(safe_join(synthetic_data, str(z["paths"][i]))))
        assert out.score == pytest.approx(float(z["scores"][i]), rel=1e-4)
        has_map = card["kind"] == "autoencoder" or "feature_recon" in card
        assert (out.error_map is not None) == has_map
        if has_map:
            assert out.error_map.shape == out.input_u8.shape and np.isfinite(out.error_map).all()
        if "feature_recon" in card:
            assert card["map_scale"] > 0 and card["map_grid"] == card["input"]["size"] // 16
    ae = next(s for s in statuses if s.card["kind"] == "autoencoder")
    assert len(ae.card["training"]["history"]) == 2


def test_no_pickle_in_anomaly_files(anomaly_registry):
    for s in list_entries(anomaly_registry):
        for name in s.card["files"]:
            if name.endswith(".npz"):
                with np.load(s.path / name, allow_pickle=False) as z:
                    for k in z.files:
                        assert z[k].dtype.kind != "O"


# --------------------------------------------------------------------------- pages


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _panel(at) -> dict:
    """The data the live threshold panel (a components-v2 element) was mounted with."""
    panels = [e for e in at.get("bidi_component") if e.proto.component_name == "cxr_lens_threshold_panel"]
    assert len(panels) == 1, panels
    return json.loads(panels[0].proto.json)


def test_threshold_page_panel_commit_and_save_write_card(anomaly_registry, tmp_path, monkeypatch):
    """The browser's live panel gets the sorted scores of the split and the committed threshold;
    a commit (what the panel's trigger callback stores) reruns with it, Save writes it with the
    metrics at that threshold, a suggestion button moves it and tells the panel to adopt it.
    The panel's in-browser behaviour is tested in tests/browser/test_anomaly_threshold.py."""
    from streamlit.testing.v1 import AppTest

    from cxr_core.anomaly import ThresholdTable

    reg = _copy(anomaly_registry, tmp_path / "reg")
    monkeypatch.setenv("CXR_REGISTRY", str(reg))
    at = AppTest.from_file(str(REPO / "pages/3_Anomaly_threshold.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert len(at.selectbox(key="anomaly_entry").options) == 5  # the OOD guard is not an anomaly detector
    entry_id = at.selectbox(key="anomaly_entry").value
    key = f"anomaly_thr::{entry_id}"
    card = json.loads((reg / entry_id / "card.json").read_text())
    z = np.load(reg / entry_id / "scores.npz", allow_pickle=False)
    val = z["splits"] == "val"
    table = ThresholdTable(z["labels"][val], z["scores"][val])

    data = _panel(at)
    assert data["neg"] == table.neg.tolist() and data["pos"] == table.pos.tolist()
    assert data["threshold"] == pytest.approx(card["threshold"]) and data["rev"] == 0
    assert data["min"] <= min(data["neg"] + data["pos"]) and data["max"] >= max(data["neg"] + data["pos"])
    assert sum(data["hist"]["normal"]) == table.n_neg and sum(data["hist"]["anomalous"]) == table.n_pos
    assert data["roc"]["fpr"][0] == 0 and data["roc"]["tpr"][-1] == 1

    lo = data["min"]
    at.session_state[key] = lo  # what the panel's commit callback stores
    at.run()
    assert not at.exception, at.exception
    assert _panel(at)["threshold"] == pytest.approx(lo) and _panel(at)["rev"] == 0  # the browser keeps its own value
    assert _panel(at)["dataset"] == data["dataset"]  # same scores: the browser does not rebuild its charts
    at.button(key=f"save::{entry_id}").click().run()
    assert not at.exception, at.exception
    saved = json.loads((reg / entry_id / "card.json").read_text())
    assert saved["threshold"] == pytest.approx(lo)
    assert saved["threshold_source"]["name"] == "manual"
    assert saved["threshold_source"]["at_threshold"]["sensitivity"] == 1.0  # everything flagged at the minimum
    assert verify_entry(reg / entry_id).ok

    # A suggestion button moves the threshold and bumps rev, so the browser adopts the value.
    sug = next(iter(card["thresholds"]["suggestions"]))
    at.button(key=f"sugg::{entry_id}::{sug}").click().run()
    want = min(max(card["thresholds"]["suggestions"][sug]["value"], data["min"]), data["max"])
    assert at.session_state[key] == pytest.approx(want)
    assert _panel(at)["threshold"] == pytest.approx(want) and _panel(at)["rev"] == 1

    # The test split: other scores, so another dataset id and a panel of its own.
    at.radio(key="anomaly_split").set_value("test").run()
    test_data = _panel(at)
    assert test_data["dataset"] != data["dataset"]
    assert len(test_data["neg"]) + len(test_data["pos"]) == int((z["splits"] == "test").sum())


def _walk(node):
    """Every node of an AppTest element tree (st.image has no accessor of its own)."""
    yield node
    for c in getattr(node, "children", {}).values():
        yield from _walk(c)


def test_threshold_page_defaults_to_best_on_validation_and_names_each_kind(anomaly_registry, tmp_path, monkeypatch):
    """Every detector is offered with its kind; the default is the highest validation AUROC (never test);
    a feature reconstruction detector shows its anomaly map for the films either side of the threshold."""
    from streamlit.testing.v1 import AppTest

    from cxr_core.registry import update_card

    reg = _copy(anomaly_registry, tmp_path / "reg")
    statuses = [s for s in list_entries(reg) if s.ok and s.card.get("task") == "anomaly"]
    recon = next(s for s in statuses if s.card.get("detector") == "feature-recon-inpaint")
    # Make the in-painting detector the best on validation and the worst on test: the page must follow validation.
    for s in statuses:
        best = s.id == recon.id
        update_card(s.path, lambda c, b=best: (c["metrics"]["val"].update(auroc=0.99 if b else 0.6),
                                               c["metrics"]["test"].update(auroc=0.1 if b else 0.9)))
    monkeypatch.setenv("CXR_REGISTRY", str(reg))
    at = AppTest.from_file(str(REPO / "pages/3_Anomaly_threshold.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    box = at.selectbox(key="anomaly_entry")
    assert box.value == recon.id and box.options[0].endswith(f" · best on validation · {recon.id}")
    kinds = {"pixel reconstruction": 0, "feature reconstruction": 0, "feature distance": 0}
    for option in box.options:
        for k in kinds:
            kinds[k] += f" · {k} · " in option
    assert kinds == {"pixel reconstruction": 1, "feature reconstruction": 2, "feature distance": 2}, box.options
    assert any(c.value.startswith("**Feature reconstruction**:") for c in at.caption)
    # The example films either side of the threshold: each with its anomaly map.
    captions = [c for n in _walk(at._tree) if getattr(n, "type", "") == "image" for c in n.captions]
    assert sum("anomaly map" in c for c in captions) >= 2, captions
    # Another kind selected: its own one-line description.
    ae = next(s for s in statuses if s.card["kind"] == "autoencoder")
    at.selectbox(key="anomaly_entry").set_value(ae.id).run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("**Pixel reconstruction**:") for c in at.caption)


def test_threshold_page_without_detectors(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CXR_REGISTRY", str(tmp_path / "empty"))
    at = AppTest.from_file(str(REPO / "pages/3_Anomaly_threshold.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No anomaly detector" in w.value for w in at.warning)


def _render_section(image_path: str) -> None:
    from cxr_core.imaging import decode_image
    from pages.ui.predict_anomaly import render

    render(decode_image(image_path), None)


def _shown_detectors(at) -> dict[str, tuple[float, str]]:
    """{detector name: (shown score, delta text)} from the section's metrics."""
    return {m.label: (float(m.value), str(m.delta)) for m in at.metric}


def test_predict_section_scores_an_upload(anomaly_registry, synthetic_data, tmp_path, monkeypatch):
    """Each useful detector's shown score is the detector's own score for the image (``LoadedDetector.score``),
    and "above/below threshold" and the flag caption follow the card's threshold, on both sides of the score."""
    from streamlit.testing.v1 import AppTest

    from cxr_core.anomaly import load_detector
    from cxr_core.imaging import decode_image
    from cxr_core.registry import load_entry, update_card

    reg = _copy(anomaly_registry, tmp_path / "reg")
    # The fixture's briefly trained autoencoder may rank below chance on validation (then the page
    # leaves it out, see the next test): mark it useful so that its images are rendered here.
    detectors = [s for s in list_entries(reg)
                 if s.ok and s.card["kind"] in ("autoencoder", "detector") and s.card.get("task") == "anomaly"]
    for s in detectors:
        update_card(s.path, lambda c: c["metrics"]["val"].update(auroc=max(c["metrics"]["val"]["auroc"], 0.7)))
    monkeypatch.setenv("CXR_REGISTRY", str(reg))
    img = next((synthetic_data / "test" / "PNEUMONIA").glob("*.png"))
    gray = decode_image(str(img)).array
    # The reference: each detector loaded straight from its entry and run on the image here.
    own = {}
    for s in detectors:
        entry = load_entry(reg, s.id)
        own[str(entry.card.get("name", entry.id))] = (entry.id, load_detector(entry).score(gray).score)
    assert len(own) == 5 and any("Autoencoder" in n for n in own)

    def check(expect_flag: bool | None) -> None:
        at = AppTest.from_function(_render_section, args=(str(img),), default_timeout=TIMEOUT).run()
        assert not at.exception, at.exception
        shown = _shown_detectors(at)
        assert set(shown) == set(own), (shown, own)
        captions = [c.value for c in at.caption]
        assert not any("worse than chance" in c for c in captions)
        flags = {}
        for name, (entry_id, score) in own.items():
            value, delta = shown[name]
            # The metric shows the score with 4 significant digits.
            assert value == pytest.approx(score, rel=6e-4, abs=1e-12), f"{name}: shown {value}, its own score {score}"
            threshold = float(load_entry(reg, entry_id).card["threshold"])
            flagged = score >= threshold
            if expect_flag is not None:
                assert flagged == expect_flag
            assert delta == f"{'above' if flagged else 'below'} threshold {threshold:.4g}", (name, delta)
            flags[name] = flagged
        n_flagged = sum(flags.values())
        assert sum(c.startswith("**Flagged as unlike the healthy training images.**") for c in captions) == n_flagged
        assert sum(c.startswith("Within the healthy range.") for c in captions) == len(own) - n_flagged

    check(None)  # the trained thresholds, whichever side each score falls
    for flag in (True, False):  # each threshold moved just below, then just above the image's own score
        for entry_id, score in own.values():
            margin = max(abs(score) * 0.01, 1e-6)
            update_card(load_entry(reg, entry_id), lambda c, t=score - margin if flag else score + margin: c.update(threshold=t))
        check(flag)


def test_predict_section_does_not_score_a_detector_worse_than_chance(anomaly_registry, synthetic_data, tmp_path,
                                                                      monkeypatch):
    """An inverted detector's "within the healthy range" would mislead: it is named, not scored."""
    from streamlit.testing.v1 import AppTest

    from cxr_core.registry import update_card

    reg = _copy(anomaly_registry, tmp_path / "reg")
    ae = next(s for s in list_entries(reg) if s.ok and s.card["kind"] == "autoencoder")
    # The fixture's briefly trained detectors may fall either side of chance: only the autoencoder is inverted here.
    for s in list_entries(reg):
        if s.ok and s.card.get("task") == "anomaly" and s.id != ae.id:
            update_card(s.path, lambda c: c["metrics"]["val"].update(auroc=max(c["metrics"]["val"]["auroc"], 0.7)))
    update_card(ae.path, lambda c: c["metrics"]["val"].update(auroc=0.091))
    monkeypatch.setenv("CXR_REGISTRY", str(reg))
    img = next((synthetic_data / "test" / "PNEUMONIA").glob("*.png"))
    at = AppTest.from_function(_render_section, args=(str(img),), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    names = {m.label for m in at.metric}
    assert len(names) == 4 and not any("Autoencoder" in n for n in names)
    assert any("worse than chance on validation" in c.value and "AUROC 0.091" in c.value for c in at.caption)
    assert verify_entry(ae.path).ok


# --------------------------------------------------------------------------- OOD guard


def _skimage_images() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "camera", "moon", "text", "page", "brick")}


def _gray(img: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return (rgb2gray(img) * 255).round().astype(np.uint8) if img.ndim == 3 else img.astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_cheap_checks_flag_colour_photos_and_odd_shapes():
    from cxr_core.ood import cheap_check

    imgs = _skimage_images()
    for name in ("astronaut", "coffee", "chelsea"):
        res = cheap_check(_gray(imgs[name]), raw=_png(imgs[name]))
        assert not res.looks_like_cxr and "colour" in res.reasons[0], name
    assert cheap_check(np.zeros((100, 600), np.uint8)).looks_like_cxr is False
    assert cheap_check(_gray(imgs["camera"]), raw=_png(imgs["camera"])).looks_like_cxr


@pytest.fixture(scope="module")
def real_guard(cxr_mini):
    """A feature guard fitted on a subset of real cxr-mini training CXRs (normal and pneumonia)."""
    from cxr_core.anomaly import shared_backbone
    from cxr_core.data import load_images, read_dataset
    from cxr_core.ood import OOD_FEATURES, fit_ood_guard
    from cxr_core.preprocess import prepare

    ds = read_dataset(cxr_mini)
    bb = shared_backbone(OOD_FEATURES.architecture)
    spec = bb.spec(OOD_FEATURES.size)
    train, val = ds.split("train")[::10], ds.split("val")[::3]
    feats = [bb.extract(load_images(ds, s, lambda g: prepare(g, spec)), OOD_FEATURES.layers, OOD_FEATURES.pooling)
             for s in (train, val)]
    return fit_ood_guard(feats[0], feats[1]), ds, spec


def test_ood_guard_flags_non_cxr_images_and_accepts_real_cxrs(real_guard):
    from cxr_core.data import load_images
    from cxr_core.preprocess import prepare

    guard, ds, spec = real_guard
    imgs = _skimage_images()
    for name in ("astronaut", "coffee", "chelsea"):
        # Colour and features each flag them; the grey version must be caught by the features alone.
        assert not guard.check(_gray(imgs[name]), raw=_png(imgs[name])).looks_like_cxr, name
        res = guard.check(_gray(imgs[name]))
        assert not res.looks_like_cxr and res.margin > 1, name
    # Real CXRs the guard never saw, in one batch (check() is the same distance per image).
    test = ds.split("test")[::9]
    d = guard.distances(load_images(ds, test, lambda g: prepare(g, spec)))
    accepted = d < guard.threshold
    assert accepted.mean() >= 0.9, f"{(~accepted).sum()} of {len(test)} real CXRs flagged"


def test_predict_page_shows_the_anomaly_section(tiny_registry, anomaly_registry, synthetic_data, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    reg = _copy(tiny_registry, tmp_path / "reg")
    for d in anomaly_registry.iterdir():
        if d.is_dir() and not d.name.startswith((".", "_")):
            shutil.copytree(d, reg / d.name)
    monkeypatch.setenv("CXR_REGISTRY", str(reg))
    at = AppTest.from_file(str(REPO / "pages/1_Predict.py"), default_timeout=TIMEOUT).run()
    img = next((synthetic_data / "test" / "NORMAL").glob("*.png"))
    at.file_uploader(key="upload").set_value((img.name, img.read_bytes(), "image/png")).run()
    assert not at.exception, at.exception
    assert any(s.value == "Out of the ordinary?" for s in at.subheader)
    useful = [s for s in list_entries(reg) if s.ok and s.card["kind"] in ("autoencoder", "detector")
              and s.card.get("task") == "anomaly" and s.card["metrics"]["val"]["auroc"] >= 0.5]
    assert len(useful) >= 2  # both feature detectors at least
    assert sum("threshold" in str(m.delta) for m in at.metric) == len(useful)


def test_figures_are_valid_plotly():
    """The page builds figures without validation for speed; here they are validated."""
    import plotly.graph_objects as go

    from cxr_core.anomaly import histogram_data
    from pages.ui.anomaly_views import histogram_figure, roc_figure

    y, s = _two_gaussians()
    table = ThresholdTable(y, s)
    fpr, tpr = table.roc()
    for fig in (histogram_figure(histogram_data(y, s), 0.5, marker=1.0), roc_figure(fpr, tpr, (0.2, 0.8), 0.85)):
        go.Figure(fig.to_dict())  # raises on any invalid property


def test_models_page_shows_every_detector_card(anomaly_registry, monkeypatch):
    """Detector cards hold suggestion dicts under ``thresholds``, not classifier cuts: the page must read both."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CXR_REGISTRY", str(anomaly_registry))
    at = AppTest.from_file(str(REPO / "pages/5_Models_and_data.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    options = at.selectbox(key="entry").options
    assert len(options) == 6
    for option in options:
        at.selectbox(key="entry").select(option).run()
        assert not at.exception, (option, at.exception)
        facts = at.table[0].value
        text = str(facts.loc["thresholds chosen on validation"].iloc[0])
        if "· anomaly ·" in option:
            assert "normal_q95" in text, text
