"""Data-parallel training under ``torchrun``: the process group, and batch norm over all ranks.

``torchrun --nproc-per-node N -m cmbscat train ...`` starts N copies of ``cmbscat train``
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment;
:class:`DistributedContext` reads them, joins the process group (gloo on CPU, NCCL on
CUDA) and says which rank writes. A plain ``cmbscat train`` is the context of one
process, on which every collective is the identity.

The aim is the *same* training as one process with the same global batch: each rank
takes its slice of every global batch (:meth:`DistributedContext.local_slice`), the
gradients are summed over ranks by ``DistributedDataParallel``, and batch norm uses
the statistics of the whole global batch (:class:`GlobalBatchNorm1d`, which unlike
``torch.nn.SyncBatchNorm`` also runs on CPU with gloo).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the ranks of a ``torchrun`` launch (1 process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistributedContext":
        """The launch described by torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, history, summary and progress."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
        return f"cuda:{self.local_rank}" if self.active and device == "cuda" else device

    def init(self, device: str) -> None:
        """Join the process group: NCCL on CUDA, gloo on CPU (no-op for one process)."""
        if not self.active or torch.distributed.is_initialized():
            return
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")

    def shutdown(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def sum(self, values: list[float], device: str = "cpu") -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def agree(self, flag: bool, device: str = "cpu") -> bool:
        """Rank 0's ``flag``, on every rank (a decision all ranks must share)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())

    def local_slice(self, global_batch: np.ndarray) -> slice:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        bounds = np.linspace(0, len(global_batch), self.world_size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the batch over all ranks.

    Sums, sums of squares and counts are all-reduced with the differentiable
    ``torch.distributed.nn.functional.all_reduce``, so the backward pass is that of
    batch norm on the global batch. Same parameters and buffers as ``BatchNorm1d``
    (checkpoints are interchangeable). With one process, or with ``sync`` off
    (:func:`unsynced`), it is plain ``BatchNorm1d``.
    """

    sync = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.sync and torch.distributed.is_available()
                and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))  # (B, C) or (B, C, L): statistics per channel
        # sums in float64: E[x^2] - E[x]^2 then loses nothing that float32 batch norm keeps
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float64, device=x.device)
        moments = torch.cat([x.sum(dim=dims, dtype=torch.float64),
                             (x * x).sum(dim=dims, dtype=torch.float64), count])
        moments = all_reduce(moments)
        channels = x.shape[1]
        n = moments[-1]
        mean64 = moments[:channels] / n
        var64 = moments[channels:2 * channels] / n - mean64 * mean64  # biased, as batch norm uses
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = (var64 * n / (n - 1).clamp_min(1)).to(x.dtype)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def convert_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm1d`` replaced, in place, by a :class:`GlobalBatchNorm1d`
    holding the same parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            new = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(next(child.buffers()).device))
        else:
            convert_batch_norm(child)
    return module


@contextlib.contextmanager
def unsynced(module: nn.Module):
    """Within the block, :class:`GlobalBatchNorm1d` layers use their own rank's batch only."""
    layers = [m for m in module.modules() if isinstance(m, GlobalBatchNorm1d)]
    for m in layers:
        m.sync = False
    try:
        yield
    finally:
        for m in layers:
            m.sync = True


class GlobalBatchDropout(nn.Dropout):
    """Dropout whose mask is drawn for the whole global batch, each rank applying its rows.

    Every rank draws the same ``(global_rows, features)`` mask from the same torch
    generator state, so a data-parallel run drops exactly the units one process would
    drop on the global batch, and the ranks' generators stay in step. Set the batch with
    :func:`set_global_batch`; unset, the batch is the input itself (one process).
    """

    global_rows: int | None = None
    rows: slice = slice(None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = self.global_rows if self.global_rows is not None else x.shape[0]
        keep = torch.empty((n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * keep[self.rows] / (1 - self.p)


def set_global_batch(module: nn.Module, global_rows: int | None, rows: slice = slice(None)) -> None:
    """Tell every :class:`GlobalBatchDropout` of ``module`` the global batch size and this rank's rows."""
    for m in module.modules():
        if isinstance(m, GlobalBatchDropout):
            m.global_rows, m.rows = global_rows, rows
