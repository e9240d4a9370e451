"""A step's loss and Slurm's warning flag, all-reduced over ranks while the next step computes and read
a step later, so reading them never makes the host wait on the network or a GPU."""

from __future__ import annotations

from typing import Any


class ReducedStats:
    """One step's [loss sum, warning flag] all-reduce, started asynchronously and read a step later.

    On GPUs nothing here makes the host wait: the reduction's result and the step's grad norm are copied
    into pinned host memory behind a CUDA event, and reading them a step later waits for that event only
    (the end of their step), never for the step queued after it."""

    def __init__(self, local_loss: Any, scale: float, warned: bool, record: dict[str, Any],
                 grad_norm: Any = None) -> None:
        import torch
        import torch.distributed as dist

        flag = torch.ones_like(local_loss) if warned else torch.zeros_like(local_loss)
        self.tensor = torch.stack([local_loss.to(torch.float64), flag.to(torch.float64)])
        self.handle: Any = dist.all_reduce(self.tensor, async_op=True)
        self.scale, self.record, self.grad_norm = scale, record, grad_norm
        self.event: Any = None
        self.norm_on_host = False
        if self.tensor.is_cuda:
            # NCCL: wait() orders this stream after the reduction; the host does not block.
            self.handle.wait()
            self.handle = None
            self.host = torch.empty(3, dtype=torch.float64, pin_memory=True)
            self.host[:2].copy_(self.tensor, non_blocking=True)
            if isinstance(grad_norm, torch.Tensor) and grad_norm.is_cuda:
                self.host[2:].copy_(grad_norm.detach().to(torch.float64).reshape(1), non_blocking=True)
                self.norm_on_host = True
            self.event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self.event.record()
        elif isinstance(grad_norm, torch.Tensor):
            self.grad_norm = grad_norm.detach().clone()  # later in-place updates must not change it

    def wait(self) -> tuple[float, bool]:
        """(the mean loss over ranks, whether any rank got the warning signal); sets the record's grad_norm."""
        if self.event is not None:
            self.event.synchronize()
            total, flags, norm = self.host.tolist()
            self.record["grad_norm"] = norm if self.norm_on_host else _as_float(self.grad_norm)
        else:
            self.handle.wait()
            total, flags = self.tensor.tolist()
            self.record["grad_norm"] = _as_float(self.grad_norm)
        return total / self.scale, flags > 0


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
