"""Ensembles of the lever screen's models (issue 14), from ``python -m bench.recipes --json FILE``.

    python -m bench.ensembles registry-research/levers.jsonl [--json registry-research/ensembles.jsonl]

For the binary task, every pair of result lines (seeds, sizes, backbones) is averaged, and each binary
model is averaged with each 3-class model's P(pneumonia) = P(bacteria) + P(virus); the 3-class task
averages pairs of 3-class models. Seed groups (every tail seed of one recipe, and those seeds' binary and
3-class models together) are always scored. Printed: validation and test AUROC / accuracy plain and with
TTA, the test sensitivity / specificity at the validation Youden and sensitivity >= 0.95 thresholds, and
the Predict-page cost in forward passes (members x views). Ranked by the validation figure: the test
columns choose nothing. ``--json`` writes the seed groups and the top of each ranking; ``--record`` appends
them to the committed docs/results/ensembles.jsonl that ``python -m train.results`` reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

import numpy as np


def _load(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in open(path) if line.strip()]


def _name(r: dict[str, Any], seed: bool = True) -> str:
    return (f"{r['arch'].replace('tf_efficientnet_', '')}-{r['size']}-v{r['views']}-c{r['cut']}"
            + (f"-s{r.get('seed', 0)}" if seed else "")
            + ("-strong" if r.get("strong_augment") else "") + ("-clahe" if r.get("clahe") else "")
            + ("-letters" if r.get("mask_letters") else "") + (f"-border{r['mask_border']:g}" if r.get("mask_border") else "")
            + ("-histmatch" if r.get("hist_ref") else "")
            + (f"-crop{r['crop']}" if r.get("crop", 1.0) != 1.0 else ""))


def _pneu(r: dict[str, Any], key: str) -> np.ndarray:
    p = np.asarray(r["probs"][key])
    return p[:, 1] if p.shape[1] == 2 else p[:, 1:].sum(1)


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from cxr_core.calibration import fixed_sensitivity_threshold
    from cxr_core.data import read_dataset, with_validation_split
    from cxr_core.metrics import youden_threshold

    ap = argparse.ArgumentParser(prog="python -m bench.ensembles", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    ap.add_argument("--data", default="../shared/data/kermany-224")
    ap.add_argument("--tta", type=int, default=4, help="TTA views; result lines without them are left out")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", default=None, help="write the seed groups and the top --json-top of each ranking here")
    ap.add_argument("--json-top", type=int, default=3)
    ap.add_argument("--record", default=None, help="append the same lines to this committed file (docs/results/ensembles.jsonl)")
    ap.add_argument("--diagnose", action="store_true",
                    help="per result line: median P(pneumonia) of each class on validation and test, and the test-oracle "
                         "threshold's accuracy and specificity at 93%% sensitivity (a diagnostic of the shift, never a choice)")
    ns = ap.parse_args(argv)
    tta = ns.tta
    rows = [r for r in _load(ns.jsonl) if f"val_tta{tta}:probs" in r["probs"] and r.get("split_seed", 0) == 0]
    ds = with_validation_split(read_dataset(ns.data), 0.1, 0)
    y = {(t, s): np.array([x.target(t) for x in ds.split(s)]) for t in ("binary", "multiclass") for s in ("val", "test")}
    bins = [r for r in rows if r["task"] == "binary"]
    mults = [r for r in rows if r["task"] == "multiclass"]
    if ns.diagnose:
        yv, yt = y["binary", "val"], y["binary", "test"]
        print("shift diagnostic (test-oracle figures are NOT a model choice: they bound what any validation-chosen threshold can reach)")
        for r in rows:
            for suffix in ("", f"_tta{tta}"):
                pv, pt = _pneu(r, f"val{suffix}:probs"), _pneu(r, f"test{suffix}:probs")
                accs = [float(((pt >= t) == yt).mean()) for t in np.unique(pt)]
                t93 = np.sort(pt[yt == 1])[int(np.floor(0.07 * (yt == 1).sum()))]
                print(f"  {r['task']:<10} {_name(r) + suffix:<34} median P(pneumonia): normals val {np.median(pv[yv == 0]):.3f} "
                      f"test {np.median(pt[yt == 0]):.3f}, pneumonias val {np.median(pv[yv == 1]):.3f} test {np.median(pt[yt == 1]):.3f}; "
                      f"test-oracle accuracy {max(accs):.3f}, specificity at 93% sensitivity {(pt[yt == 0] < t93).mean():.3f}")

    def score(members: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for suffix, tag in (("", ""), (f"_tta{tta}", "_tta")):
            pv = np.mean([_pneu(r, f"val{suffix}:probs") for r in members], 0)
            pt = np.mean([_pneu(r, f"test{suffix}:probs") for r in members], 0)
            yv, yt = (y["binary", "val"]), (y["binary", "test"])
            out[f"val_auroc{tag}"] = roc_auc_score(yv, pv)
            out[f"test_auroc{tag}"] = roc_auc_score(yt, pt)
            out[f"test_acc{tag}"] = float(((pt >= 0.5) == yt).mean())
            for tname, thr in (("youden", youden_threshold(yv, pv)), ("sens95", fixed_sensitivity_threshold(yv, pv, 0.95))):
                out[f"test_acc_{tname}{tag}"] = float(((pt >= thr) == yt).mean())
                out[f"sens_{tname}{tag}"] = float((pt[yt == 1] >= thr).mean())
                out[f"spec_{tname}{tag}"] = float((pt[yt == 0] < thr).mean())
        return out

    def mscore(members: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for suffix, tag in (("", ""), (f"_tta{tta}", "_tta")):
            pv = np.mean([np.asarray(r["probs"][f"val{suffix}:probs"]) for r in members], 0)
            pt = np.mean([np.asarray(r["probs"][f"test{suffix}:probs"]) for r in members], 0)
            yv, yt = y["multiclass", "val"], y["multiclass", "test"]
            out[f"val_acc{tag}"] = float((pv.argmax(1) == yv).mean())
            out[f"test_acc{tag}"] = float((pt.argmax(1) == yt).mean())
            out[f"recall{tag}"] = [float((pt.argmax(1)[yt == c] == c).mean()) for c in range(3)]
        return out

    # Seed groups: every tail seed of one recipe; and those binary seeds with the same recipe's 3-class seeds.
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        groups.setdefault(_name(r, seed=False), {}).setdefault(r["task"], []).append(r)
    fixed: list[tuple[str, str, list[dict[str, Any]]]] = []
    for g, by_task in groups.items():
        b, m = by_task.get("binary", []), by_task.get("multiclass", [])
        if len(b) >= 2:
            fixed.append(("binary", f"{g} seeds {','.join(str(r.get('seed', 0)) for r in b)}", b))
        if len(m) >= 2:
            fixed.append(("multiclass", f"{g} seeds {','.join(str(r.get('seed', 0)) for r in m)}", m))
        if b and m:
            seeds = sorted({r.get("seed", 0) for r in b} & {r.get("seed", 0) for r in m})
            for s in seeds[:1]:
                pair = [r for r in b + m if r.get("seed", 0) == s]
                fixed.append(("binary", f"{g}-s{s} binary + 3-class P(pneumonia)", pair))
            if len(seeds) >= 2:
                fixed.append(("binary", f"{g} seeds {','.join(map(str, seeds))}: binary + 3-class P(pneumonia)",
                              [r for r in b + m if r.get("seed", 0) in seeds]))

    cands: list[tuple[str, list[dict[str, Any]]]] = [(_name(r), [r]) for r in bins]
    cands += [(f"{_name(a)} + {_name(b)}", [a, b]) for a, b in itertools.combinations(bins, 2)]
    cands += [(f"{_name(a)} + 3-class {_name(b)}", [a, b]) for a in bins for b in mults]
    cands += [(f"3-class {_name(b)} (P(pneumonia))", [b]) for b in mults]
    scored = sorted(((n, m, score(m)) for n, m in cands), key=lambda t: (-t[2]["val_auroc"], len(t[1])))

    def line(n: str, m: list[dict[str, Any]], s: dict[str, Any]) -> str:
        return (f"  {n:<70} cost {len(m)}  val AUROC {s['val_auroc']:.4f}/{s['val_auroc_tta']:.4f}  "
                f"test AUROC {s['test_auroc']:.4f}/{s['test_auroc_tta']:.4f}  acc@0.5 {s['test_acc']:.4f}/{s['test_acc_tta']:.4f}  "
                f"@Youden(val) acc {s['test_acc_youden']:.4f} sens {s['sens_youden']:.3f} spec {s['spec_youden']:.3f}  "
                f"@sens95(val) acc {s['test_acc_sens95']:.4f} sens {s['sens_sens95']:.3f} spec {s['spec_sens95']:.3f}")

    out: list[dict[str, Any]] = []
    print("binary seed groups")
    for task, n, m in fixed:
        if task == "binary":
            s = score(m)
            print(line(n, m, s))
            out.append({"task": "binary", "name": n, "passes": len(m), "tta": tta, **s})
    print(f"binary: ranked by validation AUROC (plain); cost = forward passes per upload (x{tta} with TTA)")
    for i, (n, m, s) in enumerate(scored[: ns.top]):
        print(line(n, m, s))
        if i < ns.json_top:
            out.append({"task": "binary", "name": f"{n} (validation rank {i + 1})", "passes": len(m), "tta": tta, **s})

    def mline(n: str, m: list[dict[str, Any]], s: dict[str, Any]) -> str:
        return (f"  {n:<70} cost {len(m)}  val acc {s['val_acc']:.4f}/{s['val_acc_tta']:.4f}  test acc {s['test_acc']:.4f}/"
                f"{s['test_acc_tta']:.4f}  recall n/b/v {'/'.join(f'{v:.3f}' for v in s['recall'])} "
                f"(TTA {'/'.join(f'{v:.3f}' for v in s['recall_tta'])})")

    print("3-class seed groups")
    for task, n, m in fixed:
        if task == "multiclass":
            s = mscore(m)
            print(mline(n, m, s))
            out.append({"task": "multiclass", "name": n, "passes": len(m), "tta": tta, **s})
    mc = [(_name(r), [r]) for r in mults] + [(f"{_name(a)} + {_name(b)}", [a, b]) for a, b in itertools.combinations(mults, 2)]
    print("3-class: ranked by validation accuracy (plain)")
    for i, (n, m, s) in enumerate(sorted(((n, m, mscore(m)) for n, m in mc), key=lambda t: (-t[2]["val_acc"], len(t[1])))[: ns.top]):
        print(mline(n, m, s))
        if i < ns.json_top:
            out.append({"task": "multiclass", "name": f"{n} (validation rank {i + 1})", "passes": len(m), "tta": tta, **s})
    if ns.json:
        with open(ns.json, "w") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in out)
    if ns.record:
        with open(ns.record, "a") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
