"""train.results recovers the lever and ensemble rows printed in an earlier RESULTS.md (their JSON lines lost)."""

from __future__ import annotations

import json

import pytest

from train.results import ensemble_table, lever_table, main, recover_ensembles, recover_levers

CMD = ("python -m bench.recipes --data ../shared/data/kermany-224 --arch tf_efficientnet_lite0 --size 160 --views 2 "
       "--tta 4 --cuts 6 --tail-seeds 0 1 --tasks binary multiclass --epochs 8 --threads 1 --json x.jsonl")
LEVERS = [
    "| lite0 160 px · freeze 7 · 2 views · seed 0 | binary | 11.8 | 0.9985 | 86.5% / 87.8% | 0.9478 / 0.9594 | "
    "97.9% / 67.5% @0.5; 99.5% / 48.7% @Youden(val) | 0.078 → 0.071 | 47.5% / 59.9% |",
    "| lite0 160 px · freeze 7 · 1 views · CLAHE · crop 0.8 · seed 0 | multiclass | 1.2 | 78.3% | 77.4% / 77.4% | "
    "0.9338 / 0.9338 | 61.1% / 88.8% / 84.5% | 0.064 → 0.047 | 78.8% / 90.8% |",
    "| lite0 160 px · freeze 6 · 2 views · seed 1 | binary | 3.1 | 0.9991 | 83.7% / 84.9% | 0.9214 / 0.9419 | "
    "99.7% / 56.8% @0.5; 99.7% / 52.1% @Youden(val) | 0.063 → 0.127 | 38.8% / 49.8% |",
]
ENSEMBLES = [
    "| lite0-160-v2-c7 seeds 0,1,2 | binary | 3 (12 with TTA×4) | 0.9984 / 0.9984 | 0.9505 / 0.9616 | 87.0% / 87.8% | "
    "81.6% (99.7% / 51.3%); 88.5% (97.9% / 72.6%) |",
    "| lite0-160-v2-c6 seeds 0,1,2 | multiclass | 3 (12 with TTA×4) | 80.0% / 81.3% | — | 76.4% / 78.4% | "
    "recall n/b/v 56.0% / 94.2% / 79.7% |",
]


def _doc() -> str:
    head = "| lever | task | m | v | a | u | s | e | l |\n|---|---|---:|---:|---:|---:|---|---|---|\n"
    ehead = "| ensemble | task | p | v | u | a | b |\n|---|---|---|---:|---:|---:|---|\n"
    return ("# Results\n\n## Lever screen (issue 14)\n\nintro\n\n" + head + "\n".join(LEVERS)
            + "\n\nCommands of the rows that record theirs (each appends one line per cut, tail seed and task):\n\n"
            + f"- `{CMD}`\n\n### Seed spread\n\n## Ensembles (issue 14)\n\nintro\n\n" + ehead + "\n".join(ENSEMBLES) + "\n\n## Next\n")


def _rows(table: list[str]) -> list[str]:
    return [line.replace(" †", "") for line in table if line.startswith("| lite0")]


def test_recovered_rows_print_as_before(tmp_path):
    levers = recover_levers(_doc(), "old doc")
    assert [r["task"] for r in levers] == ["binary", "multiclass", "binary"]
    assert levers[1]["clahe"] and levers[1]["crop"] == 0.8 and "seconds_train" not in levers[0]
    # Only the freeze-6 seed-1 row is one the listed command produces.
    assert [r.get("command") for r in levers] == [None, None, CMD]
    assert all(r["recovered"] == "old doc" for r in levers)
    path = tmp_path / "l.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in levers))
    table = lever_table(path)
    assert _rows(table) == LEVERS
    assert any(line.startswith("† 3 rows recovered from old doc") for line in table)
    ens = recover_ensembles(_doc(), "old doc")
    epath = tmp_path / "e.jsonl"
    epath.write_text("".join(json.dumps(e) + "\n" for e in ens))
    assert _rows(ensemble_table(epath)) == ENSEMBLES


def test_recover_from_writes_once(tmp_path):
    old = tmp_path / "OLD.md"
    old.write_text(_doc())
    levers, ens, out = tmp_path / "r" / "levers.jsonl", tmp_path / "r" / "ens.jsonl", tmp_path / "R.md"
    args = ["--root", str(tmp_path / "none"), "--out", str(out), "--levers", str(levers), "--ensembles", str(ens)]
    assert main([*args, "--recover-from", str(old), "--recover-label", "docs/RESULTS.md at abc"]) == 0
    assert len(levers.read_text().splitlines()) == 3 and len(ens.read_text().splitlines()) == 2
    text = out.read_text()
    assert LEVERS[0].replace(" | binary", " † | binary", 1) in text and "docs/RESULTS.md at abc" in text
    with pytest.raises(SystemExit, match="already holds lines"):
        main([*args, "--recover-from", str(old)])
