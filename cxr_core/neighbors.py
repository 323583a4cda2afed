"""Nearest-neighbour search and voting on L2-normalised embeddings (cosine distance).

Exact search: one matrix product per chunk of queries and ``argpartition`` for the
top K, so memory stays bounded (``chunk_bytes``) at 100,000 references and no
approximate index (with its recall questions) is needed at this scale. Distances
are cosine distances ``1 - <q, r>`` in [0, 2] for unit vectors.

Votes follow scikit-learn's ``KNeighborsClassifier`` so that the numbers are
comparable with it: ``uniform`` counts neighbours, ``distance`` weighs them by
1/d, and a query with an exact match (d = 0) takes its vote from the exact
matches only. Ties go to the lowest class index, as in scikit-learn.

A classifier's stored index (embeddings, thumbnails, maps) is :mod:`cxr_core.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Weights = Literal["uniform", "distance"]

#: Default K per task (odd for the binary task so that a majority always exists).
DEFAULT_K: dict[str, int] = {"binary": 7, "multiclass": 5}

#: Distances at or below this are "the same vector": float32 rounding keeps the
#: self-distance of a unit vector near 1e-7, not at 0.
EXACT = 1e-6


def default_k(task: str | None) -> int:
    return DEFAULT_K.get(task or "", 5)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length, as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


@dataclass
class Neighbors:
    """K nearest references per query: row ids into the reference set and cosine distances, nearest first."""

    ids: np.ndarray  # (n_queries, k) int64
    dist: np.ndarray  # (n_queries, k) float32


def search(
    reference: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    chunk_bytes: int = 256 << 20,
) -> Neighbors:
    """Exact K nearest neighbours of each query among ``reference`` rows (both L2-normalised).

    ``exclude[i]`` (optional, one reference row id per query, -1 for none) is left
    out of query i's answer: a reference image queried against its own set must not
    count itself.
    """
    ref = np.asarray(reference, dtype=np.float32)
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n_ref = ref.shape[0]
    if q.shape[1] != ref.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} does not match the reference dimension {ref.shape[1]}")
    extra = 1 if exclude is not None else 0
    k_eff = min(k, n_ref - extra)
    if k_eff < 1:
        raise ValueError(f"need at least {k + extra} reference rows for k={k}, have {n_ref}")
    kk = k_eff + extra
    ids_out = np.empty((q.shape[0], k_eff), dtype=np.int64)
    dist_out = np.empty((q.shape[0], k_eff), dtype=np.float32)
    rows = max(1, int(chunk_bytes // (4 * max(n_ref, 1))))
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        sims = q[start:stop] @ ref.T
        if exclude is not None:
            ex = np.asarray(exclude[start:stop], dtype=np.int64)
            has = ex >= 0
            # Pushing the excluded row to -inf is exact and cheaper than searching k+1 and filtering.
            sims[np.nonzero(has)[0], ex[has]] = -np.inf
        if kk < n_ref:
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n_ref), (stop - start, n_ref)).copy()
        part_sims = np.take_along_axis(sims, part, axis=1)
        # Stable sort on (-sim, id) so that equal distances order by row id, like a brute-force scan.
        order = np.lexsort((part, -part_sims), axis=1)
        top = np.take_along_axis(part, order, axis=1)[:, :k_eff]
        top_sims = np.take_along_axis(part_sims, order, axis=1)[:, :k_eff]
        ids_out[start:stop] = top
        dist_out[start:stop] = np.clip(1.0 - top_sims, 0.0, 2.0)
    return Neighbors(ids_out, dist_out)


def vote_weights(dist: np.ndarray, weights: Weights) -> np.ndarray:
    """Per-neighbour vote weights (scikit-learn's rule, with ``EXACT`` as zero)."""
    dist = np.asarray(dist, dtype=np.float64)
    if weights == "uniform":
        return np.ones_like(dist)
    if weights != "distance":
        raise ValueError(f"weights must be 'uniform' or 'distance', got {weights!r}")
    exact = dist <= EXACT
    w = 1.0 / np.where(exact, 1.0, dist)
    rows = exact.any(axis=1)
    w[rows] = exact[rows].astype(np.float64)
    return w


def vote(neighbor_labels: np.ndarray, dist: np.ndarray, n_classes: int, weights: Weights = "uniform") -> np.ndarray:
    """Vote shares (n_queries, n_classes), rows summing to 1, from the neighbours' class indices."""
    lab = np.atleast_2d(np.asarray(neighbor_labels, dtype=np.int64))
    w = vote_weights(np.atleast_2d(dist), weights)
    n = lab.shape[0]
    out = np.zeros((n, n_classes), dtype=np.float64)
    np.add.at(out, (np.repeat(np.arange(n), lab.shape[1]), lab.ravel()), w.ravel())
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-300)


