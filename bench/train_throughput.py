"""Training and inference throughput of a classifier on the cached uint8 path.

    python -m bench.train_throughput                       # lite0 at 224 and 160, whatever device is present
    python -m bench.train_throughput --sizes 224 --batch-size 64 --steps 20 --device cuda

Training: one optimizer step = uint8 batch from the device cache → GPU/CPU augmentation →
normalise → forward (bf16 autocast on CUDA) → backward → AdamW step, exactly the loop
``cxr_core.training`` runs. Inference: plain forward under ``inference_mode``. Random
uint8 images stand in for X-rays (throughput does not depend on the pixels). Prints the
device; figures are images per second after warm-up steps.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from cxr_core.config import AugmentConfig
from cxr_core.inference import pick_device
from cxr_core.models import ARCHITECTURES, create_model, num_outputs_for
from cxr_core.preprocess import augment, normalize, to_float
from cxr_core.training import _loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, size: int, batch_size: int, steps: int, warmup: int, device: torch.device, task: str = "binary") -> dict[str, float]:
    """Images/s of training steps and of inference for one (architecture, size)."""
    model, info = create_model(arch, num_outputs_for(task), pretrained=False)
    model = model.to(device).to(memory_format=torch.channels_last)
    from cxr_core.config import InputSpec

    spec = InputSpec(size=size, mean=info.mean, std=info.std)
    gen = torch.Generator(device=device).manual_seed(0)
    cache = torch.randint(0, 256, (batch_size * 4, size, size), dtype=torch.uint8, device=device, generator=gen)
    y = torch.randint(0, 2, (batch_size * 4,), device=device, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bf16 = device.type == "cuda"
    aug = AugmentConfig()

    def batch(i: int) -> torch.Tensor:
        idx = torch.arange(i % 4 * batch_size, (i % 4 + 1) * batch_size, device=device)
        return idx

    model.train()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        idx = batch(i)
        x = normalize(augment(to_float(cache[idx]), aug, gen), spec).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = _loss(logits, y[idx], task, None, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    train_ips = steps * batch_size / (time.perf_counter() - t0)

    model.eval()
    with torch.inference_mode():
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x = normalize(to_float(cache[batch(i)]), spec).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                model(x)
        _sync(device)
    infer_ips = steps * batch_size / (time.perf_counter() - t0)
    return {"train_images_per_s": train_ips, "infer_images_per_s": infer_ips}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHITECTURES, default="tf_efficientnet_lite0")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 160])
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ns = p.parse_args(argv)
    device = pick_device(ns.device)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    cuda = device.type == "cuda"
    bs = ns.batch_size or (256 if cuda else 32)
    steps = ns.steps or (30 if cuda else 5)
    warmup = ns.warmup if ns.warmup is not None else (5 if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    print(f"device: {name} · torch {torch.__version__} · {'bf16 autocast' if cuda else 'fp32'} · channels_last")
    print(f"{'arch':<24}{'size':>6}{'batch':>7}{'train img/s':>14}{'infer img/s':>14}")
    for size in ns.sizes:
        r = measure(ns.arch, size, bs, steps, warmup, device)
        print(f"{ns.arch:<24}{size:>6}{bs:>7}{r['train_images_per_s']:>14.1f}{r['infer_images_per_s']:>14.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
