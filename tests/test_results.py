"""python -m train.results writes RESULTS.md from registry cards."""

from __future__ import annotations

import shutil

from cxr_core.registry import list_entries, update_card
from train.results import main


def test_results_markdown_from_several_roots(tiny_registry, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_registry, a)
    shutil.copytree(tiny_registry, b)
    statuses = list_entries(b)
    update_card(statuses[0].entry(), lambda c: c["dataset"].update(synthetic=True))
    with open(statuses[1].path / "weights.safetensors", "ab") as f:
        f.write(b"x")
    out = tmp_path / "docs" / "RESULTS.md"
    assert main(["--root", str(a), "--root", str(b), "--out", str(out)]) == 0
    text = out.read_text()
    assert f"--root {a} --root {b}" in text
    assert text.count("\n### ") == 3  # two from a, one usable from b
    assert text.count("SYNTHETIC demo data") == 1
    assert f"broken entry `{statuses[1].id}`" in text
    for s in list_entries(a):
        assert f"`{s.id}`" in text
    assert "python -m train.classifier --data" in text and "--size 96" in text
    assert "| plain @0.5 |" in text and "| TTA×2 @0.5 |" in text and "| plain @Youden(val) |" in text
    assert "| plain (argmax) |" in text and "## Summary (test split)" in text
    assert "device **cpu" in text
    assert "wrote" in capsys.readouterr().out


def test_absent_root_is_reported(tmp_path):
    out = tmp_path / "R.md"
    assert main(["--root", str(tmp_path / "nope"), "--out", str(out)]) == 0
    assert "(folder absent)" in out.read_text()


def _lever(task, seed, val, acc, spec_or_normal):
    m = {"accuracy": acc, "ece": 0.05, "ece_calibrated": 0.03}
    if task == "binary":
        m.update(auroc=val, sensitivity=0.99, specificity=spec_or_normal)
        v = {**m, "auroc": val}
    else:
        m.update(auroc_ovr=0.93, per_class_accuracy={"normal": spec_or_normal, "bacteria": 0.9, "virus": 0.8})
        v = {**m, "accuracy": val}
    return {"arch": "tf_efficientnet_lite0", "size": 160, "cut": 6, "views": 2, "seconds_train": 60, "lung_peak80": 0.5,
            "lung_mass80": 0.6, "seed": seed, "task": task, "val": v, "test": m, "test_tta4": m,
            "command": "python -m bench.recipes --cuts 6 --tail-seeds 0 1"}


def test_seed_spread_ensembles_and_kept_notes(tmp_path):
    import json

    levers = tmp_path / "levers.jsonl"
    levers.write_text("".join(json.dumps(r) + "\n" for r in (
        _lever("binary", 0, 0.998, 0.87, 0.68), _lever("binary", 1, 0.996, 0.89, 0.72),
        _lever("multiclass", 0, 0.78, 0.75, 0.55), {**_lever("multiclass", 0, 0.79, 0.8, 0.6), "clahe": True})))
    ens = tmp_path / "ens.jsonl"
    b = {"val_auroc": 0.998, "val_auroc_tta": 0.999, "test_auroc": 0.95, "test_auroc_tta": 0.96, "test_acc": 0.88,
         "test_acc_tta": 0.89, "test_acc_youden": 0.85, "sens_youden": 0.99, "spec_youden": 0.6, "test_acc_sens95": 0.9,
         "sens_sens95": 0.97, "spec_sens95": 0.78}
    ens.write_text(json.dumps({"task": "binary", "name": "lite0-160-v2-c6 seeds 0,1", "passes": 2, "tta": 4, **b}) + "\n"
                   + json.dumps({"task": "multiclass", "name": "m", "passes": 3, "tta": 4, "val_acc": 0.8, "val_acc_tta": 0.81,
                                 "test_acc": 0.77, "test_acc_tta": 0.78, "recall": [0.6, 0.9, 0.8]}) + "\n")
    out = tmp_path / "R.md"
    out.write_text("# old\n\n<!-- notes: hand-written, kept by train.results -->\n## Ceiling\nmy words\n<!-- /notes -->\nold tail\n")
    assert main(["--root", str(tmp_path / "none"), "--out", str(out), "--levers", str(levers), "--ensembles", str(ens)]) == 0
    text = out.read_text()
    assert "### Seed spread" in text
    # Two binary seeds make one spread row (min – max); a single 3-class seed per lever makes none.
    assert "| lite0 160 px · freeze 6 · 2 views | binary | 0, 1 | 0.9960 – 0.9980 | 87.0% – 89.0% |" in text
    assert "| multiclass | 0, " not in text
    assert "- `python -m bench.recipes --cuts 6 --tail-seeds 0 1`" in text
    assert "## Ensembles" in text and "| lite0-160-v2-c6 seeds 0,1 | binary | 2 (8 with TTA×4) |" in text
    assert "recall n/b/v 60.0% / 90.0% / 80.0%" in text
    assert text.count("my words") == 1 and "old tail" not in text and "# old" not in text
    assert main(["--root", str(tmp_path / "none"), "--out", str(out)]) == 0  # the notes survive a second run
    assert out.read_text().count("my words") == 1
