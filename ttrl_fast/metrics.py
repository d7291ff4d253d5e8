"""Metrics that reduce exactly across processes: every mean keeps its (sum, count), every min/max
its op, so `all_reduce()` gives the global value (not a mean of means)."""
from __future__ import annotations

import torch
from torch import Tensor


class Metrics(dict):
    """name -> local value (0-dim tensor). `sums[name]` / `counts[name]` for mean metrics;
    `reduce_ops[name]` is "mean", "min" or "max"."""

    def __init__(self) -> None:
        super().__init__()
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.reduce_ops: dict[str, str] = {}

    def add_mean(self, name: str, total: Tensor, count: Tensor) -> None:
        self.sums[name], self.counts[name] = total.detach(), count.detach()
        self.reduce_ops[name] = "mean"
        self[name] = self.sums[name] / self.counts[name].clamp(min=1.0)

    def add_extreme(self, name: str, value: Tensor, op: str) -> None:
        self.reduce_ops[name] = op
        self[name] = value.detach()

    @classmethod
    def merge(cls, parts: list["Metrics"], **overrides: float) -> "Metrics":
        """One Metrics over several chunks of a batch: sums and counts add, minima / maxima reduce;
        `overrides` set values that are not chunk means (e.g. the summed policy_loss)."""
        if len(parts) == 1 and not overrides:
            return parts[0]
        out = cls()
        for name, op in parts[0].reduce_ops.items():
            if name in overrides:
                value = torch.as_tensor(float(overrides[name]))
                if op == "mean":
                    out.add_mean(name, value, torch.ones(()))
                else:
                    out.add_extreme(name, value, op)
            elif op == "mean":
                out.add_mean(name, sum(p.sums[name] for p in parts), sum(p.counts[name] for p in parts))
            else:
                values = torch.stack([p[name].float() for p in parts])
                values = values[~torch.isnan(values)]  # NaN = no data in that chunk
                if values.numel() == 0:
                    out.add_extreme(name, torch.tensor(float("nan")), op)
                else:
                    out.add_extreme(name, values.min() if op == "min" else values.max(), op)
        return out

    def all_reduce(self, group=None) -> "Metrics":
        """Global metrics over a torch.distributed group (a no-op without an initialised group)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        out = Metrics()
        for name, op in self.reduce_ops.items():
            if op == "mean":
                pair = torch.stack([self.sums[name], self.counts[name]]).float()
                torch.distributed.all_reduce(pair, group=group)
                out.add_mean(name, pair[0], pair[1])
            else:
                value = self[name].clone().float()
                nan = torch.isnan(value)  # NaN = "no data here": must not win a min/max
                value = torch.where(nan, torch.tensor(float("inf") if op == "min" else float("-inf")), value)
                red = torch.distributed.ReduceOp.MIN if op == "min" else torch.distributed.ReduceOp.MAX
                torch.distributed.all_reduce(value, op=red, group=group)
                out.add_extreme(name, torch.where(torch.isinf(value), torch.tensor(float("nan")), value), op)
        return out
