"""2-D and 3-D maps of the embedding space (t-SNE via openTSNE, UMAP via umap-learn).

Maps are computed once, at indexing time, with fixed seeds, and stored as plain
arrays (``projection.npz``: ``tsne_2d``, ``tsne_3d``, ``umap_2d``, ``umap_3d``).
A new image is placed on a stored map from its nearest reference images (a
distance-weighted mean of their map coordinates), so no fitted reducer has to be
pickled and kept in step with the index. openTSNE's FFT gradient (its choice from
10,000 points up) only exists for 2-D, so the 3-D t-SNE always uses Barnes-Hut.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from .neighbors import EXACT, Neighbors
from .progress import Progress

#: Every map the index can hold, in display order.
PROJECTIONS: tuple[str, ...] = ("tsne_2d", "tsne_3d", "umap_2d", "umap_3d")
METHOD_LABELS = {"tsne": "t-SNE", "umap": "UMAP"}



def parse_name(name: str) -> tuple[str, int]:
    """``"umap_3d"`` → ``("umap", 3)``."""
    method, _, dims = name.partition("_")
    if method not in METHOD_LABELS or dims not in ("2d", "3d"):
        raise ValueError(f"unknown projection {name!r}; expected one of {PROJECTIONS}")
    return method, int(dims[0])


def tsne(x: np.ndarray, dims: int = 2, *, seed: int = 0, n_jobs: int | None = None, progress: Progress | None = None) -> np.ndarray:
    """openTSNE on cosine distances (Barnes-Hut below 10,000 points and in 3-D, FFT above in 2-D)."""
    from openTSNE import TSNE
    from openTSNE.callbacks import Callback

    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    if n_jobs is None:
        # openTSNE's thread pool spins: on a small, busy CPU, threads cost far more than they save
        # below ~10k points (120 points: 4 s on one thread, 50-80 s on two with other work running).
        n_jobs = 1 if n < 10_000 else -1
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0 - 1.0)))
    stage = f"t-SNE {dims}-D"
    early, main, every = 250, 500, 25
    total = (early + main) // every

    class _Tick(Callback):
        # openTSNE restarts the iteration count for its second phase, so count calls instead.
        calls = 0

        def __call__(self, iteration: int, error: float, embedding: object) -> bool:
            self.calls += 1
            if progress:
                progress(stage, min(self.calls, total), total)
            return False

    model = TSNE(
        n_components=dims,
        perplexity=perplexity,
        metric="cosine",
        # openTSNE picks BH below 10,000 points and FFT above; FFT exists only in 2-D.
        negative_gradient_method="auto" if dims == 2 else "bh",
        early_exaggeration_iter=early,
        n_iter=main,
        random_state=seed,
        n_jobs=n_jobs,
        callbacks=[_Tick()],
        callbacks_every_iters=every,
        verbose=False,
    )
    emb = model.fit(x)
    if progress:
        progress(stage, total, total)
    return np.asarray(emb, dtype=np.float32)


def umap(x: np.ndarray, dims: int = 2, *, seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """umap-learn on cosine distances; fixed seed (which makes it single-threaded, by design of umap-learn)."""
    import umap as umap_learn

    n = x.shape[0]
    if n < 4:
        raise ValueError(f"UMAP needs at least 4 points, got {n}")
    stage = f"UMAP {dims}-D"
    if progress:
        progress(stage, 0, 1)
    reducer = umap_learn.UMAP(
        n_components=dims,
        n_neighbors=int(min(15, n - 1)),
        min_dist=0.1,
        metric="cosine",
        random_state=seed,
        init="spectral" if n > dims + 1 else "random",
    )
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state" — expected with a fixed seed.
        warnings.simplefilter("ignore", UserWarning)
        y = reducer.fit_transform(x)
    if progress:
        progress(stage, 1, 1)
    return np.asarray(y, dtype=np.float32)


def compute(
    x: np.ndarray,
    names: Sequence[str] = PROJECTIONS,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The requested maps of ``x`` (unit rows) and the seconds each took."""
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    x = np.ascontiguousarray(x, dtype=np.float32)
    for name in names:
        method, dims = parse_name(name)
        t0 = time.perf_counter()
        maps[name] = tsne(x, dims, seed=seed, n_jobs=n_jobs, progress=progress) if method == "tsne" else umap(x, dims, seed=seed, progress=progress)
        seconds[name] = time.perf_counter() - t0
        if log:
            log(f"{name}: {seconds[name]:.1f}s")
    return maps, seconds


def place(coords: np.ndarray, nb: Neighbors, power: float = 1.0) -> np.ndarray:
    """Map positions for queries from their neighbours' map coordinates.

    A distance-weighted (1/d^power) mean of the K nearest reference points. A query
    that matches a reference exactly (d <= ``EXACT``) lands on that reference's point
    (on the mean of its exact matches when there are several), so a reference image
    placed this way lands on its own point.
    """
    c = np.asarray(coords, dtype=np.float64)
    dist = np.atleast_2d(np.asarray(nb.dist, dtype=np.float64))
    ids = np.atleast_2d(nb.ids)
    exact = dist <= EXACT
    w = 1.0 / np.power(np.where(exact, 1.0, dist), power)
    rows = exact.any(axis=1)
    w[rows] = exact[rows].astype(np.float64)
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkd->qd", w, c[ids]).astype(np.float32)
