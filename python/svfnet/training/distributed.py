"""The processes of a training run: one, or those ``torchrun`` started (DistributedDataParallel; gloo on
the CPU, nccl on the GPU), and what they must agree on together."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

import svfnet


@dataclass(frozen=True)
class Dist:
    """This process among those torchrun started: its rank, how many there are, its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed() -> Dist:
    """Joins the torchrun process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = svfnet.default_device().type == "cuda"  # the one rule: torch's device and svfnet's launchers
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if on_gpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Dist(rank, dist.get_world_size() if dist.is_initialized() else 1, device)


def any_process(problem: str | None, where: Dist) -> str | None:
    """``problem`` from this process, or a note that another process found one (collective)."""
    if where.world == 1:
        return problem
    flag = torch.tensor([problem is not None], dtype=torch.float32, device=where.device)
    dist.all_reduce(flag)
    return problem or ("another process stopped" if bool(flag.item()) else None)
