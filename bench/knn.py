"""KNN, map placement, projection and explorer-figure costs at the real set size and at 100,000 points.

    python -m bench.knn                        # everything (projections take minutes on 2 cores)
    python -m bench.knn --registry registry-kermany   # use a real index when one is there
    python -m bench.knn --skip-projections
    python -m bench.knn --skip-projections --large-projections umap_2d,tsne_2d   # maps of 100,000 too

Real size: kermany-224 has 5,278 images (train 4,654 incl. the val drawn from it, test 624), and
EfficientNet-Lite0's embedding has 1,280 dimensions. Without a built index of that size the
script uses clustered random unit vectors of that shape and says so. Timings are wall-clock
medians on this machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from cxr_core.neighbors import KnnIndex, l2_normalize, leave_one_out, search
from cxr_core.projection import compute, place
from cxr_core.reference import ReferenceSet

REAL_N, REAL_TEST, DIM = 5278, 624, 1280


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median seconds of ``repeat`` calls (after one warm-up call)."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def clustered_unit(n: int, d: int, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = centres[y] + 2.0 * rng.standard_normal((n, d), dtype=np.float32)
    return l2_normalize(x), y


def find_real_index(registry: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    if not registry:
        return None
    from cxr_core.registry import list_entries

    for s in list_entries(registry, check_hashes=False):
        if s.info and s.info.has("index.npz"):
            z = s.entry().load_npz("index.npz")
            return z["embeddings"], z["targets"], z["splits"], s.id
    return None


def fmt(s: float) -> str:
    return f"{s * 1e3:9.2f} ms" if s < 10 else f"{s:9.1f} s "


def knn_block(name: str, emb: np.ndarray, y: np.ndarray, n_queries: int, full_loo: bool) -> None:
    from sklearn.neighbors import NearestNeighbors

    n, d = emb.shape
    print(f"\n== {name}: {n:,} x {d} float32 ({emb.nbytes / 2**20:.0f} MiB) ==")
    t0 = time.perf_counter()
    index = KnnIndex(emb, y, int(y.max()) + 1, 7)
    print(f"  index build (normalised copy)           {fmt(time.perf_counter() - t0)}")
    t0 = time.perf_counter()
    sk = NearestNeighbors(n_neighbors=7, metric="cosine", algorithm="brute").fit(emb)
    print(f"  sklearn NearestNeighbors fit            {fmt(time.perf_counter() - t0)}")
    q1 = emb[:1] + 0.01
    print(f"  1 query, K=7 (ours, exact)              {fmt(timed(lambda: index.query(q1)))}")
    print(f"  1 query, K=7 (sklearn brute cosine)     {fmt(timed(lambda: sk.kneighbors(q1)))}")
    qs = emb[:n_queries]
    print(f"  {n_queries:,} queries (ours)                  {fmt(timed(lambda: search(index.embeddings, qs, 7), 3))}")
    print(f"  {n_queries:,} queries (sklearn)               {fmt(timed(lambda: sk.kneighbors(qs), 3))}")
    coords = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    print(f"  place 1 new image (query + mean)        {fmt(timed(lambda: place(coords, index.query(q1)), 20))}")
    if full_loo or n <= 20_000:
        t0 = time.perf_counter()
        leave_one_out(index)
        print(f"  leave-one-out vote, all {n:,} rows       {fmt(time.perf_counter() - t0)}")
    else:
        m = 5000
        sub = KnnIndex(emb, y, int(y.max()) + 1, 7)
        t0 = time.perf_counter()
        sub.query_rows(np.arange(m))
        dt = time.perf_counter() - t0
        print(f"  leave-one-out, {m:,} of {n:,} rows       {fmt(dt)}  (all rows ~{dt * n / m:.0f} s, extrapolated)")


def figure_block(n: int) -> None:
    """Server-side cost of the explorer's chart at n points: figure build and the JSON Streamlit sends."""
    import plotly.io as pio

    from pages.ui.embedding_views import scatter_figure, selected_rows

    rng = np.random.default_rng(1)
    emb, y = clustered_unit(n, 8)
    labels = np.where(y == 0, "NORMAL", "PNEUMONIA")
    splits = rng.choice(["train", "val", "test"], n)
    ref = ReferenceSet(
        entry_id="bench", task="binary", classes=["NORMAL", "PNEUMONIA"],
        paths=np.array([f"train/X/person{i}_virus_{i}.jpeg" for i in range(n)]), labels=labels,
        subtypes=np.where(y == 0, "normal", np.where(y == 1, "bacteria", "virus")), splits=splits,
        patients=np.arange(n).astype(str), targets=(y > 0).astype(np.int64), probs=np.zeros((n, 2), np.float32),
        predicted=(y > 0).astype(np.int64), knn_predicted=(y > 0).astype(np.int64),
        knn=KnnIndex(emb, (y > 0).astype(np.int64), 2, 7), thumbs=np.zeros((n, 8, 8), np.uint8),
        maps={"umap_2d": rng.normal(size=(n, 2)).astype(np.float32), "umap_3d": rng.normal(size=(n, 3)).astype(np.float32)},
        data_root=None, info={},
    )
    print(f"\n== explorer chart, {n:,} points (server side) ==")
    for name, colour in (("umap_2d", "label"), ("umap_2d", "split"), ("umap_3d", "label")):
        build = timed(lambda name=name, colour=colour: scatter_figure(ref, name, colour), 3)
        fig = scatter_figure(ref, name, colour)
        js = timed(lambda fig=fig: pio.to_json(fig, validate=False), 3)
        size = len(pio.to_json(fig, validate=False))
        print(f"  {name} by {colour:<6} build {fmt(build)}  to_json {fmt(js)}  {size / 2**20:5.1f} MiB sent")
    lasso = {"selection": {"points": [{"customdata": int(i)} for i in range(0, n, 2)]}}
    print(f"  parse a lasso of {n // 2:,} points           {fmt(timed(lambda: selected_rows(lasso, n), 3))}")


