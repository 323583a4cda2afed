"""Recipe levers for the CPU classifiers (issue 14), measured on cached frozen-stage features.

    python -m bench.recipes --data ../shared/data/kermany-224 --arch tf_efficientnet_lite0 --size 224 \\
        --views 4 --cuts 6 7 --tasks binary multiclass --epochs 8 --threads 1

One pass of the frozen stem and stages 0-4 (the stride-16 map, what HiResCAM explains) per image
and view is cached on disk (``--cache``, safetensors, keyed by every input choice); every recipe
that freezes at least five stages then trains only its tail on those maps, the way
``train_classifier`` trains it (AdamW, cosine with warm-up, class weights, label smoothing, the epoch
chosen on the patient-level validation split by AUROC / accuracy with log-loss ties). Printed per
(cut, task): validation and test figures plain and with TTA, the temperature fitted on validation
and the test ECE before/after it, the validation-chosen thresholds (Youden, sensitivity >= 0.95),
the lung focus of HiResCAM at the stride-16 map on the official test films, and seconds. With
``--probe``, a logistic-regression screen on the pooled features of the frozen network too.
``--json`` appends one line per result to a file (with the per-image probabilities ``bench.ensembles`` needs: keep it
under the git-ignored registry-research/); ``--record`` appends the same line without them to a committed file
(docs/results/levers.jsonl, what ``python -m train.results`` builds the lever screen from). The test split is never
used for a choice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: The stride-16 map (HiResCAM's default layer) is the output of the first five stages.
CAM_CUT = 5


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def decoded(data: str, spec: Any, seed: int, val_fraction: float, cache: Path) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """uint8 (N, S, S) per split, prepared with ``spec``, and the samples; cached under ``cache``."""
    from cxr_core.data import load_images, read_dataset, with_validation_split
    from cxr_core.preprocess import prepare

    ds = with_validation_split(read_dataset(data), val_fraction, seed)
    samples = {s: ds.split(s) for s in ("train", "val", "test")}
    key = hashlib.sha256(json.dumps([spec.to_dict(), ds.fingerprint(), seed, val_fraction,
                                     [x.path for s in samples.values() for x in s]]).encode()).hexdigest()[:16]
    path = cache / f"decoded-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {s: z[s] for s in samples}, samples
    arrays = {s: load_images(ds, v, lambda g: prepare(g, spec), workers=2) for s, v in samples.items()}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays, samples


@torch.no_grad()
def stride16_maps(arch: str, spec: Any, arrays: dict[str, np.ndarray], views: int, tta: int, seed: int,
                  augment_cfg: Any, cache: Path, tag: str, cache_cut: int = CAM_CUT) -> dict[str, torch.Tensor]:
    """Frozen stem + stages 0..cache_cut-1 outputs (N, V, C, H, W), fp16 (both 4 and 5 end at stride 16); train
    gets ``views`` views (view 0 plain, the others augmented exactly as ``train_classifier`` draws them), val/test
    the first ``tta`` TTA views."""
    from safetensors.torch import load_file, save_file

    from cxr_core.models import create_model
    from cxr_core.preprocess import augment, normalize, to_float, tta_views
    from cxr_core.training import split_model

    out: dict[str, torch.Tensor] = {}
    model, _ = create_model(arch, 1, pretrained=True)
    model = model.eval().to(memory_format=torch.channels_last)
    trunk, _ = split_model(model, arch, cache_cut)
    for split, arr in arrays.items():
        n_views = views if split == "train" else tta
        # the default cut stays out of the key so the maps cached before --cache-cut existed are still found
        extra = [] if cache_cut == CAM_CUT else [cache_cut]
        key = hashlib.sha256(json.dumps([tag, split, n_views, augment_cfg.to_dict(), seed, torch.__version__, *extra]).encode()).hexdigest()[:16]
        path = cache / f"s16-{key}.safetensors"
        if path.is_file():
            out[split] = load_file(str(path))["maps"]
            _log(f"maps {split} from {path.name} {tuple(out[split].shape)}")
            continue
        gen = torch.Generator().manual_seed(seed)
        t0, parts = time.perf_counter(), []
        u8 = torch.from_numpy(arr)
        for start in range(0, len(arr), 16):  # small batches: faster on one CPU thread than 64
            x01 = to_float(u8[start : start + 16])
            if split == "train":
                xs = [x01] + [augment(x01, augment_cfg, gen) for _ in range(n_views - 1)]
            else:
                xs = tta_views(x01, n_views)
            parts.append(torch.stack([trunk(normalize(x, spec).contiguous(memory_format=torch.channels_last)).half() for x in xs], 1))
            if (start // 16) % 40 == 0:
                _log(f"maps {split} {start + len(x01)}/{len(arr)} ({time.perf_counter() - t0:.0f}s)")
        out[split] = torch.cat(parts)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"maps": out[split].contiguous()}, str(tmp))
        os.replace(tmp, path)
        _log(f"maps {split} {tuple(out[split].shape)} in {time.perf_counter() - t0:.0f}s")
    return out


@torch.no_grad()
def advance(stages: torch.nn.Module, maps: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Run frozen ``stages`` over every view of cached maps: (N, V, C, H, W) → (N, V, C', H', W')."""
    n, v = maps.shape[:2]
    flat = maps.flatten(0, 1)
    outs = [stages(flat[i : i + batch].float().contiguous(memory_format=torch.channels_last)).half() for i in range(0, len(flat), batch)]
    y = torch.cat(outs)
    return y.view(n, v, *y.shape[1:])


