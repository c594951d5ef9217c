"""HyperCRL's continual-learning baselines: a multi-head MLP dynamics model trained through the same loop.

The model has the HyperCRL target network's hidden sizes as a shared trunk and a new linear output head per
task (multi-head, task identity given), trained with Adam at ``baseline_lr`` on the current task's data
(reference section 7):

- single: the trunk is re-initialised at every task (the from-scratch reference of forward transfer; only
  the diagonal of its after-task matrix is meaningful);
- finetune: the trunk keeps training on the new task, unprotected;
- ewc: offline EWC, one quadratic per finished task, empirical diagonal Fisher of per-sample losses over the
  task's train split, trunk only (Kirkpatrick et al. 2017);
- si: synaptic intelligence on the trunk, importance c and damping xi (Zenke et al. 2017);
- coreset: M random train transitions kept per finished task; every step adds each one's loss;
- multitask: every step also trains on a full random batch of every finished task (the upper bound).

Losses are per-sample means (the penalties' weights assume that scale), with HyperCRL's per-task input
statistics. ``weights(t)`` returns trunk + head-t tensors in ``robocl.nets.hypernet.mlp_forward``'s layout, so
the planner is shared with HyperCRL.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robocl.algos.dynamics import BatchFn, HyperCRLConfig, TaskData, stream_seed, task_loss
from robocl.nets.hypernet import mlp_forward
from robocl.run.runtime import seeded


class MultiHeadLearner(nn.Module):
    """Shared trunk + one head per task; ``config.method`` picks the protection of the trunk."""

    def __init__(self, config: HyperCRLConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config, self.in_dim, self.out_dim = config, in_dim, out_dim
        widths = [in_dim, *(config.hidden or ())]
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.heads = nn.ModuleList()
        self.si_path: dict[str, torch.Tensor] = {}

    def _trunk_params(self) -> dict[str, torch.Tensor]:
        return {n.replace(".", "_"): p for n, p in self.trunk.named_parameters()}

    def ensure_tasks(self, n_tasks: int) -> None:
        while len(self.heads) < n_tasks:
            self.heads.append(nn.Linear(self.trunk[-1].out_features, self.out_dim))

    def weights(self, task: int) -> list[torch.Tensor]:
        layers = [*self.trunk, self.heads[task]]
        return [t for layer in layers for t in (layer.weight, layer.bias)]

    def start_task(self, task: int, data: Sequence[TaskData]) -> None:
        del data
        with seeded(stream_seed(self.config.seed, task, 5)):  # head init (and trunk re-init for single)
            self.ensure_tasks(task + 1)
            if self.config.method == "single":
                for layer in self.trunk:
                    layer.reset_parameters()
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.config.baseline_lr)
        self.si_path = {n: torch.zeros_like(p) for n, p in self._trunk_params().items()}
        self.si_start = {n: p.detach().clone() for n, p in self._trunk_params().items()}

    def train_step(self, batch: BatchFn, task: int) -> dict[str, float]:
        cfg = self.config
        x, y = batch(task)
        loss = task_loss(mlp_forward(x, self.weights(task)), y, cfg.gaussian) / len(x)
        extra = torch.zeros(())
        if cfg.method == "multitask":
            for j in range(task):
                xj, yj = batch(j)
                extra = extra + task_loss(mlp_forward(xj, self.weights(j)), yj, cfg.gaussian) / len(xj)
        elif cfg.method == "coreset":
            for j in range(task):
                if f"mem_core_x_{j}" not in self._buffers:
                    continue  # task j ended with no train transitions: nothing was kept
                xj, yj = self.get_buffer(f"mem_core_x_{j}"), self.get_buffer(f"mem_core_y_{j}")
                extra = extra + task_loss(mlp_forward(xj, self.weights(j)), yj, cfg.gaussian) / len(xj)
        elif cfg.method in ("ewc", "si") and task:
            extra = self._penalty(task)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + extra).backward()
        # SI's path integral uses the raw gradient (Zenke et al.), taken before the clip
        grads = {n: p.grad.detach().clone() for n, p in self._trunk_params().items() if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.max_grad_norm)
        before = {n: p.detach().clone() for n, p in self._trunk_params().items()}
        self.optimizer.step()
        if cfg.method == "si":  # path integral of -grad . dtheta (Zenke et al.)
            for n, p in self._trunk_params().items():
                if n in grads:
                    self.si_path[n] -= grads[n] * (p.detach() - before[n])
        return {"loss": loss.item(), "reg": extra.item()}

    def _penalty(self, task: int) -> torch.Tensor:
        params = self._trunk_params()
        if self.config.method == "ewc":
            total = sum(
                (
                    self.get_buffer(f"mem_fisher_{j}_{n}") * (p - self.get_buffer(f"mem_anchor_{j}_{n}")) ** 2
                ).sum()
                for j in range(task)
                for n, p in params.items()
            )
            return 0.5 * self.config.ewc_lambda * total
        total = sum(
            (self.get_buffer(f"mem_omega_{n}") * (p - self.get_buffer(f"mem_anchor_{n}")) ** 2).sum()
            for n, p in params.items()
        )
        return self.config.si_c * total

    def end_task(self, task: int, data: Sequence[TaskData], batch: BatchFn) -> None:
        """Store what protects this task later: Fisher + anchor (EWC), importance (SI) or a coreset."""
        cfg = self.config
        train_idx = torch.nonzero(data[task].train).flatten()
        if cfg.method == "ewc":
            # no train transitions -> zero Fisher: the task adds no penalty (but _penalty finds its buffers)
            fisher = (
                self._fisher(task, *batch(task, train_idx))
                if len(train_idx)
                else {n: torch.zeros_like(p) for n, p in self._trunk_params().items()}
            )
            for n, f in fisher.items():
                self.register_buffer(f"mem_fisher_{task}_{n}", f)
                self.register_buffer(f"mem_anchor_{task}_{n}", self._trunk_params()[n].detach().clone())
        elif cfg.method == "si":
            for n, p in self._trunk_params().items():
                change = (p.detach() - self.si_start[n]) ** 2
                old = self._buffers.get(f"mem_omega_{n}")
                omega = self.si_path[n] / (change + cfg.si_xi) + (0 if old is None else old)
                self.register_buffer(f"mem_omega_{n}", omega.clamp_min(0))
                self.register_buffer(f"mem_anchor_{n}", p.detach().clone())
        elif cfg.method == "coreset" and len(train_idx):
            gen = torch.Generator().manual_seed(stream_seed(cfg.seed, task, 6))
            keep = train_idx[torch.randperm(len(train_idx), generator=gen)[: cfg.coreset_size]]
            x, y = batch(task, keep)
            self.register_buffer(f"mem_core_x_{task}", x)
            self.register_buffer(f"mem_core_y_{task}", y)

    def _fisher(self, task: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Empirical diagonal Fisher: mean over samples of squared per-sample loss gradients (trunk only)."""
        params = {n: p.detach() for n, p in self._trunk_params().items()}
        head = [self.heads[task].weight.detach(), self.heads[task].bias.detach()]
        names = list(params)

        def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            w = [p[n] for n in names] + head
            return task_loss(mlp_forward(xi[None], w), yi[None], self.config.gaussian)

        per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for xs, ys in zip(
            x.split(256), y.split(256), strict=True
        ):  # chunks bound the (n, *param) gradient memory
            for n, g in per_sample(params, xs, ys).items():
                total[n] += (g**2).sum(0)
        return {n: t / len(x) for n, t in total.items()}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        for key, value in state_dict.items():  # protection buffers exist only after the tasks that made them
            if key.startswith("mem_") and key not in self._buffers:
                self.register_buffer(key, torch.empty_like(value))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def n_data_bytes(self, data: Sequence[TaskData], task: int) -> int:
        """Transitions training reads: the current task, plus all old ones (multitask) or the coresets."""
        n = data[task].nbytes() if data else 0
        if self.config.method == "multitask":
            n += sum(d.nbytes() for d in data[:task])
        cores = [b for k, b in self._buffers.items() if k.startswith("mem_core_") and b is not None]
        return n + sum(b.numel() * b.element_size() for b in cores)
