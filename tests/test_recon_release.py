"""``python -m train.release --add-detectors``: the feature reconstruction detector joins a built release
without touching any other entry, and the manifest keeps the command that rebuilds the whole release."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cxr_core.registry import list_entries, read_release_manifest, sha256_file, write_entry
from tests.conftest import REPO
from train.release import ReleaseConfig, add_detectors, is_release_recon, write_manifest, write_source_md

RECON = dict(size=64, epochs=1, hidden=16, bottleneck=8, batch_size=8)
BUILD = "python -m train.release --data DATA --out rel --threads 2"


def _fake_release(cfg: ReleaseConfig) -> None:
    """A built release of one classifier-like entry (what SOURCE.md reads of a classifier card)."""
    card = {"kind": "classifier", "task": "binary", "classes": ["NORMAL", "PNEUMONIA"], "architecture": "x",
            "input": {"size": 64}, "metrics": {"test": {"accuracy": 0.9, "auroc": 0.95}},
            "release_check": {"weights_dtype": "float16", "thumbnails": {"n": 3, "pixels": [64, 64], "quality": 80}}}
    write_entry(cfg.out, card, arrays={"index.npz": {"a": np.arange(3.0)}})
    manifest = write_manifest(cfg, BUILD, {"train classifiers": 10.0})
    write_source_md(cfg, manifest, {".json": 1})


def test_add_detectors_leaves_every_entry_and_keeps_the_build_command(tmp_path, synthetic_data):
    cfg = ReleaseConfig(data=str(synthetic_data), out=str(tmp_path / "rel"), work=str(tmp_path / "work"),
                        recon=dict(RECON), command=BUILD)
    _fake_release(cfg)
    before = {p.relative_to(cfg.out): sha256_file(p) for p in (tmp_path / "rel").rglob("*") if p.is_file()}
    created = read_release_manifest(cfg.out)["created_at"]
    add = replace(cfg, command=BUILD + " --add-detectors")
    manifest = add_detectors(add, log=lambda s: None)
    assert manifest["command"] == BUILD and manifest["created_at"] == created
    [update] = manifest["updates"]
    assert update["command"] == BUILD + " --add-detectors" and len(update["added"]) == 1
    assert manifest["config"]["recon"] == RECON and "feature reconstruction detector" in manifest["seconds"]
    statuses = {s.id: s for s in list_entries(cfg.out)}
    assert all(s.ok for s in statuses.values()), [(s.id, s.reason) for s in statuses.values() if not s.ok]
    added = statuses[update["added"][0]]
    assert is_release_recon(added.info, cfg) and added.card["release"]["command"] == BUILD
    assert added.card["dataset"]["root"] == cfg.data and added.card["metrics"]["test"]["auroc"] is not None
    after = {p.relative_to(cfg.out): sha256_file(p) for p in (tmp_path / "rel").rglob("*") if p.is_file()}
    changed = {str(p) for p in before if after.get(p) != before[p]}
    assert changed == {"release.json", "SOURCE.md"}, changed
    source = (tmp_path / "rel" / "SOURCE.md").read_text()
    assert f"`{added.id}`" in source and "--add-detectors" in source and BUILD in source
    # Run again: the release already holds it, nothing changes (the work registry's entry is not fitted twice).
    again = add_detectors(add, log=lambda s: None)
    assert again["cards"] == manifest["cards"]
    assert json.loads((tmp_path / "rel" / "release.json").read_text())["updates"] == manifest["updates"]
    # Another recipe replaces the detector; the classifier still stays byte for byte.
    other = replace(add, recon={**RECON, "layers": ("3",)})
    third = add_detectors(other, log=lambda s: None)
    assert third["updates"][-1]["replaced"] == [added.id] and added.id not in third["cards"]
    [new] = [s for s in list_entries(cfg.out) if is_release_recon(s.info, other)]
    assert all(s.ok for s in list_entries(cfg.out)) and len(third["cards"]) == 2
    now = {p.relative_to(cfg.out): sha256_file(p) for p in (tmp_path / "rel").rglob("*") if p.is_file()}
    assert {p: now[p] for p in before if p.parts[0] not in ("release.json", "SOURCE.md")} == {
        p: h for p, h in before.items() if p.parts[0] not in ("release.json", "SOURCE.md")}
    assert f"(replacing `{added.id}`)" in (tmp_path / "rel" / "SOURCE.md").read_text()


# --- the committed release's feature reconstruction detector on the pages -------------------------------

def _release_recon():
    from cxr_core.registry import release_dir

    root = release_dir() / "kermany-224"
    found = [s for s in list_entries(root) if is_release_recon(s.info, ReleaseConfig(data="", out=str(root)))]
    assert len(found) == 1, "the committed release holds no feature reconstruction detector of train.release's recipe"
    return root, found[0]


def test_committed_release_holds_the_reconstruction_detector_at_the_classifiers_spec():
    from cxr_core.config import InputSpec
    from cxr_core.registry import select

    root, recon = _release_recon()
    clf = select(list_entries(root), "classifier", "binary")
    assert InputSpec.from_dict(recon.card["input"]) == clf.info.input  # the hand-off's precondition
    assert recon.info.val_auroc is not None and recon.info.val_auroc > 0.9
    assert sum(p.stat().st_size for p in recon.path.iterdir()) < 1.5e6


def test_release_predict_page_takes_the_maps_from_the_classification_pass(kermany224, monkeypatch, tmp_path):
    """A real film on the Predict page as ``make run`` serves it: the reconstruction detector's shown score is its
    own score for the film, computed from the feature maps the classifiers' pass handed over."""
    from streamlit.testing.v1 import AppTest

    from cxr_core import feature_recon
    from cxr_core.anomaly import load_detector
    from cxr_core.imaging import decode_image

    _, recon = _release_recon()
    monkeypatch.delenv("CXR_REGISTRY", raising=False)
    monkeypatch.setenv("CXR_SETTINGS", str(tmp_path / "settings.json"))
    img = sorted((kermany224 / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    own = load_detector(recon.entry()).score(decode_image(img.read_bytes()).array).score  # its own backbone pass
    taken = feature_recon.STAGE_HANDOFF.taken
    at = AppTest.from_file(str(REPO / "pages/1_Predict.py"), default_timeout=180).run()
    at.file_uploader(key="upload").set_value((img.name, img.read_bytes(), "image/jpeg")).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    shown = {m.label: float(m.value) for m in at.metric if "threshold" in str(m.delta)}
    assert recon.card["name"] in shown and "Pretrained features, Mahalanobis" in shown, shown
    assert shown[recon.card["name"]] == pytest.approx(own, rel=6e-4)
    assert feature_recon.STAGE_HANDOFF.taken > taken, "the page ran the detector's own backbone pass"


def test_release_threshold_page_offers_the_reconstruction_detector(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    _, recon = _release_recon()
    monkeypatch.delenv("CXR_REGISTRY", raising=False)
    monkeypatch.setenv("CXR_SETTINGS", str(tmp_path / "settings.json"))
    at = AppTest.from_file(str(REPO / "pages/3_Anomaly_threshold.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    box = at.selectbox[0]
    assert any(o.endswith(recon.id) for o in box.options), box.options
    assert "Mahalanobis" in box.options[0]  # still the best on validation
    box.set_value(recon.id).run()
    assert not at.exception, at.exception
    assert any(str(c.value).startswith("**Feature reconstruction**") for c in at.caption)
