"""Tests for the synthetic phantom generator and the demo data set it writes."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_core.config import SPLITS
from cxr_core.synthetic import (
    SUBTYPES,
    Phantom,
    SyntheticSpec,
    _patient_seed,
    load_mask,
    make_phantom,
    write_dataset,
)

# Written out here, independently of the generator, as the real data set names its files.
PNEUMONIA_NAME = re.compile(r"^person(?P<pid>\d+)_(?P<subtype>bacteria|virus)_(?P<k>\d+)\.(png|jpe?g)$")
NORMAL_NAME = re.compile(r"^(NORMAL2-)?(?P<key>IM-\d{4})-\d{4}\.(png|jpe?g)$")

SMALL = SyntheticSpec(n_per_class={"train": 6, "val": 2, "test": 3}, size=64, seed=0)
MANIFEST_COLUMNS = ["path", "split", "label", "subtype", "patient_id", "width", "height"]


def parse_name(name: str) -> tuple[str, str]:
    """(subtype, patient key) from a file name, the way a Kaggle-layout reader must."""
    if m := PNEUMONIA_NAME.match(name):
        return m["subtype"], f"person{m['pid']}"
    if m := NORMAL_NAME.match(name):
        return "normal", m["key"]
    raise AssertionError(f"file name does not parse: {name}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic") / "demo", SMALL)


@pytest.fixture(scope="module")
def manifest(dataset: Path) -> list[dict[str, str]]:
    with (dataset / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_phantom_types_and_shapes(subtype: str) -> None:
    ph = make_phantom(subtype, seed=3, size=96)
    assert isinstance(ph, Phantom)
    assert ph.subtype == subtype
    assert ph.image.shape == (96, 96) and ph.image.dtype == np.uint8
    assert ph.lesion_mask.shape == (96, 96) and ph.lesion_mask.dtype == bool
    assert ph.lung_mask is not None and ph.lung_mask.dtype == bool
    # A real radiograph uses most of the grey range; a flat or saturated image would not.
    assert np.percentile(ph.image, 99) - np.percentile(ph.image, 1) > 100


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_same_seed_same_bytes(subtype: str) -> None:
    a, b = make_phantom(subtype, 11), make_phantom(subtype, 11)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.lesion_mask, b.lesion_mask)


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_different_seeds_or_views_differ(subtype: str) -> None:
    base = make_phantom(subtype, 11, 128)
    other_seed = make_phantom(subtype, 12, 128)
    other_view = make_phantom(subtype, 11, 128, view=1)
    for other in (other_seed, other_view):
        assert np.abs(base.image.astype(int) - other.image).mean() > 5


def test_subtypes_of_one_seed_are_one_patient() -> None:
    """Same seed: same anatomy and acquisition, so the images differ mostly at the lesion."""
    normal = make_phantom("normal", 5, 128).image.astype(float)
    for subtype in ("bacteria", "virus"):
        ph = make_phantom(subtype, 5, 128)
        diff = np.abs(ph.image - normal)
        assert diff[ph.lesion_mask].mean() > 2 * diff[~ph.lesion_mask].mean()


def test_lung_mask_marks_the_dark_lung_fields() -> None:
    for seed in range(4):
        ph = make_phantom("normal", seed, 128)
        img = ph.image.astype(float)
        lungs = img[ph.lung_mask].mean()
        mediastinum = img[30:90, 60:68].mean()  # the midline between the lungs, in every pose
        assert lungs < mediastinum - 30, (seed, lungs, mediastinum)
        # Two fields, one each side of the midline.
        assert ph.lung_mask[:, :50].sum() > 500 and ph.lung_mask[:, 78:].sum() > 500


def test_normal_has_empty_mask() -> None:
    for seed in range(5):
        assert not make_phantom("normal", seed, 96).lesion_mask.any()


@pytest.mark.parametrize("subtype", ["bacteria", "virus"])
def test_lesion_mask_in_lungs_and_sized(subtype: str) -> None:
    for seed in range(6):
        ph = make_phantom(subtype, seed, 128)
        assert ph.lung_mask is not None
        frac = ph.lesion_mask.mean()
        assert 0.01 < frac < 0.25, (seed, frac)
        assert not (ph.lesion_mask & ~ph.lung_mask).any()
        # Lungs occupy a sensible share of the image and split into two fields.
        assert 0.15 < ph.lung_mask.mean() < 0.6
        half = ph.lesion_mask.shape[1] // 2
        left, right = ph.lesion_mask[:, :half].any(), ph.lesion_mask[:, half:].any()
        if subtype == "virus":
            assert left and right, f"virus seed {seed} is not bilateral"


def test_lesion_is_brighter_than_the_same_lung_without_it() -> None:
    """The finding is an opacity: brighter than the same place in the same patient's normal image."""
    for seed in range(4):
        normal = make_phantom("normal", seed, 128).image.astype(float)
        for subtype in ("bacteria", "virus"):
            ph = make_phantom(subtype, seed, 128)
            assert ph.image[ph.lesion_mask].mean() > normal[ph.lesion_mask].mean() + 10


