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