_ADVANCED: dict[int, dict[str, torch.Tensor]] = {}


def advanced(rest: torch.nn.Module, maps: dict[str, torch.Tensor], cut: int, args: Any) -> dict[str, torch.Tensor]:
    """The maps run through the frozen stages cache_cut..cut-1, once per process and cut (kept on disk too)."""
    from safetensors.torch import load_file, save_file

    if cut == args.cache_cut:
        return maps
    if cut in _ADVANCED:
        return _ADVANCED[cut]
    out = {}
    for s, m in maps.items():
        key = hashlib.sha256(json.dumps([args.cache_tag, s, list(m.shape), cut]).encode()).hexdigest()[:16]
        path = Path(args.cache) / f"adv-{key}.safetensors"
        if path.is_file():
            out[s] = load_file(str(path))["maps"]
            continue
        out[s] = advance(rest, m)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"maps": out[s].contiguous()}, str(tmp))
        os.replace(tmp, path)
    _log(f"stages {args.cache_cut}..{cut - 1} applied: {[tuple(v.shape) for v in out.values()]}")
    _ADVANCED[cut] = out
    return out


# --- calibration and operating points ---------------------------------------------------------


def fixed_sensitivity_threshold(y: np.ndarray, p: np.ndarray, sensitivity: float = 0.95) -> float:
    from cxr_core.calibration import fixed_sensitivity_threshold as f

    return f(y, p, sensitivity)


def hirescam(frozen_rest: torch.nn.Module, tail: torch.nn.Module, maps: torch.Tensor, task: str, size: int) -> np.ndarray:
    """HiResCAM at the stride-16 map for the predicted class (binary: the decision's sign), upsampled to ``size``."""
    cams = []
    tail.eval()
    for i in range(0, len(maps), 32):
        a = maps[i : i + 32].float().clone().requires_grad_(True)
        logits = tail(frozen_rest(a))
        if task == "binary":
            z = logits[:, 0]
            target = torch.where(z >= 0, z, -z).sum()
        else:
            target = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(target, a)
        cam = F.relu((a * g).sum(1, keepdim=True))
        cams.append(F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0].detach())
    return torch.cat(cams).numpy()


# --- tail training ----------------------------------------------------------------------------


