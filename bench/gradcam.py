"""Class-activation-map (HiResCAM, Grad-CAM, Grad-CAM++) cost relative to a plain forward pass of the same model, on CPU.

    python -m bench.gradcam                       # tf_efficientnet_lite0 at 224 px
    python -m bench.gradcam --arch all --runs 15  # every architecture in models.ARCHITECTURES
    python -m bench.gradcam --threads 2 --size 160

Every run times, back to back on the same 224x224 grayscale phantom (so load drift on a shared
machine hits all of them alike):

- ``forward``: ``model(x)`` under ``torch.inference_mode()``, as the Predict page infers;
- ``hirescam`` / ``gradcam`` / ``gradcam++``: ``Explainer.explain`` end to end, each at its
  default layer (preprocess, forward, backward down to that layer, CAM, map on the original image);
- ``page``: ``Explainer.explain_features`` (default method) from the layer output that the
  prediction's own forward pass kept, i.e. the cost the Predict page adds on top of classifying
  (the network after that layer forward + backward, CAM, map on the original image);
- ``lib-plain``: pytorch-grad-cam's default method used the plain way (all parameters requiring
  grad, so the backward pass runs through the whole network), for comparison.

Prints medians over ``--runs`` and each method's ratio to the forward median of the same run.
Random-init weights: the cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_arch(arch: str, size: int, runs: int, warmup: int) -> dict[str, float]:
    import copy

    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    from cxr_core.config import InputSpec
    from cxr_core.explain import DEFAULT_METHOD, METHODS, Explainer
    from cxr_core.models import create_model, forward_features_keeping, gradcam_target_layer
    from cxr_core.preprocess import image_to_input
    from cxr_core.synthetic import make_phantom

    model, info = create_model(arch, 1, pretrained=False)
    model.eval()
    spec = InputSpec(size=size, mean=info.mean, std=info.std)
    gray = make_phantom("bacteria", 7, size).image
    x = image_to_input(gray, spec)
    # Each method at its own default layer, as the pages use them.
    explainers = {m: Explainer(model, arch, "binary", spec, method=m) for m in METHODS}
    ex = explainers[DEFAULT_METHOD]
    plain = copy.deepcopy(model)
    plain_layer = gradcam_target_layer(plain, arch, DEFAULT_METHOD)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    with torch.inference_mode():  # what the classification pass keeps: the output of the explainer's layer
        _, kept = forward_features_keeping(model, arch, x, [ex.layer_name])
        feats = kept[ex.layer_name].float() if ex.layer_name in kept else None

    def lib_plain() -> None:
        with METHODS[DEFAULT_METHOD](model=plain, target_layers=[plain_layer]) as cam:
            cam(input_tensor=x.clone(), targets=[BinaryClassifierOutputTarget(1)])

    fns = {"forward": forward}
    fns.update({m: (lambda e=e, m=m: e.explain(gray, m, 1)) for m, e in explainers.items()})
    fns["page"] = (lambda: ex.explain_features(gray, feats, DEFAULT_METHOD, 1)) if feats is not None else (
        lambda: ex.explain(gray, DEFAULT_METHOD, 1))
    fns["lib-plain"] = lib_plain
    for fn in fns.values():
        _time(fn, 0, warmup)
    times: dict[str, list[float]] = {k: [] for k in fns}
    # Interleaved so that a busy neighbour slows every method alike.
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].extend(_time(fn, 1, 0))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    from cxr_core.explain import DEFAULT_METHOD, METHODS
    from cxr_core.models import ARCHITECTURES, default_cam_layer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="tf_efficientnet_lite0", help="an architecture, or 'all'")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    archs = ARCHITECTURES if args.arch == "all" else (args.arch,)
    print(f"# CAM cost vs forward, CPU, batch 1, {args.size} px, {args.threads} thread(s), median of {args.runs} runs")
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(f"# each method at its default layer; page = {DEFAULT_METHOD} from the kept layer output; "
          f"lib-plain = pytorch-grad-cam's {DEFAULT_METHOD} used plainly")
    cols = [*METHODS, "page", "lib-plain"]
    print(f"{'architecture':24s} {'forward ms':>10s} " + " ".join(f"{c + ' ms':>13s} {'ratio':>6s}" for c in cols))
    for arch in archs:
        m = bench_arch(arch, args.size, args.runs, args.warmup)
        f = m["forward"]
        print(f"{arch:24s} {f * 1e3:10.1f} " + " ".join(f"{m[c] * 1e3:13.1f} {m[c] / f:6.2f}" for c in cols), flush=True)
        print(f"{'':24s} layers: " + ", ".join(f"{k} {default_cam_layer(arch, k) or 'final stage'}" for k in METHODS))


if __name__ == "__main__":
    main()