def test_bacteria_is_one_region_in_one_lung() -> None:
    from scipy import ndimage

    for seed in range(6):
        ph = make_phantom("bacteria", seed, 128)
        labels, n = ndimage.label(ph.lesion_mask)
        sizes = np.bincount(labels.ravel())[1:]
        # One dominant component (texture may split off a few specks).
        assert sizes.max() >= 0.9 * sizes.sum(), (seed, sizes)
        lungs, n_lungs = ndimage.label(ph.lung_mask)
        assert n_lungs == 2
        touched = set(np.unique(lungs[ph.lesion_mask])) - {0}
        assert len(touched) == 1, (seed, touched)


def test_only_the_lesion_gives_the_class_away() -> None:
    """Same patient and acquisition with and without the finding: only the lesion differs.

    Generator version 1 normalised the mean of the image with its lesion, which darkened the
    healthy lung of a pneumonia phantom: a whole-image class cue that classifiers learned.
    """
    from scipy import ndimage

    deltas = []
    for seed in range(8):
        normal = make_phantom("normal", seed, 128)
        for subtype in ("bacteria", "virus"):
            ph = make_phantom(subtype, seed, 128)
            diff = np.abs(ph.image.astype(int) - normal.image.astype(int))
            # Outside the lungs (where no lesion is drawn; a margin for the detector blur) nothing changes.
            outside = ~ndimage.binary_dilation(ph.lung_mask, iterations=3)
            assert diff[outside].max() <= 1, (seed, subtype, diff[outside].max())
            if subtype == "bacteria":  # a consolidation has an edge: the healthy lung is untouched too
                healthy = ~ndimage.binary_dilation(ph.lesion_mask, iterations=3)
                assert diff[healthy].mean() < 0.2, (seed, diff[healthy].mean())
            assert diff[ph.lesion_mask].mean() > 15, (seed, subtype)  # the finding itself is visible
            deltas.append(abs(ph.image.mean() - normal.image.mean()))
    # The mean rises only by the lesion's own density (2-8 grey levels here), inside the spread
    # between patients (sd ~12), so brightness alone is a poor shortcut.
    spread = np.std([make_phantom("normal", seed, 64).image.mean() for seed in range(16)])
    assert spread > 5 and max(deltas) < spread and np.mean(deltas) < 0.4 * spread, (deltas, spread)


def test_sizes_scale() -> None:
    masks = [make_phantom("bacteria", 2, size).lesion_mask for size in (64, 256)]
    # The same lesion at two resolutions: area fraction agrees.
    assert abs(masks[0].mean() - masks[1].mean()) < 0.01


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="subtype"):
        make_phantom("pneumothorax", 0)  # "covid" is a finding since four-class sets
    with pytest.raises(ValueError):
        make_phantom("normal", 0, size=8)
    with pytest.raises(ValueError):
        make_phantom("normal", -1)


# ----------------------------------------------------------------------------- data set


def test_layout(dataset: Path) -> None:
    assert (dataset / "SOURCE.md").read_text().lower().count("synthetic") >= 2
    assert "not clinical" in (dataset / "SOURCE.md").read_text().lower()
    for split in SPLITS:
        for label in ("NORMAL", "PNEUMONIA"):
            files = list((dataset / split / label).iterdir())
            assert files and all(f.suffix == ".png" for f in files)
    # Nothing but the Kaggle layout plus masks/, manifest and SOURCE.md at the top.
    assert {p.name for p in dataset.iterdir()} == {*SPLITS, "masks", "manifest.csv", "SOURCE.md"}


