"""DistributedDataParallel path: two gloo processes on CPU under torchrun write one entry with world size 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_torchrun_two_gloo_ranks_write_one_entry(synthetic_data, tmp_path):
    out = tmp_path / "reg"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()),
        "-m", "train.classifier", "--data", str(synthetic_data), "--task", "binary", "--out", str(out),
        "--size", "64", "--epochs", "2", "--batch-size", "5", "--tta", "1", "--device", "cpu",
        # 47 training images: an odd count, so the last global batch must be padded for both ranks to step.
        "--max-per-split", "47",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    entries = [d for d in out.iterdir() if not d.name.startswith((".", "_"))]
    assert len(entries) == 1, entries
    card = json.loads((entries[0] / "card.json").read_text())
    t = card["training"]
    assert t["world_size"] == 2 and t["epochs_run"] == 2
    assert card["dataset"]["used"]["train"] == 47
    # Both ranks stepped together: each epoch saw the padded 48 images, 24 per rank.
    assert [h["images"] for h in t["history"]] == [48, 48]
    assert t["images_per_second"] > 0 and "test" in card["metrics"]