def predict_from_shares(shares: np.ndarray) -> np.ndarray:
    """The winning class per row; ties go to the lowest class index (as scikit-learn)."""
    return np.argmax(shares, axis=1)


@dataclass
class KnnIndex:
    """Reference embeddings (L2-normalised) with their class indices, ready for queries."""

    embeddings: np.ndarray  # (N, D) float32, unit rows
    labels: np.ndarray  # (N,) int, class index for the task
    n_classes: int
    k: int = 5

    def __post_init__(self) -> None:
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.embeddings.shape[0] != self.labels.shape[0]:
            raise ValueError("embeddings and labels must have the same number of rows")

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def query(self, vectors: np.ndarray, k: int | None = None, exclude: np.ndarray | None = None) -> Neighbors:
        """Neighbours of arbitrary vectors (normalised here, so raw embeddings are fine)."""
        return search(self.embeddings, l2_normalize(np.atleast_2d(vectors)), k or self.k, exclude=exclude)

    def query_rows(self, rows: np.ndarray | list[int] | int, k: int | None = None) -> Neighbors:
        """Neighbours of reference rows, each leaving itself out."""
        r = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        return search(self.embeddings, self.embeddings[r], k or self.k, exclude=r)

    def query_upload(self, vector: np.ndarray, k: int | None = None) -> tuple[Neighbors, Neighbors, int | None]:
        """Neighbours of one new image, leaving the image itself out when it is a reference row.

        An upload that is a reference image (distance ~0) would carry its own label into the
        vote. Returns (the ``k`` others, the raw ``k + 1`` found, the matching row or None):
        the raw neighbours still place the image on its own point of a map.
        """
        k = k or self.k
        found = self.query(np.asarray(vector), min(k + 1, len(self)))
        same = found.dist[0] <= 10 * EXACT
        self_row = int(found.ids[0, np.argmax(same)]) if same.any() else None
        keep = np.nonzero(~same)[0][:k]
        return Neighbors(found.ids[:, keep], found.dist[:, keep]), found, self_row

    def shares(self, nb: Neighbors, weights: Weights = "uniform") -> np.ndarray:
        return vote(self.labels[nb.ids], nb.dist, self.n_classes, weights)

    def predict(self, nb: Neighbors, weights: Weights = "uniform") -> np.ndarray:
        return predict_from_shares(self.shares(nb, weights))


def leave_one_out(index: KnnIndex, k: int | None = None, weights: Weights = "uniform") -> tuple[Neighbors, np.ndarray]:
    """Every reference row's neighbours among the others, and the class they vote for."""
    nb = index.query_rows(np.arange(len(index)), k)
    return nb, index.predict(nb, weights)


def knn_accuracy(
    reference: KnnIndex, queries: np.ndarray, query_labels: np.ndarray, k: int | None = None
) -> dict[str, float]:
    """Accuracy of the majority and the distance-weighted vote for labelled queries."""
    nb = reference.query(queries, k)
    y = np.asarray(query_labels)
    return {
        "majority": float(np.mean(reference.predict(nb, "uniform") == y)),
        "weighted": float(np.mean(reference.predict(nb, "distance") == y)),
    }
