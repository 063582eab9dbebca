"""Distributed training on CPU: 2 processes, gloo, started like torchrun (127.0.0.1, a free port).

One pair of processes (``_distributed_worker.py``) runs every check, so the start-up is paid once:

- DDP with ``find_unused_parameters=False``: every variant, backbone + neck, 3 SGD steps on different data per
  rank; the replicas must end with identical weights (and must have trained);
- ``SyncBatchNorm.convert_sync_batchnorm`` replaces every BatchNorm and keeps eval outputs. Training-mode
  SyncBatchNorm runs on GPU-like devices only in torch (``ValueError`` on CPU), so on CPU the test checks the
  conversion and that limitation; where the forward works it checks the statistics are synchronized;
- FSDP2 (``fully_shard``): one step of ``fpn`` equals the same step without sharding.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

import fpn_zoo

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
WORKER = Path(__file__).with_name("_distributed_worker.py")
TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> List[Dict[str, Any]]:
    """Run the 2-rank job once; the results of rank 0 and rank 1."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    out_dir = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(WORLD_SIZE),
               OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(out_dir)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(WORLD_SIZE)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed (exit {p.returncode}):\n{log[-5000:]}"
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("name", fpn_zoo.list_necks())
def test_ddp_replicas_end_identical(ranks, name: str) -> None:
    first, second = (r["ddp"][name] for r in ranks)
    assert first["losses"] != second["losses"], "the ranks saw the same data: the check would prove nothing"
    assert first["moved"] > 0 and second["moved"] > 0, "the weights did not change: no training happened"
    assert second["param_diff_to_rank0"] == 0.0, (
        f"replicas differ by {second['param_diff_to_rank0']:.3g} after {len(first['losses'])} DDP steps"
    )


@pytest.mark.parametrize("name", fpn_zoo.list_necks())
def test_syncbatchnorm_conversion(ranks, name: str) -> None:
    result = ranks[0]["syncbn"][name]
    if result["batchnorms"] == 0:
        pytest.skip(f"{name} has no BatchNorm")
    assert result["syncbatchnorms"] == result["batchnorms"]
    assert result["plain_batchnorms_left"] == 0
    assert result["eval_diff"] <= 1e-6, "the converted neck computes something else in eval mode"
    if "train_error" in result:  # torch: SyncBatchNorm trains on GPU / XPU / privateuse1 only
        assert "GPU" in result["train_error"], result["train_error"]
    else:
        assert ranks[1]["syncbn"][name]["running_mean_diff_to_rank0"] <= 1e-6, "statistics not synchronized"


def test_fsdp2_step_matches_unsharded(ranks) -> None:
    for rank, result in enumerate(r["fsdp"]["fpn"] for r in ranks):
        if "unsupported" in result:
            pytest.skip(result["unsupported"])
        assert result["sharded"], f"rank {rank}: parameters are not DTensors after fully_shard"
        assert result["local_fraction"] <= 0.5 + 0.05, f"rank {rank} holds {result['local_fraction']:.0%} of the weights"
        assert result["diff_to_reference"] <= 1e-5, (
            f"rank {rank}: the FSDP2 step differs from the unsharded step by {result['diff_to_reference']:.3g}"
        )