def test_images_are_8bit_gray_pngs(dataset: Path, manifest: list[dict[str, str]]) -> None:
    for row in manifest[:: max(1, len(manifest) // 8)]:
        with Image.open(dataset / row["path"]) as im:
            assert im.format == "PNG" and im.mode == "L"
            assert im.size == (int(row["width"]), int(row["height"])) == (SMALL.size, SMALL.size)


def test_counts_match_spec(dataset: Path, manifest: list[dict[str, str]]) -> None:
    counts = Counter((r["split"], r["subtype"]) for r in manifest)
    for split in SPLITS:
        for subtype in SUBTYPES:
            assert counts[split, subtype] == SMALL.n_per_class[split]
    on_disk = Counter()
    for split in SPLITS:
        for path in (dataset / split).rglob("*.png"):
            on_disk[split, parse_name(path.name)[0]] += 1
    assert on_disk == counts


def test_manifest_columns(dataset: Path, manifest: list[dict[str, str]]) -> None:
    with (dataset / "manifest.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == MANIFEST_COLUMNS
    for row in manifest:
        split, label, name = row["path"].split("/")
        assert (split, label) == (row["split"], row["label"])
        assert label == ("NORMAL" if row["subtype"] == "normal" else "PNEUMONIA")
        assert (dataset / row["path"]).is_file()


def test_manifest_columns_match_the_real_data_set(dataset: Path, kermany224: Path) -> None:
    """The synthetic manifest has the columns of the real one (``$CXR_SHARED_DATA/kermany-224``), in order."""
    with (dataset / "manifest.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    with (kermany224 / "manifest.csv").open(newline="") as fh:
        real = next(csv.reader(fh))
    assert header == real, f"synthetic {header} != real {real} ({kermany224 / 'manifest.csv'})"


def test_names_parse_to_subtype_and_patient(manifest: list[dict[str, str]]) -> None:
    for row in manifest:
        subtype, key = parse_name(Path(row["path"]).name)
        assert (subtype, key) == (row["subtype"], row["patient_id"])
        assert int(re.sub(r"\D", "", key)) >= 5000  # never a real data set's patient number


def test_patients_stay_in_one_split(manifest: list[dict[str, str]]) -> None:
    splits_of = defaultdict(set)
    images_of = Counter()
    for row in manifest:
        splits_of[row["patient_id"]].add(row["split"])
        images_of[row["patient_id"]] += 1
    assert all(len(s) == 1 for s in splits_of.values())
    # Some patients have two images, so a patient-level split is not the same as an image split.
    two = sum(1 for n in images_of.values() if n == 2)
    assert two >= 3 and set(images_of.values()) <= {1, 2}
    # One patient key never carries two subtypes.
    subtypes_of = defaultdict(set)
    for row in manifest:
        subtypes_of[row["patient_id"]].add(row["subtype"])
    assert all(len(s) == 1 for s in subtypes_of.values())


def test_masks(dataset: Path, manifest: list[dict[str, str]]) -> None:
    for row in manifest:
        mask = load_mask(dataset, row["path"])
        assert mask.shape == (SMALL.size, SMALL.size) and mask.dtype == bool
        assert mask.any() == (row["subtype"] != "normal"), row["path"]
    # Masks sit outside the split folders, and the .jpeg spelling of a path finds them too.
    assert not any("masks" in p.parts[len(dataset.parts) :][1:] for p in dataset.rglob("*.png"))
    row = next(r for r in manifest if r["subtype"] == "bacteria")
    assert np.array_equal(
        load_mask(dataset, row["path"].replace(".png", ".jpeg")), load_mask(dataset, row["path"])
    )
    with pytest.raises(FileNotFoundError):
        load_mask(dataset, "train/NORMAL/IM-0001-0001.png")
    with pytest.raises(ValueError):
        load_mask(dataset, "../outside.png")


def test_files_are_the_phantoms(dataset: Path, manifest: list[dict[str, str]]) -> None:
    """Image and mask on disk are make_phantom's, pixel for pixel; a patient's images share anatomy."""
    by_patient = defaultdict(list)
    for row in manifest:
        by_patient[row["patient_id"]].append(row)
    for rows in list(by_patient.values())[::3]:
        row = rows[0]
        pid = int(re.sub(r"\D", "", row["patient_id"]))
        seed = _patient_seed(SMALL.seed, row["subtype"], pid)
        views = [make_phantom(row["subtype"], seed, SMALL.size, view=v) for v in range(len(rows))]
        for r in rows:
            image = np.asarray(Image.open(dataset / r["path"]))
            match = [ph for ph in views if np.array_equal(ph.image, image)]
            assert len(match) == 1, r["path"]
            assert np.array_equal(match[0].lesion_mask, load_mask(dataset, r["path"]))


def test_write_is_deterministic_and_reports_progress(tmp_path: Path, dataset: Path) -> None:
    calls: list[tuple[int, int]] = []
    again = write_dataset(tmp_path / "again", SMALL, progress=lambda d, n: calls.append((d, n)))
    total = sum(SMALL.n_per_class.values()) * len(SUBTYPES)
    assert calls[0] == (1, total) and calls[-1] == (total, total) and len(calls) == total

    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digest(again) == digest(dataset)
    other = write_dataset(tmp_path / "other", SyntheticSpec(n_per_class={"train": 1}, size=64, seed=1))
    first = "train/NORMAL/IM-5000-0001.png"
    assert (other / first).read_bytes() != (dataset / first).read_bytes()


def test_rewrite_replaces_an_old_set_but_not_other_data(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "set", SyntheticSpec(n_per_class={"train": 3, "test": 2}, size=48))
    write_dataset(root, SyntheticSpec(n_per_class={"train": 1}, size=48))
    assert len(list(root.rglob("*.png"))) == 2 * 3  # 3 images + 3 masks, nothing stale
    assert not (root / "test").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        write_dataset(foreign, SyntheticSpec(n_per_class={"train": 1}, size=48))
    assert (foreign / "keep.txt").read_text() == "user data"


def test_bad_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        write_dataset(tmp_path / "x", SyntheticSpec(n_per_class={"training": 2}))
