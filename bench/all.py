"""`make bench`: every benchmark, written to docs/BENCHMARKS.md (an alias of ``python -m bench.report``)."""

from __future__ import annotations

import sys

from bench.report import main

if __name__ == "__main__":
    sys.exit(main())
