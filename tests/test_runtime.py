"""Serving-time thread settings."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_limit_blas_threads_caps_openblas_in_this_process():
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from cxr_core.runtime import limit_blas_threads\n"
        "print(limit_blas_threads())\n"
        "print(sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    msg, threads = out.stdout.strip().splitlines()
    assert msg == "BLAS threads limited to 1"
    assert threads == "[1]"
