"""Data-parallel training under torchrun (DDP): each process takes its contiguous share of every global batch, and
process 0 alone evaluates, logs and writes checkpoints. Without torchrun nothing here does anything."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from vaegen.errors import ConfigError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_first() -> bool:
    """Process 0 as torchrun numbered it (a plain run is process 0), known before and after the group exists."""
    return os.environ.get("RANK", "0") == "0"


def init(device_name: str) -> None:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); once per process."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # evaluation on process 0 (FID of thousands of samples) can keep the others waiting for minutes
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """Each process's own GPU (torchrun's LOCAL_RANK); the CPU stays the CPU."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def check_batch(batch_size: int) -> None:
    if batch_size % world_size():
        raise ConfigError(
            f"train.batch_size {batch_size} (the global batch) does not split evenly over {world_size()} processes; "
            f"use a multiple of {world_size()}, e.g. {batch_size // world_size() * world_size() or world_size()}."
        )


def shard(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous share of a global batch."""
    if world_size() == 1:
        return images, labels
    per = len(images) // world_size()
    start = rank() * per
    return images[start : start + per], labels[start : start + per]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def average_gradients(parameters) -> None:
    """Each gradient averaged over the processes, in one all-reduce: a two-player step updates its players apart,
    outside DDP's hooks (which expect one backward per forward over all the weights)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if world_size() == 1 or not grads:
        return
    flat = torch.cat([grad.flatten() for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast(value):
    """Process 0's `value` on every process (any picklable object)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: torch.nn.Module, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
    """The module the training step calls: DDP around the model when there are several processes."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm is GPU-only); leave it off on CPU.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def finish(together: bool = True) -> None:
    """Leave the process group; `together` (not after an error: others may wait in a collective) waits for all first."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
