"""HyperCRL's continual-learning baselines (robocl.algos.cl_baselines.MultiHeadLearner).

Every expected value is computed here independently of the library's helpers: an explicit forward pass
through the trunk's nn.Linear layers, per-sample autograd loops, and hand-written penalties.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from robocl.algos.cl_baselines import MultiHeadLearner
from robocl.algos.dynamics import HyperCRLConfig, TaskData, task_loss
from robocl.algos.hypercrl import HyperCRL
from robocl.checkpoint import load_checkpoint
from robocl.cli import main
from robocl.store import TrajectoryStore
from tests.algos.test_hypercrl import TINY

S, A = 3, 2  # toy state and action sizes: model input S + A, target S (a raw state change)
Batch = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _toy_tasks(n_tasks: int, n: int, seed: int = 0) -> tuple[list[TaskData], Batch]:
    """Tasks with random transitions; 2 of every 3 are train. batch(j, idx): (cat(s, a), s' - s) of rows idx,
    or 16 random train rows when idx is None."""
    gen = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n_tasks):
        d = TaskData(S, A)
        state, action = torch.randn(n, S, generator=gen), torch.randn(n, A, generator=gen)
        d.extend(state, action, state + 0.3 * torch.randn(n, S, generator=gen), torch.arange(n) % 3 != 0)
        data.append(d)

    def batch(j: int, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        d = data[j]
        if idx is None:
            pool = torch.nonzero(d.train).flatten()
            idx = pool[torch.randint(len(pool), (16,), generator=gen)]
        return torch.cat([d.state[idx], d.action[idx]], -1), d.next_state[idx] - d.state[idx]

    return data, batch


def _forward(learner: MultiHeadLearner, task: int, x: torch.Tensor) -> torch.Tensor:
    """The multi-head model written out layer by layer (not through mlp_forward)."""
    for layer in learner.trunk:
        x = torch.relu(layer(x))
    return learner.heads[task](x)


def _trunk(learner: MultiHeadLearner) -> dict[str, torch.Tensor]:
    """Trunk tensors under the buffer-name suffixes the learner uses (``{layer}_{weight|bias}``)."""
    return {
        f"{k}_{kind}": getattr(layer, kind)
        for k, layer in enumerate(learner.trunk)
        for kind in ("weight", "bias")
    }


def _hand_fisher(
    learner: MultiHeadLearner, task: int, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Mean over samples of the squared gradient of each sample's task_loss w.r.t. the trunk (plain loop)."""
    params = _trunk(learner)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        loss = task_loss(_forward(learner, task, x[i : i + 1]), y[i : i + 1], learner.config.gaussian)
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            total[n] += g**2
    return {n: t / len(x) for n, t in total.items()}


def _perturb_trunk(learner: MultiHeadLearner, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.trunk.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _snapshot(learner: MultiHeadLearner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in _trunk(learner).items()}


@pytest.mark.parametrize("model", ["deterministic", "gaussian"])
def test_ewc_fisher_is_the_mean_squared_per_sample_gradient_and_the_penalty_sums_every_past_task(
    model: str,
) -> None:
    torch.manual_seed(0)
    config = HyperCRLConfig(method="ewc", model=model, hidden=(8, 6), ewc_lambda=3.0)
    learner = MultiHeadLearner(config, S + A, S * (2 if config.gaussian else 1))
    data, batch = _toy_tasks(2, 420)  # 280 train rows: more than one of _fisher's 256-row chunks
    fishers, anchors = [], []
    for task in range(2):
        learner.start_task(task, data)
        for _ in range(3):  # move off the init so the two tasks' anchors differ
            learner.train_step(batch, task)
        train_idx = torch.nonzero(data[task].train).flatten()
        x, y = batch(task, train_idx)
        expected = _hand_fisher(learner, task, x, y)
        got = learner._fisher(task, x, y)
        assert set(got) == set(expected)  # trunk only: no head tensor
        for n in expected:
            torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-9)
        learner.end_task(task, data, batch)
        for n in expected:  # end_task stores the Fisher of the train split and the parameters it ended at
            torch.testing.assert_close(
                learner.get_buffer(f"mem_fisher_{task}_{n}"), expected[n], rtol=1e-4, atol=1e-9
            )
        fishers.append(expected)
        anchors.append(_snapshot(learner))

    _perturb_trunk(learner, seed=1)
    theta = _snapshot(learner)
    for task in (1, 2):  # the penalty while training task t sums the quadratics of tasks 0..t-1
        hand = sum(
            (fishers[j][n] * (theta[n] - anchors[j][n]) ** 2).sum() for j in range(task) for n in theta
        )
        torch.testing.assert_close(learner._penalty(task), 0.5 * 3.0 * hand, rtol=1e-5, atol=0)
    assert learner._penalty(2) > learner._penalty(1) > 0


def _hand_grads(
    learner: MultiHeadLearner, task: int, x: torch.Tensor, y: torch.Tensor, reg: Callable[..., torch.Tensor]
) -> tuple[dict[str, torch.Tensor], bool]:
    """Gradient of (per-sample mean MSE + reg) w.r.t. the trunk, unclipped as SI's path integral reads it
    (Zenke et al.); and whether the optimiser's clip (joint norm of the trunk and the current head, the only
    tensors with gradients) was active on the step."""
    trunk = _trunk(learner)
    head = [learner.heads[task].weight, learner.heads[task].bias]
    loss = ((_forward(learner, task, x) - y) ** 2).sum() / y.shape[-1] / len(x) + reg(trunk)
    grads = torch.autograd.grad(loss, [*trunk.values(), *head])
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    scale = min(1.0, learner.config.max_grad_norm / (float(norm) + 1e-6))
    return dict(zip(trunk, grads[: len(trunk)], strict=True)), scale < 1.0


@pytest.mark.parametrize("max_grad_norm", [5.0, 0.05])  # 0.05: the clip is active on every step
def test_si_importance_is_the_path_integral_over_the_squared_change_plus_damping(
    max_grad_norm: float,
) -> None:
    torch.manual_seed(0)
    config = HyperCRLConfig(method="si", hidden=(8, 6), si_c=0.7, si_xi=1e-3, max_grad_norm=max_grad_norm)
    learner = MultiHeadLearner(config, S + A, S)
    data, draw = _toy_tasks(2, 60)
    current: list[tuple[torch.Tensor, torch.Tensor]] = []

    def batch(j: int, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return current[-1]  # the batch the test drew for this step

    omega: dict[str, torch.Tensor] = {}
    anchor: dict[str, torch.Tensor] = {}
    clipped = []
    for task, n_steps in ((0, 6), (1, 4)):
        learner.start_task(task, data)
        start = _snapshot(learner)
        path = {n: torch.zeros_like(p) for n, p in start.items()}
        for _ in range(n_steps):
            current.append(draw(task))
            # SI's own penalty (from the omega/anchor computed below for task 0) is part of the gradient
            reg = (
                (lambda p: 0.7 * sum((omega[n] * (p[n] - anchor[n]) ** 2).sum() for n in p))
                if task
                else (lambda p: torch.zeros(()))
            )
            grads, was_clipped = _hand_grads(learner, task, *current[-1], reg)
            clipped.append(was_clipped)
            before = _snapshot(learner)
            learner.train_step(batch, task)
            after = _snapshot(learner)
            for n in path:
                path[n] -= grads[n] * (after[n] - before[n])
        learner.end_task(task, data, batch)
        end = _snapshot(learner)
        for n in path:  # importances add up over tasks; negatives are clamped to 0
            new = path[n] / ((end[n] - start[n]) ** 2 + 1e-3)
            omega[n] = (new + omega.get(n, 0)).clamp_min(0)
            anchor[n] = end[n]
            torch.testing.assert_close(learner.get_buffer(f"mem_omega_{n}"), omega[n], rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(learner.get_buffer(f"mem_anchor_{n}"), anchor[n], rtol=0, atol=0)
        assert any(float(o.max()) > 0 for o in omega.values())
    assert all(clipped) if max_grad_norm < 1 else not any(clipped)

    _perturb_trunk(learner, seed=2)
    theta = _snapshot(learner)
    hand = 0.7 * sum((omega[n] * (theta[n] - anchor[n]) ** 2).sum() for n in theta)
    torch.testing.assert_close(learner._penalty(2), hand, rtol=1e-5, atol=0)


def test_si_importance_of_a_parameter_that_moved_uphill_is_clamped_to_zero() -> None:
    # Adam's steps on the toy never give a negative path sum, so set the path by hand to reach the clamp.
    torch.manual_seed(0)
    learner = MultiHeadLearner(HyperCRLConfig(method="si", hidden=(8, 6), si_xi=1e-3), S + A, S)
    data, batch = _toy_tasks(1, 30)
    learner.start_task(0, data)
    start = _snapshot(learner)
    gen = torch.Generator().manual_seed(3)
    path = {n: torch.randn(p.shape, generator=gen) * 1e-3 for n, p in start.items()}
    learner.si_path = {n: p.clone() for n, p in path.items()}
    _perturb_trunk(learner, seed=4)
    end = _snapshot(learner)
    learner.end_task(0, data, batch)
    for n in path:
        expected = (path[n] / ((end[n] - start[n]) ** 2 + 1e-3)).clamp_min(0)
        torch.testing.assert_close(learner.get_buffer(f"mem_omega_{n}"), expected, rtol=1e-5, atol=0)
    assert sum(int((learner.get_buffer(f"mem_omega_{n}") == 0).sum()) for n in path) > 10


def _hand_bytes(d: TaskData) -> int:
    """float32 states, actions and next states, plus one byte per train flag."""
    return 4 * (d.state.numel() + d.action.numel() + d.next_state.numel()) + d.train.numel()


@pytest.mark.parametrize("coreset_size", [5, 50])  # fewer, and more, than the task's 8 train transitions
def test_coreset_keeps_min_m_n_distinct_train_transitions_and_counts_their_bytes(coreset_size: int) -> None:
    torch.manual_seed(0)
    config = HyperCRLConfig(method="coreset", hidden=(8,), coreset_size=coreset_size)
    learner = MultiHeadLearner(config, S + A, S)
    data, batch = _toy_tasks(2, 12)  # 8 train, 4 validation rows per task
    learner.start_task(0, data)
    learner.train_step(batch, 0)
    learner.end_task(0, data, batch)

    x_all, y_all = batch(0, torch.arange(12))
    core_x, core_y = learner.get_buffer("mem_core_x_0"), learner.get_buffer("mem_core_y_0")
    keep = min(coreset_size, 8)
    assert core_x.shape == (keep, S + A) and core_y.shape == (keep, S)
    rows = [int(torch.nonzero((x_all == r).all(-1)).flatten()[0]) for r in core_x]
    assert len(set(rows)) == keep  # no transition twice
    assert all(bool(data[0].train[i]) for i in rows)  # never a validation transition
    torch.testing.assert_close(core_y, y_all[rows], rtol=0, atol=0)  # inputs and targets stay paired

    # training reads the current task plus the coresets
    core_bytes = keep * (S + A + S) * 4
    assert learner.n_data_bytes(data, 1) == _hand_bytes(data[1]) + core_bytes

    # each step of task 1 adds task 0's per-sample mean coreset loss through head 0
    learner.start_task(1, data)
    with torch.no_grad():
        hand = ((_forward(learner, 0, core_x) - core_y) ** 2).sum() / S / keep
    assert learner.train_step(batch, 1)["reg"] == pytest.approx(float(hand), rel=1e-5)


@pytest.mark.parametrize("method", ["ewc", "coreset"])
def test_a_task_that_ended_without_train_transitions_protects_nothing_and_breaks_nothing(method: str) -> None:
    torch.manual_seed(0)
    learner = MultiHeadLearner(HyperCRLConfig(method=method, hidden=(8,), coreset_size=4), S + A, S)
    data, batch = _toy_tasks(2, 12)
    data[0].train[:] = False  # every transition of task 0 went to validation
    learner.start_task(0, data)
    learner.end_task(0, data, batch)
    learner.start_task(1, data)
    assert learner.train_step(batch, 1)["reg"] == 0.0  # no Fisher mass / no coreset: no extra loss


def test_statistics_of_a_task_without_transitions_are_the_identity() -> None:
    from robocl.algos.dynamics import StateCodec

    stats = TaskData(S, A).stats(StateCodec("push", S))
    for name, dim in (("feature", S), ("action", A)):
        torch.testing.assert_close(stats[f"{name}_mean"], torch.zeros(dim))
        torch.testing.assert_close(stats[f"{name}_std"], torch.ones(dim))


def test_multitask_replays_and_counts_every_earlier_task_and_finetune_only_the_current_one() -> None:
    torch.manual_seed(0)
    data, draw = _toy_tasks(3, 30)
    fixed = [draw(j, torch.arange(8)) for j in range(3)]

    def batch(j: int, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return fixed[j]

    learner = MultiHeadLearner(HyperCRLConfig(method="multitask", hidden=(8,)), S + A, S)
    assert learner.n_data_bytes(data, 0) == _hand_bytes(data[0])
    assert learner.n_data_bytes(data, 2) == sum(_hand_bytes(d) for d in data)
    learner.start_task(2, data)
    with torch.no_grad():
        hand = sum(
            ((_forward(learner, j, x) - y) ** 2).sum() / S / len(x) for j, (x, y) in enumerate(fixed[:2])
        )
    assert learner.train_step(batch, 2)["reg"] == pytest.approx(float(hand), rel=1e-5)

    finetune = MultiHeadLearner(HyperCRLConfig(method="finetune", hidden=(8,)), S + A, S)
    assert finetune.n_data_bytes(data, 2) == _hand_bytes(data[2])


def _task0_drift(method: str, **overrides: float) -> tuple[float, list[float]]:
    """Learn task 0, then task 1 (two random tanh-linear maps); the relative change of the task-0 model's
    outputs on task-0 inputs while task 1 trains, and task 1's first and last losses."""
    torch.manual_seed(0)
    config = HyperCRLConfig(method=method, hidden=(16, 16), seed=0, **overrides)  # type: ignore[arg-type]
    learner = MultiHeadLearner(config, 4, 3)
    gen = torch.Generator().manual_seed(1)
    maps = [torch.randn(4, 3, generator=gen) for _ in range(2)]
    xs = [torch.randn(256, 4, generator=gen) for _ in range(2)]
    ys = [torch.tanh(x @ m) for x, m in zip(xs, maps, strict=True)]
    data = []
    for _ in range(2):
        d = TaskData(4, 3)  # the end-of-task memories read only the train mask (the batches are xs, ys)
        d.extend(
            torch.zeros(256, 4), torch.zeros(256, 3), torch.zeros(256, 4), torch.ones(256, dtype=torch.bool)
        )
        data.append(d)

    def batch(j: int, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(256, (64,), generator=gen) if idx is None else idx
        return xs[j][idx], ys[j][idx]

    for task in range(2):
        learner.start_task(task, data)
        if task == 1:
            with torch.no_grad():
                before = _forward(learner, 0, xs[0])
        losses = [learner.train_step(batch, task)["loss"] for _ in range(250)]
        learner.end_task(task, data, batch)
    with torch.no_grad():
        after = _forward(learner, 0, xs[0])
    return float((after - before).norm() / before.norm()), losses


def test_ewc_and_si_keep_the_trunk_closer_to_task_0_than_finetuning() -> None:
    finetune, ft_losses = _task0_drift("finetune")
    ewc, ewc_losses = _task0_drift("ewc", ewc_lambda=1e4)
    si, si_losses = _task0_drift("si", si_c=10.0)  # this toy's losses are small: the default c=0.1 is weak
    assert finetune > 0.3  # unprotected, task 1 rewrites what head 0 reads
    assert ewc < 0.4 * finetune and si < 0.4 * finetune
    for losses in (ft_losses, ewc_losses, si_losses):  # protection still lets task 1 be learned
        assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("method", ["single", "finetune"])
def test_single_reinitialises_the_trunk_at_every_task_and_finetune_keeps_it(method: str) -> None:
    torch.manual_seed(0)
    config = HyperCRLConfig(method=method, hidden=(16, 16), baseline_lr=0.05)
    learner = MultiHeadLearner(config, S + A, S)
    data, batch = _toy_tasks(2, 30)
    learner.start_task(0, data)
    init = _snapshot(learner)
    for _ in range(30):  # a large lr: trained weights leave the fresh-init range
        learner.train_step(batch, 0)
    learner.end_task(0, data, batch)
    trained, head0 = _snapshot(learner), [t.detach().clone() for t in learner.weights(0)[-2:]]
    assert any(not torch.equal(trained[n], init[n]) for n in init)

    learner.start_task(1, data)
    now = _snapshot(learner)
    assert len(learner.heads) == 2
    for kept, t in zip(head0, learner.weights(0)[-2:], strict=True):  # task 0's head is kept either way
        assert torch.equal(kept, t)
    if method == "finetune":
        assert all(torch.equal(now[n], trained[n]) for n in now)
        return
    assert all(not torch.equal(now[n], trained[n]) for n in now)
    # a fresh nn.Linear init lies within 1/sqrt(fan_in); the trained trunk had left that range
    bounds = {
        f"{k}_{kind}": layer.in_features**-0.5
        for k, layer in enumerate(learner.trunk)
        for kind in ("weight", "bias")
    }
    assert all(float(now[n].abs().max()) <= b for n, b in bounds.items())
    assert any(float(trained[n].abs().max()) > b for n, b in bounds.items())


@pytest.mark.parametrize(
    ("family", "method"),
    [
        ("door", "hypercrl"),
        ("cheetah", "hypercrl"),
        ("push", "ewc"),
        ("push", "si"),
        ("push", "coreset"),
        ("push", "multitask"),
    ],
)
def test_tiny_continual_run_of_each_family_and_baseline(tmp_path, family: str, method: str) -> None:
    run = tmp_path / "run"
    assert (
        # TINY names --family push; the later flag wins (argparse keeps the last value)
        main(["train", "hypercrl", "--run-dir", str(run), *TINY, "--family", family, "--method", method]) == 0
    )
    result = json.loads((run / "continual.json").read_text())
    assert result["config"]["family"] == family and result["config"]["method"] == method
    R = np.array(result["metrics"]["after_task_matrix"], dtype=float)
    assert R.shape == (2, 2) and np.isfinite(R[[0, 1, 1], [0, 0, 1]]).all()
    errors = result["metrics"]["model_error_matrix"]
    assert [len(row) for row in errors] == [1, 2]
    with TrajectoryStore.open(run / "data" / "data.zarr") as store:
        assert store.n_steps == 32 and {t for ep in store for t in ep.tags} == {"task0", "task1", method}

    # The last checkpoint restores the protection memories that only exist after end_task.
    ckpt = load_checkpoint(run / "checkpoints" / "task1" / "last")
    algo = HyperCRL(HyperCRLConfig(**ckpt.config))
    algo.load_state_dict({"model": ckpt.tensors, "trainer": ckpt.trainer_state()["algorithm"]})
    memories = {k.split("_")[1] for k in algo.learner.state_dict() if k.startswith("mem_")}
    assert memories == {"ewc": {"fisher", "anchor"}, "si": {"omega", "anchor"}, "coreset": {"core"}}.get(
        method, set()
    )
    per_task = 16 * (4 * (2 * algo.state_dim + algo.action_dim) + 1)  # 16 transitions, float32 + a flag
    data_bytes = result["metrics"]["memory_bytes"]["data"]
    if method == "multitask":  # replay reads both tasks' transitions
        assert data_bytes == 2 * per_task
    elif method in ("ewc", "si", "hypercrl"):
        assert data_bytes == per_task
    else:  # coreset: the current task's transitions + the kept ones, which count as data, not model
        cores = [t for k, t in algo.learner.state_dict().items() if k.startswith("mem_core_")]
        assert data_bytes == per_task + sum(t.numel() * t.element_size() for t in cores)
        params = sum(p.numel() * p.element_size() for p in algo.learner.parameters())
        assert result["metrics"]["memory_bytes"]["model"] == params
