"""Dataset reader: file-name parsing, counts, patient-level splits, path safety."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from cxr_core.data import (
    DatasetError,
    check_patient_leakage,
    parse_name,
    patient_split,
    read_dataset,
    safe_join,
    with_validation_split,
)


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [
        ("person1000_bacteria_2931.jpeg", "PNEUMONIA", ("bacteria", "person1000")),
        ("person1000_virus_1681.jpeg", "PNEUMONIA", ("virus", "person1000")),
        ("IM-0115-0001.jpeg", "NORMAL", ("normal", "IM-0115")),
        ("NORMAL2-IM-0115-0001.jpeg", "NORMAL", ("normal", "IM-0115")),
    ],
)
def test_parse_name(name, label, expected):
    assert parse_name(name, label) == expected


def test_parse_name_refuses_pneumonia_without_subtype():
    with pytest.raises(DatasetError, match="subtype"):
        parse_name("scan_17.jpeg", "PNEUMONIA")


def test_cxr_mini_matches_manifest(cxr_mini: Path):
    ds = read_dataset(cxr_mini)
    with open(cxr_mini / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(ds.samples) == len(rows) == 1337
    by_path = {r["path"]: r for r in rows}
    for s in ds.samples:
        row = by_path[s.path]
        assert (s.split, s.label, s.subtype, s.patient_id) == (row["split"], row["label"], row["subtype"], row["patient_id"])
    counts = Counter((s.split, s.subtype) for s in ds.samples)
    assert counts[("train", "normal")] == 252 and counts[("test", "virus")] == 71
    assert check_patient_leakage(ds.samples) == {}
    # cxr-mini has a real validation split: it is kept, not redrawn.
    assert with_validation_split(ds).samples == ds.samples


def test_kermany_gets_a_patient_level_validation_split(kermany224: Path):
    ds = with_validation_split(read_dataset(kermany224), fraction=0.1, seed=0)
    val = ds.split("val")
    assert 0.07 < len(val) / (len(val) + len(ds.split("train"))) < 0.13
    assert len(ds.split("test")) == 624
    assert check_patient_leakage(ds.samples, ("train", "val")) == {}
    assert {s.subtype for s in val} == {"normal", "bacteria", "virus"}
    # Deterministic: the same seed gives the same split, another seed a different one.
    assert with_validation_split(read_dataset(kermany224), 0.1, 0).split("val") == val
    assert with_validation_split(read_dataset(kermany224), 0.1, 1).split("val") != val


def test_synthetic_set_reads(synthetic_data: Path):
    ds = read_dataset(synthetic_data)
    counts = ds.counts()
    assert counts["train"] == {"normal": 16, "bacteria": 16, "virus": 16}
    assert check_patient_leakage(ds.samples) == {}
    assert len(ds.fingerprint()) == 64


def test_patient_split_keeps_patients_together(synthetic_data: Path):
    ds = read_dataset(synthetic_data)
    moved = patient_split(ds.split("train"), 0.5, seed=3)
    by_patient: dict[str, set[str]] = {}
    for s in moved:
        by_patient.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in by_patient.values())
    assert {"train", "val"} == {s.split for s in moved}


def test_safe_join_refuses_escape(tmp_path: Path):
    (tmp_path / "a").mkdir()
    assert safe_join(tmp_path, "a") == (tmp_path / "a").resolve()
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(DatasetError):
            safe_join(tmp_path, bad)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no images"):
        read_dataset(tmp_path)
