"""Dataset layouts beyond Kermany (issue 16): class folders, manifest.csv, N-class tasks."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_core.cards import read_card
from cxr_core.config import normal_class, ordered_tasks, task_title
from cxr_core.data import DatasetError, patient_of, read_dataset, with_validation_split
from cxr_core.models import logits_to_probs, num_outputs_for

KERMANY = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany-224"


def _png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def _folders(root: Path, classes: dict[str, int], splits: tuple[str, ...] = ("",)) -> None:
    for split in splits:
        for cls, n in classes.items():
            for i in range(n):
                _png(root / split / cls / f"{cls}-{split or 'x'}-{i}.png", (40 + 10 * i) % 256)


def test_class_folders_without_splits_get_a_patient_level_test_and_val_split(tmp_path: Path) -> None:
    _folders(tmp_path / "covid-set", {"COVID": 30, "Normal": 30, "Lung_Opacity": 30, "Viral Pneumonia": 30})
    ds = with_validation_split(read_dataset(tmp_path / "covid-set"), 0.1, 0)
    assert ds.layout == "folders" and ds.task == "covid-set"
    assert ds.tasks == {"covid-set": ("Normal", "COVID", "Lung_Opacity", "Viral Pneumonia")}  # healthy class first
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 88, "val": 8, "test": 24}  # per class: 20 % of 30 to test, then 10 % of 24 to val
    for split in ("train", "val", "test"):
        assert {s.subtype for s in ds.split(split)} == set(ds.tasks["covid-set"])  # stratified by class
    assert [s.target("covid-set") for s in ds.samples[:1]] == [ds.tasks["covid-set"].index(ds.samples[0].subtype)]
    again = with_validation_split(read_dataset(tmp_path / "covid-set"), 0.1, 0)
    assert again.samples == ds.samples  # deterministic


def test_split_folders_are_kept_and_mask_folders_skipped(tmp_path: Path) -> None:
    _folders(tmp_path, {"a": 12, "b": 12}, ("train", "test"))
    _png(tmp_path / "train" / "a" / "masks" / "a-mask.png")
    ds = read_dataset(tmp_path, task="mine")
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 24, "val": 0, "test": 24}
    assert not any("mask" in s.path for s in ds.samples) and ds.task == "mine"


def test_files_that_are_not_images_are_listed_and_skipped(tmp_path: Path) -> None:
    _folders(tmp_path, {"a": 10, "b": 10})
    (tmp_path / "a" / "notes.png").write_text("not an image")
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    good = (tmp_path / "a" / "a-x-0.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    jpeg = io.BytesIO()
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(jpeg, "JPEG")
    (tmp_path / "b" / "cut.jpg").write_bytes(jpeg.getvalue()[:-40])
    ds = read_dataset(tmp_path)
    assert len(ds.samples) == 20
    skipped = dict(ds.skipped)
    assert skipped.pop("a/notes.png") == "not an image (unknown format)" and skipped.pop("b/empty.jpg") == "empty file"
    assert skipped.pop("a/cut.png").startswith("damaged PNG") and skipped.pop("b/cut.jpg").startswith("truncated JPEG")
    assert not skipped


def test_a_class_too_small_for_a_split_is_named(tmp_path: Path) -> None:
    _folders(tmp_path, {"big": 40, "tiny": 2})
    with pytest.raises(DatasetError, match="'tiny' has 0 images in val"):
        with_validation_split(read_dataset(tmp_path), 0.1, 0)


def test_one_class_is_not_a_labelled_dataset(tmp_path: Path) -> None:
    _folders(tmp_path, {"only": 5})
    with pytest.raises(DatasetError, match="at least two classes"):
        read_dataset(tmp_path)


def test_manifest_layout_with_patients_and_splits(tmp_path: Path) -> None:
    rows = []
    for i in range(40):
        cls = ("normal", "covid")[i % 2]
        _png(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": cls, "patient_id": f"p{i // 4}", "split": "test" if i >= 32 else ""})
    rows.append({"path": "img/missing.png", "label": "covid", "patient_id": "", "split": ""})
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "split"])
        w.writeheader()
        w.writerows(rows)
    ds = with_validation_split(read_dataset(tmp_path, task="covid"), 0.25, 0)
    assert ds.layout == "manifest" and ds.tasks == {"covid": ("normal", "covid")}
    assert len(ds.split("test")) == 8 and [p for p, _ in ds.skipped] == ["img/missing.png"]
    patients = {sp: {s.patient_id for s in ds.split(sp)} for sp in ("train", "val")}
    assert patients["train"].isdisjoint(patients["val"])  # split by patient, not by image


def test_manifest_without_label_column_says_what_it_needs(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DatasetError, match="needs the columns path,label"):
        read_dataset(tmp_path)


def test_patient_ids_from_kermany_style_names() -> None:
    assert patient_of("person12_virus_3.jpeg") == "person12"
    assert patient_of("NORMAL2-IM-0123-0001.jpeg") == "IM-0123"
    assert patient_of("COVID-17.png") == "COVID-17"


def test_n_class_heads_and_titles() -> None:
    assert num_outputs_for("covid", 4) == 4 and num_outputs_for("binary") == 1
    with pytest.raises(ValueError, match="number of classes"):
        num_outputs_for("covid")
    assert logits_to_probs(torch.zeros(2, 4), "covid").shape == (2, 4)
    with pytest.raises(ValueError):
        logits_to_probs(torch.zeros(2, 4), "covid", 3)
    assert task_title("covid", ["COVID", "Normal"]) == "COVID / Normal"
    assert task_title("binary") == "Normal vs pneumonia"
    assert ordered_tasks(["covid", "multiclass", "binary"]) == ["binary", "multiclass", "covid"]
    assert normal_class(["COVID", "Normal"]) == "Normal" and normal_class(["a", "b"]) is None
    with pytest.raises(ValueError, match="not one of the classes"):
        normal_class(["a", "b"], "healthy")
    assert read_card({"kind": "classifier", "task": "multiclass"}).normal_class == "normal"


@pytest.mark.skipif(not KERMANY.is_dir(), reason="../shared/data/kermany-224 is not present")
def test_kermany_read_as_class_folders_gives_the_same_splits(tmp_path: Path) -> None:
    kermany = with_validation_split(read_dataset(KERMANY), 0.1, 0)
    for s in kermany.samples:  # copies, not links: dataset paths must stay inside the dataset root
        dest = tmp_path / s.source_split / s.subtype / Path(s.path).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(kermany.abspath(s).read_bytes())
    folders = with_validation_split(read_dataset(tmp_path), 0.1, 0)
    for split in ("train", "val", "test"):
        assert sorted(Path(s.path).name for s in folders.split(split)) == sorted(Path(s.path).name for s in kermany.split(split))
    assert folders.tasks[folders.task] == kermany.tasks["multiclass"]  # normal, bacteria, virus: the same head