def projection_block(emb: np.ndarray, names: list[str]) -> None:
    print(f"\n== projections of {emb.shape[0]:,} x {emb.shape[1]} (fixed seed) ==")
    t0 = time.perf_counter()
    compute(clustered_unit(60, 8)[0], ("umap_2d",))
    print(f"  UMAP first-call numba compilation (60 points)  {fmt(time.perf_counter() - t0)}")
    for name in names:
        _, sec = compute(emb, (name,))
        print(f"  {name:<8}                                 {fmt(sec[name])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.knn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=os.environ.get("CXR_REGISTRY"), help="registry with a built index (optional)")
    p.add_argument("--large", type=int, default=100_000)
    p.add_argument("--skip-projections", action="store_true")
    p.add_argument("--projections", default="tsne_2d,tsne_3d,umap_2d,umap_3d")
    p.add_argument("--full-loo", action="store_true", help="run the all-rows leave-one-out vote at the large size too")
    p.add_argument("--large-projections", default="",
                   help="projections also computed for the large synthetic set, e.g. umap_2d,tsne_2d (minutes each)")
    ns = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    real = find_real_index(ns.registry)
    if real is not None and abs(real[0].shape[0] - REAL_N) < 200:
        emb, y, _, entry = real
        name = f"real index {entry}"
    else:
        emb, y = clustered_unit(REAL_N, DIM)
        name = "real size, SYNTHETIC clustered unit vectors (no kermany-224 index found)"
    knn_block(name, emb, y, REAL_TEST, ns.full_loo)
    big, ybig = clustered_unit(ns.large, DIM, seed=2)
    knn_block(f"{ns.large:,} synthetic unit vectors", big, ybig, 1000, ns.full_loo)
    if ns.large_projections:
        projection_block(big, [x for x in ns.large_projections.split(",") if x])
    del big
    figure_block(ns.large)
    if not ns.skip_projections:
        projection_block(emb, [x for x in ns.projections.split(",") if x])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
