"""Registry: round trip, verification, tampering, atomic and concurrent card updates, no pickle."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_core.registry import (
    RegistryError,
    add_files,
    list_entries,
    load_entry,
    select,
    update_card,
    write_entry,
)


def _entry(root: Path, **extra):
    card = {"kind": "classifier", "task": "binary", "classes": ["NORMAL", "PNEUMONIA"], "architecture": "small_cnn", **extra}
    weights = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
    arrays = {"index.npz": {"ids": np.array(["a", "b"]), "emb": np.eye(2, dtype=np.float32)}}
    return write_entry(root, card, weights=weights, arrays=arrays)


def test_round_trip(tmp_path: Path):
    e = _entry(tmp_path)
    loaded = load_entry(tmp_path, e.id)
    assert loaded.card["schema_version"] == 1 and loaded.card["id"] == e.id
    assert set(loaded.card["files"]) == {"weights.safetensors", "index.npz"}
    w = loaded.load_weights()
    assert torch.equal(w["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    idx = loaded.load_npz("index.npz")
    assert idx["ids"].tolist() == ["a", "b"]
    statuses = list_entries(tmp_path)
    assert [s.ok for s in statuses] == [True]
    assert select(statuses, "classifier", "binary").id == e.id
    assert select(statuses, "classifier", "multiclass") is None


def test_tampered_weights_are_detected(tmp_path: Path):
    e = _entry(tmp_path)
    p = e.path / "weights.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    (status,) = list_entries(tmp_path)
    assert not status.ok and "sha256" in status.reason
    with pytest.raises(RegistryError, match="sha256"):
        load_entry(tmp_path, e.id)


def test_truncated_missing_and_bad_card(tmp_path: Path):
    a, b, c = _entry(tmp_path), _entry(tmp_path), _entry(tmp_path)
    (a.path / "index.npz").write_bytes(b"PK")
    (b.path / "weights.safetensors").unlink()
    (c.path / "card.json").write_text("{not json")
    good = _entry(tmp_path)
    reasons = {s.id: s.reason for s in list_entries(tmp_path)}
    assert "truncated" in reasons[a.id]
    assert "missing" in reasons[b.id]
    assert "JSON" in reasons[c.id]
    assert reasons[good.id] is None


def test_card_cannot_point_outside_the_entry(tmp_path: Path):
    e = _entry(tmp_path)
    card = json.loads((e.path / "card.json").read_text())
    card["files"]["../../etc/passwd"] = {"sha256": "0", "bytes": 1}
    (e.path / "card.json").write_text(json.dumps(card))
    (status,) = list_entries(tmp_path)
    assert not status.ok and "invalid file name" in status.reason


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file exists iff something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _rehash(entry_path: Path, card: dict, name: str) -> None:
    from cxr_core.registry import sha256_file

    f = entry_path / name
    card["files"][name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    (entry_path / "card.json").write_text(json.dumps(card))


def test_pickle_bearing_files_are_refused(tmp_path: Path):
    from safetensors import SafetensorError

    marker = tmp_path / "unpickled.marker"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    # The payload works: plain unpickling writes the marker (so its absence below means "never unpickled").
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.unlink()

    with pytest.raises(RegistryError, match="pickle"):
        write_entry(tmp_path / "w", {"kind": "detector"}, arrays={"x.npz": {"o": evil}})
    assert not marker.exists()

    e = _entry(tmp_path / "reg")
    card = json.loads((e.path / "card.json").read_text())
    # index.npz replaced by one holding the object array, hash fixed up: loading must still refuse it.
    np.savez(e.path / "index.npz", o=evil)
    _rehash(e.path, card, "index.npz")
    with pytest.raises(ValueError, match="allow_pickle"):
        load_entry(tmp_path / "reg", e.id).load_npz("index.npz")
    assert not marker.exists(), "index.npz was unpickled"

    # A pickled "weights" file is not safetensors: safetensors' own error, nothing unpickled.
    (e.path / "weights.safetensors").write_bytes(pickle.dumps({"w": _Payload(marker)}))
    _rehash(e.path, card, "weights.safetensors")
    with pytest.raises(Exception) as info:
        load_entry(tmp_path / "reg", e.id).load_weights()
    assert not marker.exists(), "weights.safetensors was unpickled"
    assert isinstance(info.value, SafetensorError), f"not safetensors' error: {info.value!r}"


def test_concurrent_threshold_updates_leave_a_valid_card(tmp_path: Path):
    e = _entry(tmp_path)
    errors = []

    def worker(i: int) -> None:
        try:
            for j in range(20):
                update_card(e.path, {"threshold": i + j / 100, f"writer_{i}": j})
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    card = json.loads((e.path / "card.json").read_text())
    assert all(card[f"writer_{i}"] == 19 for i in range(8))  # no lost update
    assert list_entries(tmp_path)[0].ok
    assert not [p for p in e.path.iterdir() if p.name.endswith(".tmp")]


def test_update_card_cannot_touch_files_or_id(tmp_path: Path):
    e = _entry(tmp_path)
    with pytest.raises(RegistryError):
        update_card(e, lambda c: c["files"].pop("index.npz"))
    with pytest.raises(RegistryError):
        update_card(e, {"id": "other"})


def test_add_files_records_hashes(tmp_path: Path):
    e = _entry(tmp_path)
    add_files(e, {"thumbs.npy": np.zeros((2, 8, 8), np.uint8), "projection.npz": {"tsne_2d": np.zeros((2, 2))}})
    loaded = load_entry(tmp_path, e.id)
    assert loaded.load_npy("thumbs.npy").shape == (2, 8, 8)
    assert "projection.npz" in loaded.card["files"]


def test_failed_write_leaves_nothing(tmp_path: Path):
    with pytest.raises(RegistryError):
        write_entry(tmp_path, {"kind": "classifier"}, arrays={"bad.npz": {"o": np.array([object()])}})
    assert list(tmp_path.iterdir()) == []
