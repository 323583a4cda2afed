"""``python -m train.release --add-detectors``: the feature reconstruction detector joins a built release
without touching any other entry, and the manifest keeps the command that rebuilds the whole release."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from cxr_core.registry import list_entries, read_release_manifest, sha256_file, write_entry
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
