"""One rank of the 2-process CPU/gloo job behind ``test_distributed.py`` (run as a script).

Started like torchrun starts a worker: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (127.0.0.1) and
``MASTER_PORT`` in the environment. Usage: ``python _distributed_worker.py OUT_DIR``; it writes
``OUT_DIR/rank<RANK>.pt``, a dict of plain numbers per check (the test compares the ranks' files):

- ``ddp``: for every registered variant, backbone + neck trained 3 SGD steps under
  ``DistributedDataParallel(find_unused_parameters=False)`` on different data per rank (a neck that stacks
  cells is built with one cell: every module kind, not every copy, is what an unused parameter depends on);
- ``syncbn``: ``SyncBatchNorm.convert_sync_batchnorm`` on every variant with BatchNorm;
- ``fsdp``: one FSDP2 (``fully_shard``) step of ``fpn``, against the same step computed without sharding.
"""
from __future__ import annotations

import copy
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fpn_zoo
from _every_variant import shallow  # this script's folder (tests/) is on sys.path

STEPS = 3
IMAGE = (2, 3, 64, 64)
# The CNN pyramid first; necks that only take a single-stride map (simple_pyramid*) get the ViT.
BACKBONES = (("test_efficientnet", dict(out_indices=(2, 3, 4))), ("test_vit", {}))


def create_model(name: str) -> fpn_zoo.BackboneWithNeck:
    for backbone, kwargs in BACKBONES:
        try:
            return fpn_zoo.create_model(backbone, neck=name, neck_args=shallow(name) or None, **kwargs)
        except ValueError:
            continue
    raise ValueError(f"{name} accepts none of {[b for b, _ in BACKBONES]}")


def images(rank: int, step: int) -> torch.Tensor:
    """Different data on every rank and step (seeded: the non-distributed reference redraws them)."""
    return torch.randn(*IMAGE, generator=torch.Generator().manual_seed(1000 * step + rank))


def loss_of(outputs: List[torch.Tensor]) -> torch.Tensor:
    return sum(o.float().pow(2).mean() for o in outputs)


def max_diff_to_rank0(tensors: List[torch.Tensor]) -> float:
    """Largest difference between this rank's tensors and rank 0's (0.0 on rank 0 itself)."""
    worst = 0.0
    for t in tensors:
        theirs = t.detach().clone()
        dist.broadcast(theirs, src=0)
        worst = max(worst, (theirs - t.detach()).abs().max().item())
    return worst


def check_ddp(name: str, rank: int) -> Dict[str, Any]:
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's at construction
    model = create_model(name).train()
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(ddp(images(rank, step)))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    params = list(model.parameters())
    return {
        "losses": losses,
        "param_diff_to_rank0": max_diff_to_rank0(params),
        "moved": max((p.detach() - s).abs().max().item() for p, s in zip(params, start)),
    }


def check_syncbn(name: str, rank: int) -> Dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name)
    neck = model.neck
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in neck.modules())
    if batchnorms == 0:
        return {"batchnorms": 0}
    x = images(rank, 0)
    feats = [f.detach() for f in model.backbone(x)]
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(neck))
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in synced.modules())
    with torch.no_grad():
        eval_diff = max((a - b).abs().max().item() for a, b in zip(neck.eval()(feats), synced.eval()(feats)))
    result: Dict[str, Any] = {
        "batchnorms": batchnorms,
        "syncbatchnorms": sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()),
        "plain_batchnorms_left": left,
        "eval_diff": eval_diff,
    }
    try:
        synced.train()(feats)
    except ValueError as e:  # torch's SyncBatchNorm runs on GPU / XPU / privateuse1 devices only
        result["train_error"] = str(e)
        return result
    stats = [m.running_mean for m in synced.modules() if isinstance(m, nn.SyncBatchNorm)]
    result["running_mean_diff_to_rank0"] = max_diff_to_rank0(stats)
    return result


def check_fsdp(name: str, rank: int, world: int) -> Dict[str, Any]:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:
        return {"unsupported": f"torch.distributed.fsdp.fully_shard is not available in torch {torch.__version__}: {e}"}
    torch.manual_seed(0)
    model = create_model(name).train()
    result: Dict[str, Any] = {}
    reference = copy.deepcopy(model)
    fully_shard(model.neck)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_of(model(images(rank, 0))).backward()
    optimizer.step()

    # The same step without sharding: gradients averaged over the ranks' batches.
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for r in range(world):
        (loss_of(reference(images(r, 0))) / world).backward()
    ref_optimizer.step()

    sharded = [p for p in model.parameters()]
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in sharded]
    result.update(
        sharded=all(type(p).__name__ == "DTensor" for p in sharded),
        local_fraction=sum(p.to_local().numel() for p in sharded) / sum(p.numel() for p in sharded),
        diff_to_reference=max((a.detach() - b.detach()).abs().max().item() for a, b in zip(full, reference.parameters())),
    )
    return result


def main() -> None:
    out_dir = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    results: Dict[str, Any] = {"ddp": {}, "syncbn": {}, "fsdp": {}}
    try:
        for name in fpn_zoo.list_necks():
            results["ddp"][name] = check_ddp(name, rank)
            results["syncbn"][name] = check_syncbn(name, rank)
        results["fsdp"]["fpn"] = check_fsdp("fpn", rank, world)
    except Exception:
        traceback.print_exc()
        raise
    finally:
        torch.save(results, out_dir / f"rank{rank}.pt")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
