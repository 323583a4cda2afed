"""Ensembles of the lever screen's models (issue 14), from ``python -m bench.recipes --json FILE``.

    python -m bench.ensembles /tmp/r14_results.jsonl [--members 'l0-224*' ...]

For the binary task, every pair of result lines (seeds, sizes, backbones) is averaged, and each binary
model is averaged with each 3-class model's P(pneumonia) = P(bacteria) + P(virus); the 3-class task
averages pairs of 3-class models. Printed: validation and test AUROC / accuracy plain and with TTA, the
test sensitivity / specificity at the validation Youden threshold, and the Predict-page cost in forward
passes (members x views). Ranked by the validation figure: the test columns choose nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

import numpy as np


def _load(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in open(path) if line.strip()]


def _name(r: dict[str, Any]) -> str:
    return (f"{r['arch'].replace('tf_efficientnet_', '')}-{r['size']}-v{r['views']}-c{r['cut']}-s{r.get('seed', 0)}"
            + ("-strong" if r.get("strong_augment") else "") + ("-clahe" if r.get("clahe") else ""))


def _pneu(r: dict[str, Any], key: str) -> np.ndarray:
    p = np.asarray(r["probs"][key])
    return p[:, 1] if p.shape[1] == 2 else p[:, 1:].sum(1)


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from cxr_core.metrics import youden_threshold

    ap = argparse.ArgumentParser(prog="python -m bench.ensembles", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    ap.add_argument("--top", type=int, default=15)
    ns = ap.parse_args(argv)
    rows = _load(ns.jsonl)
    from cxr_core.data import read_dataset, with_validation_split

    ds = with_validation_split(read_dataset("../shared/data/kermany-224"), 0.1, 0)
    y = {(t, s): np.array([x.target(t) for x in ds.split(s)]) for t in ("binary", "multiclass") for s in ("val", "test")}
    bins = [r for r in rows if r["task"] == "binary"]
    mults = [r for r in rows if r["task"] == "multiclass"]
    tta = next(k.split("_tta")[1].split(":")[0] for k in rows[0]["probs"] if k.startswith("val_tta"))

    def score(members: list[dict[str, Any]]) -> dict[str, float]:
        out = {}
        for suffix in ("", f"_tta{tta}"):
            pv = np.mean([_pneu(r, f"val{suffix}:probs") for r in members], 0)
            pt = np.mean([_pneu(r, f"test{suffix}:probs") for r in members], 0)
            yv, yt = (y["binary", "val"]), (y["binary", "test"])
            thr = youden_threshold(yv, pv)
            out[f"val_auroc{suffix}"] = roc_auc_score(yv, pv)
            out[f"test_auroc{suffix}"] = roc_auc_score(yt, pt)
            out[f"test_acc{suffix}"] = float(((pt >= 0.5) == yt).mean())
            out[f"test_acc_youden{suffix}"] = float(((pt >= thr) == yt).mean())
            out[f"sens_youden{suffix}"] = float((pt[yt == 1] >= thr).mean())
            out[f"spec_youden{suffix}"] = float((pt[yt == 0] < thr).mean())
        return out

    cands: list[tuple[str, list[dict[str, Any]]]] = [(_name(r), [r]) for r in bins]
    cands += [(f"{_name(a)} + {_name(b)}", [a, b]) for a, b in itertools.combinations(bins, 2)]
    cands += [(f"{_name(a)} + 3-class {_name(b)}", [a, b]) for a in bins for b in mults]
    cands += [(f"3-class {_name(b)} (P(pneumonia))", [b]) for b in mults]
    scored = sorted(((n, m, score(m)) for n, m in cands), key=lambda t: -t[2]["val_auroc"])
    print(f"binary: ranked by validation AUROC (plain); cost = forward passes per upload (x{tta} with TTA)")
    for n, m, s in scored[: ns.top]:
        print(f"  {n:<70} cost {len(m)}  val AUROC {s['val_auroc']:.4f}/{s[f'val_auroc_tta{tta}']:.4f}  "
              f"test AUROC {s['test_auroc']:.4f}/{s[f'test_auroc_tta{tta}']:.4f}  acc@0.5 {s['test_acc']:.4f}/{s[f'test_acc_tta{tta}']:.4f}  "
              f"@Youden(val) acc {s['test_acc_youden']:.4f} sens {s['sens_youden']:.3f} spec {s['spec_youden']:.3f}")

    def mscore(members: list[dict[str, Any]]) -> dict[str, float]:
        out = {}
        for suffix in ("", f"_tta{tta}"):
            pv = np.mean([np.asarray(r["probs"][f"val{suffix}:probs"]) for r in members], 0)
            pt = np.mean([np.asarray(r["probs"][f"test{suffix}:probs"]) for r in members], 0)
            yv, yt = y["multiclass", "val"], y["multiclass", "test"]
            out[f"val_acc{suffix}"] = float((pv.argmax(1) == yv).mean())
            out[f"test_acc{suffix}"] = float((pt.argmax(1) == yt).mean())
            out[f"recall{suffix}"] = [float((pt.argmax(1)[yt == c] == c).mean()) for c in range(3)]
        return out

    mc = [(_name(r), [r]) for r in mults] + [(f"{_name(a)} + {_name(b)}", [a, b]) for a, b in itertools.combinations(mults, 2)]
    print("3-class: ranked by validation accuracy (plain)")
    for n, m, s in sorted(((n, m, mscore(m)) for n, m in mc), key=lambda t: -t[2]["val_acc"])[: ns.top]:
        print(f"  {n:<70} cost {len(m)}  val acc {s['val_acc']:.4f}/{s[f'val_acc_tta{tta}']:.4f}  test acc {s['test_acc']:.4f}/"
              f"{s[f'test_acc_tta{tta}']:.4f}  recall n/b/v {'/'.join(f'{v:.3f}' for v in s['recall'])} "
              f"(TTA {'/'.join(f'{v:.3f}' for v in s[f'recall_tta{tta}'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
