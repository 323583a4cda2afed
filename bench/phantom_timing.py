"""Time of one synthetic phantom (``cxr_core.synthetic.make_phantom``) per subtype.

    python -m bench.phantom_timing                 # 10 phantoms of 256 px per subtype
    python -m bench.phantom_timing --n 50 --size 512

Prints CPU and wall milliseconds per phantom. CPU time is the figure to read: wall time on a shared
machine includes waiting. This was ``tests/test_synthetic.py::test_phantom_timing``, a timing check
with a bound 40 times the measurement that only printed a figure; a figure belongs here (issue 19).
"""

from __future__ import annotations

import argparse
import time


def time_phantoms(n: int = 10, size: int = 256) -> dict[str, tuple[float, float]]:
    """{subtype: (CPU ms, wall ms)} per phantom, after one warm-up phantom (interpolation-matrix cache)."""
    from cxr_core.synthetic import SUBTYPES, make_phantom

    make_phantom("virus", 0, size)  # warm the interpolation-matrix cache
    out = {}
    for subtype in SUBTYPES:
        wall, cpu = time.perf_counter(), time.process_time()
        for seed in range(n):
            make_phantom(subtype, seed, size)
        out[subtype] = ((time.process_time() - cpu) / n * 1e3, (time.perf_counter() - wall) / n * 1e3)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="phantoms per subtype")
    ap.add_argument("--size", type=int, default=256, help="phantom side in pixels")
    args = ap.parse_args(argv)
    for subtype, (cpu_ms, wall_ms) in time_phantoms(args.n, args.size).items():
        print(f"make_phantom({subtype!r}, size={args.size}): {cpu_ms:.1f} ms CPU, {wall_ms:.1f} ms wall per phantom")


if __name__ == "__main__":
    main()
