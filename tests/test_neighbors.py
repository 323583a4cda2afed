"""KNN search and votes against scikit-learn, map placement, projections, and the index build."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from cxr_core.neighbors import (
    KnnIndex,
    Neighbors,
    default_k,
    knn_accuracy,
    l2_normalize,
    leave_one_out,
    search,
    vote,
)
from cxr_core.projection import PROJECTIONS, compute, parse_name, place
from cxr_core.reference import ReferenceSet


def clustered(n: int, d: int = 48, classes: int = 3, seed: int = 0, spread: float = 3.5) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping class clusters: KNN gets many but not all right, so accuracies can differ."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, n)
    x = centres[y] + spread * rng.normal(size=(n, d))
    return l2_normalize(x), y


@pytest.mark.parametrize("classes,k", [(2, 7), (3, 5), (3, 8)])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_equals_sklearn(classes: int, k: int, weights: str) -> None:
    x, y = clustered(700, classes=classes, seed=classes * 10 + k)
    xtr, ytr, xte, yte = x[:500], y[:500], x[500:], y[500:]
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights=weights, algorithm="brute").fit(xtr, ytr)
    index = KnnIndex(xtr, ytr, classes, k)
    nb = index.query(xte)
    ours = index.predict(nb, weights)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours, sk.predict(xte))
    np.testing.assert_allclose(index.shares(nb, weights), sk.predict_proba(xte), atol=1e-6)  # type: ignore[arg-type]
    acc = knn_accuracy(index, xte, yte, k)
    assert acc["majority" if weights == "uniform" else "weighted"] == pytest.approx(sk.score(xte, yte), abs=0)
    assert 0.4 < sk.score(xte, yte) < 1.0  # the data is neither trivial nor noise


def test_search_matches_sklearn_neighbours_and_distances() -> None:
    x, _ = clustered(400, seed=3)
    q = l2_normalize(np.random.default_rng(4).normal(size=(37, x.shape[1])))
    nb = search(x, q, 9)
    sk_dist, sk_ids = NearestNeighbors(n_neighbors=9, metric="cosine", algorithm="brute").fit(x).kneighbors(q)
    np.testing.assert_array_equal(nb.ids, sk_ids)
    np.testing.assert_allclose(nb.dist, sk_dist, atol=1e-5)
    assert np.all(np.diff(nb.dist, axis=1) >= 0)


def test_query_rows_leaves_itself_out_like_sklearn() -> None:
    x, y = clustered(300, seed=5)
    index = KnnIndex(x, y, 3, 5)
    nb = index.query_rows(np.arange(300))
    assert not np.any(nb.ids == np.arange(300)[:, None])
    sk_dist, sk_ids = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(x).kneighbors()
    np.testing.assert_array_equal(nb.ids, sk_ids)
    _, pred = leave_one_out(index)
    np.testing.assert_array_equal(pred, index.predict(nb))


def test_chunked_search_equals_one_block() -> None:
    x, _ = clustered(500, seed=6)
    q, _ = clustered(120, seed=7)
    whole = search(x, q, 6)
    tiny = search(x, q, 6, chunk_bytes=4 * 500 * 7)  # 7 queries per chunk
    np.testing.assert_array_equal(whole.ids, tiny.ids)
    np.testing.assert_allclose(whole.dist, tiny.dist, atol=1e-6)  # BLAS blocks differ in the last bit


def test_k_larger_than_reference_and_bad_dimensions() -> None:
    x, _ = clustered(4, seed=8)
    nb = search(x, x[:1], 10)
    assert nb.ids.shape == (1, 4)
    assert KnnIndex(x, np.zeros(4), 1, 10).query_rows([0]).ids.shape == (1, 3)
    with pytest.raises(ValueError, match="dimension"):
        search(x, np.ones((1, 3)), 2)


def test_exact_match_takes_the_weighted_vote() -> None:
    labels = np.array([[1, 0, 0, 0, 0]])
    dist = np.array([[0.0, 0.1, 0.1, 0.1, 0.1]])
    assert vote(labels, dist, 2, "distance").tolist() == [[0.0, 1.0]]
    assert vote(labels, dist, 2, "uniform").tolist() == [[0.8, 0.2]]
    assert default_k("binary") == 7 and default_k("multiclass") == 5


def test_reference_image_lands_on_its_own_point() -> None:
    x, y = clustered(250, seed=9)
    coords = np.random.default_rng(10).normal(size=(250, 2)).astype(np.float32) * 20
    index = KnnIndex(x, y, 3, 7)
    placed = place(coords, index.query(x))  # every reference row queried as a new image
    np.testing.assert_allclose(placed, coords, atol=1e-5)
    # A float32 round trip of the vector (as after a save/load or a re-embedding) still lands on the point.
    noisy = x[17] + np.float32(1e-8)
    np.testing.assert_allclose(place(coords, index.query(noisy)), coords[17:18], atol=1e-4)


def test_new_image_lands_among_its_neighbours() -> None:
    coords = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [100.0, 100.0]], dtype=np.float32)
    nb = Neighbors(ids=np.array([[0, 1, 2]]), dist=np.array([[0.1, 0.2, 0.2]], dtype=np.float32))
    p = place(coords, nb)[0]
    np.testing.assert_allclose(p, [2.5, 2.5], atol=1e-5)  # weights 1/d: 10, 5, 5


def test_projections_tsne_shapes_and_fixed_seed() -> None:
    x, _ = clustered(90, d=16, seed=11)
    ticks: list[tuple[str, int, int]] = []
    maps, seconds = compute(x, ("tsne_2d", "tsne_3d"), seed=3, progress=lambda s, i, n: ticks.append((s, i, n)))
    assert maps["tsne_2d"].shape == (90, 2) and maps["tsne_3d"].shape == (90, 3)
    assert maps["tsne_2d"].dtype == np.float32 and set(seconds) == {"tsne_2d", "tsne_3d"}
    assert ticks and ticks[-1][1] == ticks[-1][2]
    again, _ = compute(x, ("tsne_2d",), seed=3)
    np.testing.assert_array_equal(again["tsne_2d"], maps["tsne_2d"])
    with pytest.raises(ValueError):
        parse_name("pca_2d")


# --- index build on the tiny registry --------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed_registry(tiny_registry, synthetic_data, tmp_path_factory):
    """A copy of the tiny registry (the fixture is shared) with both classifiers indexed through the CLI."""
    from train.index import main

    root = tmp_path_factory.mktemp("indexed") / "registry"
    shutil.copytree(tiny_registry, root)
    for task, maps in (("binary", ",".join(PROJECTIONS)), ("multiclass", "tsne_2d")):  # every map once is enough
        args = [task, "--data", str(synthetic_data), "--out", str(root), "--device", "cpu", "--thumb-size", "48"]
        assert main([*args, "--projections", maps]) == 0
    return root


def test_index_build_writes_row_aligned_files(indexed_registry, synthetic_data) -> None:
    from cxr_core.data import read_dataset, with_validation_split
    from cxr_core.imaging import read_gray
    from cxr_core.registry import list_entries, select

    statuses = list_entries(indexed_registry)
    assert all(s.ok for s in statuses), [s.reason for s in statuses]
    entry = select(statuses, "classifier", "binary")
    assert entry is not None
    for name in ("index.npz", "thumbs.npy", "projection.npz", "weights.safetensors"):
        assert entry.has(name)
    z = entry.load_npz("index.npz")
    n = len(z["paths"])
    ds = with_validation_split(read_dataset(synthetic_data), 0.1, 0)
    assert n == len(ds.samples)
    by_path = {s.path: s for s in ds.samples}
    assert [by_path[p].split for p in z["paths"]] == z["splits"].tolist()
    assert set(z["splits"].tolist()) == {"train", "val", "test"}
    assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (n, entry.card["embedding_dim"])
    np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, atol=1e-5)
    assert z["probs"].shape == (n, 2) and z["ids"].tolist() == list(range(n))
    thumbs = entry.load_npy("thumbs.npy")
    assert isinstance(thumbs, np.memmap) and thumbs.shape == (n, 48, 48) and thumbs.dtype == np.uint8
    # Row alignment: row 5's thumbnail is row 5's file.
    from PIL import Image

    g = read_gray(synthetic_data / str(z["paths"][5]))
    expect = np.asarray(Image.fromarray(g).resize((48, 48), Image.Resampling.BILINEAR))
    assert np.abs(thumbs[5].astype(int) - expect.astype(int)).max() <= 1
    maps = entry.load_npz("projection.npz")
    assert sorted(maps) == sorted(PROJECTIONS)
    assert all(maps[m].shape == (n, parse_name(m)[1]) for m in maps)


def test_index_card_knn_metrics_match_sklearn(indexed_registry) -> None:
    from cxr_core.registry import list_entries, select

    for task, k in (("binary", 7), ("multiclass", 5)):
        entry = select(list_entries(indexed_registry), "classifier", task)
        assert entry is not None
        card = json.loads((entry.path / "card.json").read_text())
        assert card["index"]["k"] == k and card["index"]["n"] == sum(card["index"]["splits"].values())
        assert "test" in card["metrics"]  # the head's metrics are still there, beside the KNN ones
        z = entry.load_npz("index.npz")
        tr, te = z["splits"] == "train", z["splits"] == "test"
        for weights, name in (("uniform", "majority"), ("distance", "weighted")):
            sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights=weights, algorithm="brute")
            sk.fit(z["embeddings"][tr], z["targets"][tr])
            m = card["metrics"][f"test_knn_{name}"]
            assert m["vote_accuracy"] == pytest.approx(sk.score(z["embeddings"][te], z["targets"][te]), abs=1e-12)
            assert m["n"] == int(te.sum()) and m["k"] == k


def test_reindex_keeps_weights_and_reference_set_places_rows(indexed_registry, synthetic_data) -> None:
    from cxr_core.reference import IndexConfig, build_index
    from cxr_core.registry import list_entries, select

    entry = select(list_entries(indexed_registry), "classifier", "binary")
    assert entry is not None
    weights_sha = entry.card["files"]["weights.safetensors"]["sha256"]
    before = entry.load_npz("index.npz")
    # Two decode/embed chunks this time: rows must come out in the same order as in one pass.
    build_index(entry, synthetic_data, IndexConfig(device="cpu", projections=("tsne_2d",), k=3, thumb_size=32, chunk=50),
                log=lambda s: None)
    again = select(list_entries(indexed_registry), "classifier", "binary")
    assert again is not None and again.card["files"]["weights.safetensors"]["sha256"] == weights_sha
    assert again.card["index"]["k"] == 3 and again.card["metrics"]["test_knn_majority"]["k"] == 3
    after = again.load_npz("index.npz")
    assert len(before["paths"]) > 50 and after["paths"].tolist() == before["paths"].tolist()
    np.testing.assert_allclose(after["embeddings"], before["embeddings"], atol=1e-5)
    np.testing.assert_allclose(after["probs"], before["probs"], atol=1e-5)
    ref = ReferenceSet.from_entry(again)
    assert sorted(ref.maps) == ["tsne_2d"] and ref.thumbs.shape[1:] == (32, 32)
    for row in (0, len(ref) // 2, len(ref) - 1):
        np.testing.assert_allclose(ref.place(ref.knn.embeddings[row], "tsne_2d"), ref.maps["tsne_2d"][row], atol=1e-4)
    # The Predict page reuses its K+1 neighbours for the placement: the same point as a fresh query.
    rng = np.random.default_rng(0)
    for v in rng.normal(size=(3, ref.knn.embeddings.shape[1])).astype(np.float32):
        nb = ref.knn.query(v, ref.k + 1)
        np.testing.assert_array_equal(ref.place(v, "tsne_2d", ref.k, neighbors=nb), ref.place(v, "tsne_2d", ref.k))
    assert ref.find(str(ref.paths[3]).rsplit("/", 1)[-1].upper()).tolist()[:1] == [3]
    assert ref.image(0).ndim == 2
