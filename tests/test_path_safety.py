"""Paths from cards, indexes and datasets cannot make the app read outside their roots.

* a card that lists ``../x`` as one of its files marks its entry broken; the app serves the others;
* an ``index.npz`` whose ``paths`` hold ``../../etc/passwd`` (or an absolute path) never opens it:
  the explorer falls back to the stored thumbnail;
* a dataset root in a card that points elsewhere confines reads to image files of the Kaggle
  layout under that root, and a symlink there that leads out of it is refused;
* every page reads dataset files through ``data.safe_join`` (checked on the source).

A :class:`tests.upload_corpus.FileAccessRecorder` proves that the files outside were never opened.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.data import DatasetError, load_images, read_dataset, safe_join
from cxr_core.registry import list_entries, update_card
from tests.conftest import REPO
from tests.upload_corpus import FileAccessRecorder, phantom, pil_bytes

TIMEOUT = 180


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the roots with a valid image and a text secret in it."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.png").write_bytes(pil_bytes(phantom(64, seed=9), "PNG"))
    (d / "passwd").write_text("root:x:0:0:secret\n")
    return d


def kaggle_root(root: Path, images: int = 2) -> Path:
    for split in ("train", "test"):
        for label, stem in (("NORMAL", "IM-{:04d}-0001"), ("PNEUMONIA", "person{}_bacteria_1")):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(images):
                (folder / f"{stem.format(i + 1)}.png").write_bytes(pil_bytes(phantom(64, seed=i), "PNG"))
    return root


# ----------------------------------------------------------------------------- datasets


def test_symlink_leading_out_of_a_dataset_is_refused(tmp_path: Path, outside: Path, monkeypatch):
    root = kaggle_root(tmp_path / "data")
    (root / "test" / "NORMAL" / "IM-0999-0001.png").symlink_to(outside / "secret.png")
    ds = read_dataset(root)
    sneaky = next(s for s in ds.samples if s.path.endswith("IM-0999-0001.png"))
    files = FileAccessRecorder().install(monkeypatch)
    with pytest.raises(DatasetError, match="escapes"):
        ds.abspath(sneaky)
    with pytest.raises(DatasetError, match="escapes"):
        load_images(ds, ds.split("test"), lambda g: g[:32, :32], workers=1)
    monkeypatch.undo()
    assert files.touched(outside) == []
    for bad in ("../outside/secret.png", "train/../../outside/secret.png", str(outside / "secret.png"),
                "train/NORMAL/\0.png", "..", "train/NORMAL/../../../outside/passwd"):
        with pytest.raises(DatasetError):
            safe_join(root, bad)


def test_card_dataset_root_elsewhere_reads_only_images_under_it(tiny_registry: Path, tmp_path: Path,
                                                                 outside: Path, monkeypatch):
    """The Explain page follows the card's dataset root: a root that is not a dataset, or whose
    images link out of it, gives a clear message and opens nothing outside."""
    registry = tmp_path / "registry"
    shutil.copytree(tiny_registry, registry)
    classifiers = [s for s in list_entries(registry) if s.ok and s.card["kind"] == "classifier"]
    not_a_dataset = tmp_path / "etc-like"
    not_a_dataset.mkdir()
    (not_a_dataset / "passwd").write_text("root:x:0:0:secret\n")
    linked = kaggle_root(tmp_path / "linked")
    for f in (linked / "test" / "NORMAL").iterdir():
        f.unlink()
        f.symlink_to(outside / "secret.png")
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    for root, message in ((not_a_dataset, "no images found"), (linked, "escapes")):
        for s in classifiers:
            update_card(s.path, lambda card, root=root: card["dataset"].update(root=str(root)))
        with pytest.MonkeyPatch.context() as mp:
            files = FileAccessRecorder().install(mp)
            at = AppTest.from_file(str(REPO / "pages/4_Explain.py"), default_timeout=TIMEOUT).run()
        assert not at.exception, at.exception
        warnings_ = " ".join(str(w.value) for w in at.warning)
        assert "not available" in warnings_ and message in warnings_, warnings_
        assert files.touched(outside) == [] and files.touched(not_a_dataset / "passwd") == []


# ----------------------------------------------------------------------------- embedding index


def test_index_paths_cannot_escape_the_data_root(tmp_path: Path, outside: Path, monkeypatch):
    from cxr_core.neighbors import KnnIndex
    from cxr_core.reference import ReferenceSet

    root = kaggle_root(tmp_path / "data", images=1)
    paths = np.array(["../../etc/passwd", "/etc/passwd", "../outside/secret.png",
                      str(outside / "secret.png"), "train/NORMAL/IM-0001-0001.png"])
    n = len(paths)
    thumbs = np.stack([np.full((32, 32), 10 * (i + 1), np.uint8) for i in range(n)])
    emb = np.eye(n, 4, dtype=np.float32) + 0.01
    ref = ReferenceSet(
        entry_id="x", task="binary", classes=["NORMAL", "PNEUMONIA"], paths=paths,
        labels=np.array(["NORMAL"] * n), subtypes=np.array(["normal"] * n), splits=np.array(["train"] * n),
        patients=np.array([f"p{i}" for i in range(n)]), targets=np.zeros(n, np.int64),
        probs=np.zeros((n, 2), np.float32), predicted=np.zeros(n, np.int64), knn_predicted=np.zeros(n, np.int64),
        knn=KnnIndex(emb / np.linalg.norm(emb, axis=1, keepdims=True), np.zeros(n), 2, 1),
        thumbs=thumbs, maps={}, data_root=str(root), info={},
    )
    files = FileAccessRecorder().install(monkeypatch)
    images = [ref.image(i) for i in range(n)]
    monkeypatch.undo()
    for i in range(n - 1):
        np.testing.assert_array_equal(images[i], thumbs[i])  # refused: the thumbnail, not the file
    assert images[-1].shape == (64, 64)  # the one legitimate path is read from the dataset
    assert files.touched(outside) == [] and not any(p.startswith("/etc") for p in files.reads)


# ----------------------------------------------------------------------------- registry cards


def _predict_with_binary_only(registry: Path, monkeypatch) -> FileAccessRecorder:
    """Upload a phantom on Predict with the multiclass entry broken: the binary model still serves.
    Returns the record of every file the page opened."""
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    with pytest.MonkeyPatch.context() as mp:
        files = FileAccessRecorder().install(mp)
        at = AppTest.from_file(str(REPO / "pages/1_Predict.py"), default_timeout=TIMEOUT).run()
        at.file_uploader(key="upload").set_value(("chest.png", pil_bytes(phantom(128), "PNG"), "image/png"))
        at.run()
    assert not at.exception, at.exception
    assert [m.label for m in at.metric] == ["Prediction"]
    return files


def test_card_listing_a_path_outside_its_entry_breaks_only_that_entry(tiny_registry: Path, tmp_path: Path,
                                                                       outside: Path, monkeypatch):
    registry = tmp_path / "registry"
    shutil.copytree(tiny_registry, registry)
    shutil.copy(outside / "passwd", registry / "x")
    victim = next(s for s in list_entries(registry) if s.card["task"] == "multiclass")
    card = json.loads((victim.path / "card.json").read_text())
    card["files"]["../x"] = {"sha256": "0" * 64, "bytes": 19}
    (victim.path / "card.json").write_text(json.dumps(card))
    by_id = {s.id: s for s in list_entries(registry)}
    assert not by_id[victim.id].ok and "invalid file name" in by_id[victim.id].reason
    assert sum(s.ok for s in by_id.values()) == len(by_id) - 1

    files = _predict_with_binary_only(registry, monkeypatch)
    assert files.touched(registry / "x") == []


def test_registry_links_break_only_their_entry_and_are_never_followed(tiny_registry: Path, tmp_path: Path,
                                                                       outside: Path, monkeypatch):
    """A file swapped for a link to a file outside (card re-hashed to match, so only the link check
    can catch it), a linked card and a linked entry folder: each marks its entry broken."""
    from cxr_core.registry import sha256_file

    registry = tmp_path / "registry"
    shutil.copytree(tiny_registry, registry)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_registry, elsewhere)
    statuses = list_entries(registry)
    victim = next(s for s in statuses if s.card["task"] == "multiclass")
    name = next(n for n in victim.card["files"] if n.endswith(".safetensors"))
    target = outside / name
    shutil.copy(victim.path / name, target)
    (victim.path / name).unlink()
    (victim.path / name).symlink_to(target)
    card = json.loads((victim.path / "card.json").read_text())
    card["files"][name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
    (victim.path / "card.json").write_text(json.dumps(card))
    linked_dir = registry / (victim.id + "-linked")
    other = next(s for s in statuses if s.card["task"] == "binary")
    linked_dir.symlink_to(elsewhere / other.id, target_is_directory=True)

    by_id = {s.id: s for s in list_entries(registry)}
    assert not by_id[victim.id].ok and "symbolic link" in by_id[victim.id].reason
    assert not by_id[linked_dir.name].ok and "symbolic link" in by_id[linked_dir.name].reason
    assert by_id[other.id].ok

    (victim.path / name).unlink()
    shutil.copy(target, victim.path / name)
    (victim.path / "card.json").rename(outside / "card.json")
    (victim.path / "card.json").symlink_to(outside / "card.json")
    assert "card.json is a symbolic link" in {s.id: s for s in list_entries(registry)}[victim.id].reason

    files = _predict_with_binary_only(registry, monkeypatch)
    assert files.touched(outside) == [] and files.touched(elsewhere) == []


# ----------------------------------------------------------------------------- pages, statically

READERS = {"read_gray", "decode_image", "open", "Image.open", "np.load", "imread", "dcmread", "read_bytes", "read_text"}


def _callee(node: ast.Call) -> str:
    return ast.unparse(node.func).removeprefix("self.")


def _own_asset(node: ast.Call, tree: ast.Module) -> bool:
    """``(_HERE / "name.js").read_text()`` with ``_HERE = Path(__file__).parent``: a file shipped beside
    the module (a component's JavaScript), named by a constant, never by anything a user controls."""
    target = node.func.value if isinstance(node.func, ast.Attribute) else None
    if not (isinstance(target, ast.BinOp) and isinstance(target.op, ast.Div)
            and isinstance(target.left, ast.Name) and isinstance(target.right, ast.Constant)
            and isinstance(target.right.value, str) and "/" not in target.right.value
            and ".." not in target.right.value):
        return False
    return any(isinstance(a, ast.Assign) and any(isinstance(t, ast.Name) and t.id == target.left.id for t in a.targets)
               and ast.unparse(a.value) == "Path(__file__).parent" for a in tree.body)


def _in_memory(arg: str, tree: ast.Module) -> bool:
    """An upload's bytes: ``x.getvalue()``, a name the module assigns from one, or a worklist
    ``StudyFile``'s ``.data`` (bytes read in memory from the uploads by ``cxr_core.worklist``)."""
    if ".getvalue()" in arg or arg.endswith(".data"):
        return True
    return any(isinstance(a, ast.Assign) and ".getvalue()" in ast.unparse(a.value)
               and any(isinstance(t, ast.Name) and t.id == arg for t in a.targets) for a in ast.walk(tree))


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("pages/*.py"),
                                                                          *REPO.glob("pages/ui/*.py")]))
def test_pages_read_dataset_files_only_through_safe_join(path: str):
    """Pages never read a file by a path they put together: dataset images go through safe_join,
    uploads are decoded from memory, registry files through cxr_core.registry."""
    tree = ast.parse((REPO / path).read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _callee(node)
        short = name.rsplit(".", 1)[-1]
        if name not in READERS and short not in READERS:
            continue
        if short in ("read_bytes", "read_text", "open") and "." in name:
            if _own_asset(node, tree):
                continue
            pytest.fail(f"{path}:{node.lineno}: {name}(...) reads a file directly")
        arg = ast.unparse(node.args[0]) if node.args else ""
        ok = arg.startswith("safe_join(") or (short == "decode_image" and _in_memory(arg, tree))
        assert ok, f"{path}:{node.lineno}: {name}({arg}) does not go through safe_join"
