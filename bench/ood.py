"""How well does the chest X-ray guard tell CXRs from other images?

    python -m bench.ood --registry registry-kermany [--data ../shared/data]

Non-CXR images: scikit-image's sample images that ship with the package (photos,
micrographs, text, textures, a CT-like Shepp-Logan phantom), each checked twice:
as uploaded (colour PNG where it is colour, so the cheap colour check can fire) and
as a grey PNG (only the shape and feature checks can catch it). Real CXRs: the
cxr-mini test split (higher-resolution copies; its images come from Kermany's
*train* split, so some overlap with what a kermany-224 guard was fitted on) and the
kermany-224 official test split (never seen by the guard). Prints misses on non-CXRs
and false alarms on real CXRs.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

NON_CXR = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "moon", "text", "page", "horse", "clock",
    "coins", "hubble_deep_field", "immunohistochemistry", "retina", "shepp_logan_phantom", "grass", "gravel",
    "cell", "checkerboard", "colorwheel", "logo", "microaneurysms", "cat", "binary_blobs",
)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _as_u8(a: np.ndarray) -> np.ndarray:
    if a.dtype == bool:
        return (a * 255).astype(np.uint8)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        return ((a - a.min()) / max(a.max() - a.min(), 1e-12) * 255).round().astype(np.uint8)
    return a


def non_cxr_images() -> dict[str, np.ndarray]:
    import skimage.data as d

    out = {}
    for name in NON_CXR:
        try:
            img = _as_u8(getattr(d, name)())
        except Exception:  # images that need a download are skipped
            continue
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out[name] = img
    return out


def main(argv: list[str] | None = None) -> int:
    from cxr_core.anomaly import shared_backbone
    from cxr_core.data import read_dataset
    from cxr_core.imaging import decode_image
    from cxr_core.ood import OODGuard, cheap_check
    from cxr_core.preprocess import prepare
    from cxr_core.registry import list_entries, select

    p = argparse.ArgumentParser(prog="python -m bench.ood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default="registry-kermany")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--max-real", type=int, default=None, help="cap real CXRs per set")
    ns = p.parse_args(argv)
    entry = select(list_entries(ns.registry), "detector", "ood")
    if entry is None:
        print(f"no OOD guard in {ns.registry}; fit one with python -m train.anomaly --detector ood", file=sys.stderr)
        return 2
    guard = OODGuard.from_entry(entry)
    print(f"guard {entry.id}: threshold {guard.threshold:.3f} ({guard.note})")

    from skimage.color import rgb2gray

    print("\nnon-CXR images (as uploaded | grey only):")
    margin = float(entry.info.thresholds.get("margin", 1.0))
    base = guard.threshold / margin  # the validation quantile itself
    non_cxr_d: list[float] = []
    real_d: dict[str, np.ndarray] = {}
    misses_up, misses_grey, n = [], [], 0
    for name, img in non_cxr_images().items():
        n += 1
        raw = _png(img)
        up = guard.check(decode_image(raw).array, original_shape=img.shape[:2], raw=raw)
        grey = (rgb2gray(img) * 255).round().astype(np.uint8) if img.ndim == 3 else img
        gr = guard.check(grey, original_shape=grey.shape)
        non_cxr_d.append(float(gr.distance or 0.0))
        if up.looks_like_cxr:
            misses_up.append(name)
        if gr.looks_like_cxr:
            misses_grey.append(name)
        print(f"  {name:<22} distance/threshold {gr.margin:6.2f}  "
              f"{'FLAGGED' if not up.looks_like_cxr else 'missed '} | {'FLAGGED' if not gr.looks_like_cxr else 'missed '}"
              f"  {'; '.join(up.reasons)[:90]}")
    print(f"misses: as uploaded {len(misses_up)}/{n} {misses_up}; grey only {len(misses_grey)}/{n} {misses_grey}")

    data = Path(ns.data)
    for name, split in (("cxr-mini", "test"), ("kermany-224", "test")):
        root = data / name
        if not root.is_dir():
            print(f"\n{name}: absent ({root})")
            continue
        ds = read_dataset(root)
        samples = ds.split(split)[: ns.max_real]
        t0 = time.perf_counter()
        # Same verdict as guard.check() per image, with the feature distances computed in batches.
        cheap, prepared = [], []
        spec = shared_backbone(guard.detector.cfg.architecture).spec(guard.detector.cfg.size)
        for s in samples:
            raw = ds.abspath(s).read_bytes()
            dec = decode_image(raw)
            cheap.append(cheap_check(dec.array, original_shape=dec.original_shape, raw=raw))
            prepared.append(prepare(dec.array, spec))
        dist = guard.distances(np.stack(prepared))
        real_d[name] = dist
        flagged, margins = [], dist / guard.threshold
        for s, c, d in zip(samples, cheap, dist, strict=True):
            reasons = list(c.reasons) + ([f"feature distance {d / guard.threshold:.2f}x the threshold"]
                                         if not d < guard.threshold else [])
            if reasons:
                flagged.append((s.path, reasons))
        dt = (time.perf_counter() - t0) / max(len(samples), 1)
        print(f"\n{name} {split}: {len(flagged)} of {len(samples)} real CXRs flagged "
              f"({len(flagged) / max(len(samples), 1):.1%}); distance/threshold median {np.median(margins):.2f}, "
              f"max {np.max(margins):.2f}; {dt * 1000:.0f} ms per image")
        for path, reasons in flagged[:10]:
            print(f"  {path}: {'; '.join(reasons)}")

    print(f"\nfeature check alone at other thresholds (multiples of the validation quantile {base:.3f}):")
    nd = np.asarray(non_cxr_d)
    for k in (1.0, 1.25, 1.5, 2.0, 3.0):
        t = k * base
        rates = "  ".join(f"{name} false alarms {(d >= t).mean():.1%}" for name, d in real_d.items())
        print(f"  x{k:<4g} threshold {t:7.3f}: non-CXR (grey) missed {(nd < t).sum()}/{len(nd)}  {rates}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
