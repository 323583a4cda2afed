"""Descriptive statistics of a dataset folder for the Models & data page.

Image sizes come from file headers only (Pillow opens lazily and reads no pixels
until asked), so a few thousand files take seconds, not minutes. DICOM sizes come
from the header tags, read without pixel data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .data import read_dataset


@dataclass(frozen=True)
class ImageSizes:
    """Width and height of every readable image, row-aligned with split/label/subtype."""

    split: np.ndarray  # str
    label: np.ndarray  # str
    subtype: np.ndarray  # str
    width: np.ndarray  # int
    height: np.ndarray  # int
    unreadable: int

    def __len__(self) -> int:
        return len(self.width)


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file header, or None when the header cannot be read."""
    try:
        if str(path).lower().endswith(".dcm"):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # any unreadable header counts as unreadable, whatever the decoder raised
        return None


def image_sizes(root: str | os.PathLike, progress: Callable[[int, int], None] | None = None, workers: int = 8) -> ImageSizes:
    """Header sizes of every image of a Kaggle-layout dataset (raises ``DatasetError`` if the folder is not one)."""
    ds = read_dataset(root)
    samples = ds.samples
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = []
        for i, s in enumerate(pool.map(lambda s: header_size(ds.abspath(s)), samples)):
            sizes.append(s)
            if progress and (i % 256 == 0 or i == len(samples) - 1):
                progress(i + 1, len(samples))
    ok = [i for i, s in enumerate(sizes) if s is not None]
    return ImageSizes(
        split=np.array([samples[i].split for i in ok]),
        label=np.array([samples[i].label for i in ok]),
        subtype=np.array([samples[i].subtype for i in ok]),
        width=np.array([sizes[i][0] for i in ok], dtype=np.int64),
        height=np.array([sizes[i][1] for i in ok], dtype=np.int64),
        unreadable=len(sizes) - len(ok),
    )