def train_tail(task: str, arch: str, cut: int, maps: dict[str, torch.Tensor], targets: dict[str, np.ndarray], args: Any,
               tail_seed: int | None = None) -> dict[str, Any]:
    """Train stages ``cut``.. and the head on the stride-16 maps (frozen stages 5..cut-1 applied first); figures.

    ``tail_seed`` (default ``args.seed``) seeds only the tail's head initialisation, batch order and view draws: the
    validation split and the cached maps stay those of ``args.seed``, so seed repeats cost no backbone pass."""
    from cxr_core.calibration import fit_temperature
    from cxr_core.config import TASK_CLASSES
    from cxr_core.lung_focus import LUNG_BOX, box_on_input, focus_films, lung_focus
    from cxr_core.models import create_model, logits_to_probs, num_outputs_for
    from cxr_core.training import (
        _loss,
        _selection_key,
        class_weights,
        epoch_indices,
        lr_factor,
        report_metrics,
        split_model,
    )

    tail_seed = args.seed if tail_seed is None else tail_seed
    torch.manual_seed(tail_seed)
    classes = TASK_CLASSES[task]
    model, _ = create_model(arch, num_outputs_for(task), pretrained=True)
    model = model.to(memory_format=torch.channels_last)
    _, tail = split_model(model, arch, cut)
    from cxr_core.models import model_stages

    _, stages, _ = model_stages(model, arch)
    rest = torch.nn.Sequential(*stages[args.cache_cut:cut]).eval()
    for p in rest.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    feats = advanced(rest, maps, cut, args)
    t_adv = time.perf_counter() - t0
    params = [p for p in tail.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    y = targets["train"]
    spe = math.ceil(len(y) / args.batch_size)
    total, warm = spe * args.epochs, int(0.5 * spe)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup=warm, total=total, steps_per_epoch=spe, schedule="cosine", gamma=0.9))
    weights = class_weights(y, len(classes))
    yt = torch.from_numpy(y)
    rng = np.random.default_rng(tail_seed)
    gen = torch.Generator().manual_seed(tail_seed)

    @torch.no_grad()
    def logits_of(s: str, n_views: int) -> np.ndarray:
        tail.eval()
        out = []
        f = feats[s]
        for i in range(0, len(f), 256):
            fb = f[i : i + 256, :n_views].float()
            out.append(torch.stack([tail(fb[:, v].contiguous(memory_format=torch.channels_last)) for v in range(n_views)], 1))
        return torch.cat(out).numpy()  # (N, V, outputs)

    def probs_of(lg: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        t = torch.from_numpy(lg) / temperature
        return torch.stack([logits_to_probs(t[:, v], task) for v in range(t.shape[1])], 1).mean(1).numpy()

    best, best_state, best_epoch, history = (-math.inf, -math.inf), None, 0, []
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        tail.train()
        idx_all = epoch_indices(y, "class-weights", rng)
        for b in range(0, len(idx_all), args.batch_size):
            idx = torch.from_numpy(idx_all[b : b + args.batch_size])
            view = torch.randint(0, feats["train"].shape[1], (len(idx),), generator=gen)
            x = feats["train"][idx, view].float().contiguous(memory_format=torch.channels_last)
            loss = _loss(tail(x), yt[idx], task, weights, args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        pv = probs_of(logits_of("val", 1))
        vm = report_metrics(task, targets["val"], pv, classes)
        key = _selection_key(task, vm, targets["val"], pv)
        history.append({"epoch": epoch + 1, "val_score": key[0], "val_log_loss": -key[1]})
        _log(f"  {task} cut {cut} epoch {epoch + 1}: val score {key[0]:.4f} log-loss {-key[1]:.4f}")
        if key > best:
            best, best_epoch = key, epoch + 1
            best_state = {k: v.detach().clone() for k, v in tail.state_dict().items()}
    t_train = time.perf_counter() - t_train
    tail.load_state_dict(best_state)
    lg = {s: logits_of(s, args.tta) for s in ("val", "test")}
    res: dict[str, Any] = {"task": task, "arch": arch, "cut": cut, "best_epoch": best_epoch, "history": history,
                           "seconds_advance": t_adv, "seconds_train": t_train}
    temp = fit_temperature(lg["val"][:, 0], targets["val"], task)
    res["temperature"] = temp
    for s in ("val", "test"):
        for n, name in ((1, s), (args.tta, f"{s}_tta{args.tta}")):
            p = probs_of(lg[s][:, :n])
            m = report_metrics(task, targets[s], p, classes)
            m["ece_calibrated"] = report_metrics(task, targets[s], probs_of(lg[s][:, :n], temp), classes)["ece"]
            res[name] = m
            res[name + ":probs"] = p
    if task == "binary":
        for suffix in ("", f"_tta{args.tta}"):
            pv = res[f"val{suffix}:probs"][:, 1]
            thr = {"youden_val": _youden(targets["val"], pv), "sens95_val": fixed_sensitivity_threshold(targets["val"], pv, 0.95)}
            for tname, t in thr.items():
                res[f"test{suffix}@{tname}"] = report_metrics(task, targets["test"], res[f"test{suffix}:probs"], classes, t)
                res[f"test{suffix}@{tname}"]["threshold"] = t
    cams = hirescam(rest, tail, maps["test"][:, 0], task, args.size)
    box = box_on_input(LUNG_BOX, args.crop_fraction)
    res["lung_peak"], res["lung_mass"] = lung_focus(cams, box)  # all 624 official test films
    res["lung_peak80"], res["lung_mass80"] = lung_focus(cams[focus_films(len(cams), 80)], box)  # the 80 the cards use
    if args.save_cams:
        np.save(Path(args.cache) / f"cams-{task}-{arch}-{args.size}-c{cut}-{args.tag}.npy", cams.astype(np.float16))
    return res


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    from cxr_core.metrics import youden_threshold

    return youden_threshold(y, p)


def probe(maps: dict[str, torch.Tensor], arch: str, targets: dict[str, dict[str, np.ndarray]], cache_cut: int = CAM_CUT) -> list[str]:
    """Logistic regression on pooled frozen features (stage 6 + head), C chosen on validation AUROC / accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from cxr_core.models import create_model, model_stages

    model, _ = create_model(arch, 1, pretrained=True)
    _, stages, post = model_stages(model.eval(), arch)
    rest = torch.nn.Sequential(*stages[cache_cut:], *post).eval()

    @torch.no_grad()
    def pooled(m: torch.Tensor) -> np.ndarray:
        f = advance(rest, m[:, :1])[:, 0].float()
        return f.mean((2, 3)).numpy()

    X = {s: pooled(m) for s, m in maps.items()}
    mu, sd = X["train"].mean(0), X["train"].std(0) + 1e-6
    X = {s: (v - mu) / sd for s, v in X.items()}
    lines = []
    for task, t in targets.items():
        best = None
        for c in (0.003, 0.03):
            clf = LogisticRegression(C=c, max_iter=300, class_weight="balanced").fit(X["train"], t["train"])
            pv = clf.predict_proba(X["val"])
            score = roc_auc_score(t["val"], pv[:, 1]) if task == "binary" else float((pv.argmax(1) == t["val"]).mean())
            if best is None or score > best[0]:
                best = (score, c, clf)
        score, c, clf = best
        pt = clf.predict_proba(X["test"])
        if task == "binary":
            lines.append(f"probe {task}: C={c} val AUROC {score:.4f} test AUROC {roc_auc_score(t['test'], pt[:, 1]):.4f} "
                         f"test acc {(pt.argmax(1) == t['test']).mean():.4f}")
        else:
            lines.append(f"probe {task}: C={c} val acc {score:.4f} test acc {(pt.argmax(1) == t['test']).mean():.4f}")
    return lines


def shift_probe(maps: dict[str, torch.Tensor], arrays: dict[str, np.ndarray], binary: dict[str, np.ndarray]) -> list[str]:
    """How far the official test films sit from the training films, per class (no model choice rests on it).

    Domain AUROC: 5-fold cross-validated logistic regression telling films of ``train/`` (the train and validation
    splits) from official test films of the same class, on the pooled frozen stride-16 features (mean and standard
    deviation over space, plain view). 0.5 = indistinguishable. Also the films' mean grey level and contrast."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    def pooled(m: torch.Tensor) -> np.ndarray:
        f = m[:, 0].float()
        return torch.cat([f.mean((2, 3)), f.std((2, 3))], 1).numpy()

    feats = {s: pooled(m) for s, m in maps.items()}
    lines = []
    for c, name in ((0, "normal"), (1, "pneumonia")):
        a = np.concatenate([feats[s][binary[s] == c] for s in ("train", "val")])
        b = feats["test"][binary["test"] == c]
        X, y = np.concatenate([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))]
        X = (X - X.mean(0)) / (X.std(0) + 1e-6)
        p = cross_val_predict(LogisticRegression(C=0.01, max_iter=500, class_weight="balanced"), X, y, cv=5, method="predict_proba")[:, 1]
        img_a = np.concatenate([arrays[s][binary[s] == c] for s in ("train", "val")]).astype(np.float32)
        img_b = arrays["test"][binary["test"] == c].astype(np.float32)
        stat = {k: (v.mean((1, 2)), v.std((1, 2))) for k, v in (("train/", img_a), ("test/", img_b))}
        lines.append(f"shift {name}: train/ {len(a)} vs test {len(b)} films: domain AUROC {roc_auc_score(y, p):.3f}; "
                     + "; ".join(f"{k} grey {m.mean():.1f}±{m.std():.1f} contrast {sd.mean():.1f}±{sd.std():.1f}" for k, (m, sd) in stat.items()))
    return lines


def with_histogram_reference(args: Any, spec: Any, cache: Path) -> Any:
    """``spec`` with ``hist_ref``: the quantiles of the mean grey histogram of the train split's films, prepared with
    ``spec`` (masking included, histogram matching not yet), so validation and test films never shape it."""
    from dataclasses import replace

    from cxr_core.imaging import histogram_reference

    arrays, _ = decoded(args.data, spec, args.seed, 0.1, cache)
    ref = histogram_reference(arrays["train"])
    _log(f"histogram reference (train split, {len(arrays['train'])} films): {ref}")
    return replace(spec, hist_ref=ref)


def summary(r: dict[str, Any], tta: int) -> str:
    def b(m: dict[str, Any]) -> str:
        if r["task"] == "binary":
            return (f"acc {m['accuracy']:.4f} AUROC {m['auroc']:.4f} sens {m['sensitivity']:.3f} spec {m['specificity']:.3f} "
                    f"ECE {m['ece']:.3f}->{m.get('ece_calibrated', float('nan')):.3f}")
        pca = m["per_class_accuracy"]
        return (f"acc {m['accuracy']:.4f} AUROC {m['auroc_ovr']:.4f} n/b/v {pca['normal']:.3f}/{pca['bacteria']:.3f}/{pca['virus']:.3f} "
                f"ECE {m['ece']:.3f}->{m.get('ece_calibrated', float('nan')):.3f}")

    lines = [f"== {r['task']} {r['arch']} {r['size']}px views {r['views']} cut {r['cut']} epoch {r['best_epoch']} "
             f"T={r['temperature']:.3f} train {r['seconds_train']:.0f}s lung peak {r['lung_peak']:.3f} mass {r['lung_mass']:.3f} "
             f"(80 films: {r['lung_peak80']:.3f} / {r['lung_mass80']:.3f})"]
    for k in ("val", f"val_tta{tta}", "test", f"test_tta{tta}"):
        lines.append(f"   {k:>12}: {b(r[k])}")
    for k in sorted(x for x in r if "@" in x):
        m = r[k]
        lines.append(f"   {k:>24}: thr {m['threshold']:.3f} acc {m['accuracy']:.4f} sens {m['sensitivity']:.3f} spec {m['specificity']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cxr_core.config import AugmentConfig, InputSpec
    from cxr_core.models import create_model

    ap = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--clahe", action="store_true")
    ap.add_argument("--crop-fraction", type=float, default=1.0)
    ap.add_argument("--mask-letters", action="store_true", help="paint burnt-in letters over (imaging.mask_letters)")
    ap.add_argument("--mask-border", type=float, default=0.0, help="replace this fraction of each border (imaging.mask_border)")
    ap.add_argument("--hist-match", action="store_true",
                    help="match each film's grey histogram to the mean histogram of the train split's films (after masking)")
    ap.add_argument("--views", type=int, default=2, help="cached training views (view 0 plain)")
    ap.add_argument("--tta", type=int, default=4)
    ap.add_argument("--strong-augment", action="store_true", help="rotate 12, shift 0.10, zoom 0.15, contrast/brightness 0.25")
    ap.add_argument("--cuts", type=int, nargs="*", default=[6], help="freeze_stages values to train tails for (>= --cache-cut)")
    ap.add_argument("--cache-cut", type=int, default=CAM_CUT, choices=(4, CAM_CUT),
                    help="frozen stages whose output is cached: 5 (default), or 4 to train stage 4 too (--cuts 4)")
    ap.add_argument("--tasks", nargs="*", default=["binary", "multiclass"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0, help="validation split, augmented views of the cache, and the tail's seed")
    ap.add_argument("--tail-seeds", type=int, nargs="*", default=None,
                    help="seed repeats of the tail only (same split and cached maps as --seed; default: --seed)")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--shift-probe", action="store_true", help="how far test films sit from train/ films, per class (see shift_probe)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="registry-research/_features")
    ap.add_argument("--json", default=None, help="append one JSON line per result here (with per-image probabilities)")
    ap.add_argument("--record", default=None,
                    help="append one JSON line per result, without per-image probabilities, here (docs/results/levers.jsonl)")
    ap.add_argument("--save-cams", action="store_true")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if min(args.cuts) < args.cache_cut:
        ap.error(f"--cuts {min(args.cuts)} needs --cache-cut {min(args.cuts)}: the cache holds stage {args.cache_cut - 1}'s output")
    command = " ".join(["python -m bench.recipes", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    _, info = create_model(args.arch, 1, pretrained=False)
    spec = InputSpec(size=args.size, mean=info.mean, std=info.std, crop_fraction=args.crop_fraction, clahe=args.clahe,
                     mask_letters=args.mask_letters, mask_border=args.mask_border)
    aug = AugmentConfig(rotate_deg=12, shift=0.10, zoom=0.15, contrast=0.25, brightness=0.2) if args.strong_augment else AugmentConfig()
    t0 = time.perf_counter()
    spec = with_histogram_reference(args, spec, cache) if args.hist_match else spec
    arrays, samples = decoded(args.data, spec, args.seed, 0.1, cache)
    _log(f"decoded {[a.shape for a in arrays.values()]} in {time.perf_counter() - t0:.0f}s")
    tag = json.dumps([args.arch, spec.to_dict(), [a.shape for a in arrays.values()]])
    args.cache_tag = json.dumps([tag, args.views, args.tta, args.strong_augment, args.seed]
                                + ([] if args.cache_cut == CAM_CUT else [args.cache_cut]))
    t1 = time.perf_counter()
    maps = stride16_maps(args.arch, spec, arrays, args.views, args.tta, args.seed, aug, cache, tag, args.cache_cut)
    t_maps = time.perf_counter() - t1
    targets = {task: {s: np.array([x.target(task) for x in v]) for s, v in samples.items()} for task in args.tasks}
    if args.probe:
        for line in probe(maps, args.arch, targets, args.cache_cut):
            _log(line)
    if args.shift_probe:
        for line in shift_probe(maps, arrays, {s: np.array([x.target("binary") for x in v]) for s, v in samples.items()}):
            _log(line)
    for cut, tail_seed, task in ((c, s, t) for c in args.cuts for s in (args.tail_seeds or [args.seed]) for t in args.tasks):
        r = train_tail(task, args.arch, cut, maps, targets[task], args, tail_seed)
        r.update(mask_letters=args.mask_letters, mask_border=args.mask_border, hist_ref=list(spec.hist_ref))
        r.update(size=args.size, clahe=args.clahe, crop=args.crop_fraction, views=args.views, strong_augment=args.strong_augment,
                 epochs=args.epochs, lr=args.lr, label_smoothing=args.label_smoothing, seconds_maps=t_maps, seed=tail_seed,
                 split_seed=args.seed, tta=args.tta, threads=args.threads, cache_cut=args.cache_cut, command=command)
        print(summary(r, args.tta), flush=True)
        keep = {k: v for k, v in r.items() if not k.endswith(":probs")}
        if args.json:
            probs = {k: v.tolist() for k, v in r.items() if k.endswith(":probs")}
            with open(args.json, "a") as fh:
                fh.write(json.dumps({**keep, "probs": probs}, default=float) + "\n")
        if args.record:
            with open(args.record, "a") as fh:
                fh.write(json.dumps(keep, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
