"""Process-wide CPU settings for serving: how many threads the numerical libraries may use.

The app serves one image at a time per session with PyTorch (OpenMP threads) and small NumPy /
scikit-learn steps in between (a KNN matrix-vector product, Mahalanobis distances). OpenBLAS
threads keep spinning for a while after such a call and steal the cores PyTorch's next network
needs: on a 2-core machine the whole Predict pipeline ran 2x slower without the limit (106.8 vs
53.0 ms per image, both arms interleaved in one process: ``python -m bench.predict_pipeline
--blas-ab``). The request path's BLAS work is tiny, so one BLAS thread costs nothing there.
Training scripts do not call this.
"""

from __future__ import annotations

import functools


@functools.cache
def limit_blas_threads(n: int = 1) -> str:
    """Cap BLAS (OpenBLAS / MKL) threads for this process, once; returns what was done."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings threadpoolctl; without it, leave the defaults
        return "threadpoolctl not installed: BLAS threads left at their default"
    threadpool_limits(limits=n, user_api="blas")
    return f"BLAS threads limited to {n}"
