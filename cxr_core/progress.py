"""The progress callback every long step accepts.

``progress(label, done, total)``: the CLIs draw it as a tqdm bar per label, the app as a
Streamlit progress bar. Steps that have a single phase pass their own label.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
#: A single phase's own bar, ``progress(done, total)``: what per-image loops call.
StepProgress = Callable[[int, int], None]


def labelled(progress: Progress | None, label: str) -> StepProgress | None:
    """``progress`` with its label filled in, for a loop that reports ``(done, total)``; None stays None."""
    if progress is None:
        return None
    return lambda done, total: progress(label, done, total)
