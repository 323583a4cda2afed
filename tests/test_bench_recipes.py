"""bench.recipes end to end on a tiny synthetic set: the default stage-5 cache and the stage-4 cache (freeze 4)."""

from __future__ import annotations

import json

import pytest

from bench import recipes
from cxr_core.synthetic import SyntheticSpec, write_dataset


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes") / "data"
    return write_dataset(root, SyntheticSpec(n_per_class={"train": 8, "val": 3, "test": 3}, size=96, seed=3))


def _run(data, tmp_path, *extra):
    out = tmp_path / "r.jsonl"
    args = ["--data", str(data), "--size", "64", "--views", "2", "--tta", "2", "--epochs", "1", "--batch-size", "8",
            "--tasks", "binary", "--cache", str(tmp_path / "cache"), "--record", str(out), *extra]
    assert recipes.main(args) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_freeze_4_trains_stage_4_on_its_own_cache(tiny_set, tmp_path):
    rows = _run(tiny_set, tmp_path, "--cache-cut", "4", "--cuts", "4", "5")
    assert [(r["cut"], r["cache_cut"]) for r in rows] == [(4, 4), (5, 4)]
    for r in rows:
        assert 0.0 <= r["test"]["auroc"] <= 1.0 and 0.0 <= r["lung_mass"] <= 1.0
    # the stage-4 cache is keyed apart from the default one: a default run writes a second set of maps
    n4 = len(list((tmp_path / "cache").glob("s16-*.safetensors")))
    _run(tiny_set, tmp_path, "--cuts", "5")
    assert len(list((tmp_path / "cache").glob("s16-*.safetensors"))) == 2 * n4


def test_a_cut_below_the_cache_is_refused(tiny_set, tmp_path):
    with pytest.raises(SystemExit):
        recipes.main(["--data", str(tiny_set), "--cuts", "4", "--cache", str(tmp_path)])
