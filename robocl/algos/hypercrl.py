"""HyperCRL: continual model-based RL with a task-conditioned hypernetwork
(Huang, Xie, Bharadhwaj, Shkurti, ICRA 2021, arXiv 2009.11997).

A hypernetwork h(e_t; theta) emits every weight of an MLP dynamics model for task t from a 10-d task
embedding. While learning task t only task-t data is used; an output regulariser keeps h(e_j; theta + dtheta)
close to snapshots h(e_j; theta_old) taken at the start of the task for every earlier j, where dtheta is the
step Adam is about to take (von Oswald et al.'s look-ahead). The agent plans with CEM on the learned model and
the task's analytic reward (``env.unwrapped.reward_fn``). Task identity is given. The baselines (fine-tune,
single-task, EWC, SI, coreset, multi-task replay; ``robocl.algos.cl_baselines``) run through the same loop
with a multi-head MLP of the same size in place of the hypernetwork.

Deviations from the reference (/work/shared/refs/hypercrl.md) and why:
- States are robocl's env states (push 36-d, door 31-d, cheetah 18-d), not robosuite's; the feature map
  follows the reference's rules on them: door hinge and knob angles -> (cos, sin); cheetah pitch -> (cos,
  sin) and the forward velocity dropped from the input and predicted as a value, not a difference. Push yaw
  is already (cos, sin) in the state.
- The door's tool quaternion is predicted as a plain raw-unit difference like every other dim, so training
  target and next-state composition agree (the reference composes q * dq after training on q' * conj(q)).
- No L1 penalty on the output bias (the reference's weight-penalty quirk); log-variance bounds are
  constants.
- A retraining session on fewer train transitions than the batch size uses them all as one batch, instead of
  dropping the last partial batch and taking no step; this only matters for the small test budgets.
- An MPC episode that is still running when a task ends is stored truncated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robocl.algos.cem import CEMConfig, cem_plan
from robocl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from robocl.eval.continual import ContinualEvaluator, ContinualLog, continual_metrics, plot_curves
from robocl.features import flatten_obs
from robocl.nets.hypernet import HyperNetwork, mlp_forward, mlp_shapes
from robocl.store import Feature, TrajectoryStore

# Reference values per family (hypercrl.md sections 1-5 and the table of section 4).
FAMILY_SETTINGS: dict[str, dict[str, Any]] = {
    "push": dict(
        hidden=(200, 200),
        hnet_hidden=(50, 50),
        hnet_activation="elu",
        model="deterministic",
        beta=0.05,
        n_random=2000,
        n_mpc=4000,
        retrain_every=200,
        grad_steps=2000,
        horizon=20,
        n_samples=500,
        n_elites=40,
        n_iters=5,
        init_std=1.0,
        eval_every=200,
        eval_episodes=5,
        coreset_size=100,
    ),
    "door": dict(
        hidden=(200,) * 4,
        hnet_hidden=(256, 256),
        hnet_activation="relu",
        model="gaussian",
        beta=0.5,
        n_random=2000,
        n_mpc=60000,
        retrain_every=200,
        grad_steps=200,
        horizon=10,
        n_samples=2000,
        n_elites=40,
        n_iters=5,
        init_std=0.5,
        eval_every=1000,
        eval_episodes=1,
        coreset_size=600,
    ),
    "cheetah": dict(
        hidden=(200,) * 4,
        hnet_hidden=(256, 256),
        hnet_activation="relu",
        model="gaussian",
        beta=0.05,
        n_random=10000,
        n_mpc=100000,
        retrain_every=1000,
        grad_steps=2000,
        horizon=30,
        n_samples=500,
        n_elites=50,
        n_iters=5,
        init_std=1.0,
        eval_every=5000,
        eval_episodes=1,
        coreset_size=1000,
    ),
}
METHODS = ("hypercrl", "finetune", "single", "ewc", "si", "coreset", "multitask")
# batch(j, idx): (model input, raw target) of task j's transitions idx; idx None: a random train batch.
BatchFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
LOGVAR_MAX, LOGVAR_MIN = 0.5, -10.0  # soft bounds of the Gaussian model's log-variance (constants, as in [C])


@dataclass
class HyperCRLConfig:
    """HyperCRL and its baselines; a None field takes the family's reference value (FAMILY_SETTINGS)."""

    family: str = "push"  # task family of robocl_envs.FAMILIES: push, door or cheetah
    method: str = "hypercrl"  # hypercrl, finetune, single, ewc, si, coreset or multitask
    n_tasks: int | None = None  # tasks run, in the family's order (None: all of them)
    hidden: tuple[int, ...] | None = None  # dynamics MLP widths
    hnet_hidden: tuple[int, ...] | None = None  # hypernetwork trunk widths
    hnet_activation: str | None = None  # hypernetwork trunk activation: elu or relu
    embedding_dim: int = 10  # task embedding size
    model: str | None = None  # dynamics output: deterministic (delta) or gaussian (mean, log-variance)
    beta: float | None = None  # output-regulariser weight
    lr: float = 1e-4  # Adam learning rate of theta and of the embedding
    baseline_lr: float = 1e-3  # Adam learning rate of the multi-head baselines
    max_grad_norm: float = 5.0  # gradient-norm clip of theta and of the embedding
    batch_size: int = 100  # transitions per gradient step
    train_fraction: float = 0.75  # probability that a transition joins the train split (else validation)
    n_random: int | None = None  # env steps per task with N(0, I) actions before planning starts
    n_mpc: int | None = None  # env steps per task with the CEM planner
    retrain_every: int | None = None  # MPC env steps between retraining sessions (K)
    grad_steps: int | None = None  # gradient steps per retraining session (G)
    horizon: int | None = None  # CEM planning horizon H
    n_samples: int | None = None  # CEM population size
    n_elites: int | None = None  # CEM elites
    n_iters: int | None = None  # CEM refits before the final best-of-population draw
    init_std: float | None = None  # CEM initial std, raw action units
    # dtype of the planner's model layers: bfloat16 halves the matmul time on CPUs with bf16 units (CEM only
    # ranks costs, which tolerates ~3 significant digits); training is always float32
    planner_dtype: str = "float32"
    eval_every: int | None = None  # env steps between evaluations of every task seen so far
    eval_episodes: int | None = None  # MPC episodes per task and evaluation
    eval_max_steps: int | None = None  # cap on evaluation episode length (None: the env's time limit)
    ewc_lambda: float = 1e4  # EWC penalty weight
    si_c: float = 0.1  # SI penalty weight
    si_xi: float = 1e-3  # SI damping
    coreset_size: int | None = None  # transitions kept per finished task by the coreset baseline
    seed: int = 0  # hypernetwork init; per-task embedding, exploration, planning and env-reset streams

    def __post_init__(self) -> None:
        if self.family not in FAMILY_SETTINGS:
            raise ValueError(f"family={self.family!r}; expected one of {sorted(FAMILY_SETTINGS)}")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; expected one of {METHODS}")
        for name, value in FAMILY_SETTINGS[self.family].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.hidden, self.hnet_hidden = tuple(self.hidden or ()), tuple(self.hnet_hidden or ())
        if self.hnet_activation not in ("elu", "relu"):
            raise ValueError(f"hnet_activation={self.hnet_activation!r}; expected elu or relu")
        if self.model not in ("deterministic", "gaussian"):
            raise ValueError(f"model={self.model!r}; expected deterministic or gaussian")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction={self.train_fraction} must be in (0, 1]")
        if self.retrain_every is not None and self.retrain_every < 1:
            raise ValueError(f"retrain_every={self.retrain_every} must be >= 1")

    @property
    def gaussian(self) -> bool:
        return self.model == "gaussian"

    def cem(self) -> CEMConfig:
        return CEMConfig(
            int(self.horizon or 0),
            int(self.n_samples or 0),
            int(self.n_elites or 0),
            int(self.n_iters or 0),
            float(self.init_std or 0),
        )


class StateCodec:
    """Per-family feature map phi(s), training target of s -> s', and its inverse (raw units throughout)."""

    def __init__(self, family: str, state_dim: int) -> None:
        self.state_dim = state_dim
        # door: robocl state = proprio (24) + object (7); door angle at 24+3, knob angle at 24+5.
        # cheetah: dim 0 is the forward velocity (dropped from the input, predicted as a value), 2 the pitch.
        self.angles = {"push": [], "door": [27, 29], "cheetah": [2]}[family]
        self.drop = [0] if family == "cheetah" else []
        self.absolute = [0] if family == "cheetah" else []
        self.keep = [i for i in range(state_dim) if i not in self.angles and i not in self.drop]
        self.feature_dim = len(self.keep) + 2 * len(self.angles)

    def features(self, state: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., F): kept dims, then (cos, sin) of each angle."""
        if not self.angles and not self.drop:
            return state  # push: identity, and no gather copy in the planner's inner loop
        ang = state[..., self.angles]
        return torch.cat([state[..., self.keep], ang.cos(), ang.sin()], dim=-1)

    def target(self, state: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        delta = next_state - state
        delta[..., self.absolute] = next_state[..., self.absolute]
        return delta

    def compose(self, state: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        nxt = state + delta
        nxt[..., self.absolute] = delta[..., self.absolute]
        return nxt


class TaskData:
    """One task's transitions (raw units), its train/validation split and its input statistics."""

    def __init__(self, state_dim: int, action_dim: int) -> None:
        self.state = torch.zeros(0, state_dim)
        self.action = torch.zeros(0, action_dim)
        self.next_state = torch.zeros(0, state_dim)
        self.train = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.state)

    def add(self, state: np.ndarray, action: np.ndarray, next_state: np.ndarray, train: bool) -> None:
        self.state = torch.cat([self.state, torch.as_tensor(state, dtype=torch.float32)[None]])
        self.action = torch.cat([self.action, torch.as_tensor(action, dtype=torch.float32)[None]])
        self.next_state = torch.cat([self.next_state, torch.as_tensor(next_state, dtype=torch.float32)[None]])
        self.train = torch.cat([self.train, torch.tensor([train])])

    def stats(self, codec: StateCodec) -> dict[str, torch.Tensor]:
        """Per-dim mean and sample std over every stored transition; a std below 1e-9 becomes 1 (as [C]).
        Before any transition: mean 0, std 1 (the identity, so an early plan is not all-NaN)."""
        feats = codec.features(self.state)
        out = {}
        for name, x in (("feature", feats), ("action", self.action)):
            std = x.std(0) if len(x) > 1 else torch.ones(x.shape[1])
            mean = x.mean(0) if len(x) else torch.zeros(x.shape[1])
            out[f"{name}_mean"], out[f"{name}_std"] = mean, torch.where(std < 1e-9, 1.0, std)
        return out


def model_input(
    codec: StateCodec, stats: dict[str, torch.Tensor], state: torch.Tensor, action: torch.Tensor
) -> torch.Tensor:
    """z-scored (phi(s), a) with the task's own statistics: (..., F + A)."""
    feats = (codec.features(state) - stats["feature_mean"]) / stats["feature_std"]
    return torch.cat([feats, (action - stats["action_mean"]) / stats["action_std"]], dim=-1)


# ---------------------------------------------------------------------------------------------- losses
def task_loss(output: torch.Tensor, target: torch.Tensor, gaussian: bool) -> torch.Tensor:
    """Summed over the batch, averaged over the D output dims (the reference's scale, which beta assumes)."""
    dim = target.shape[-1]
    if not gaussian:
        return ((output - target) ** 2).sum() / dim
    mean, logvar = gaussian_head(output)
    return (((mean - target) ** 2) * torch.exp(-logvar) + logvar).sum() / dim


def gaussian_head(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2D) -> mean, soft-clamped log-variance (each (..., D))."""
    mean, logvar = output.chunk(2, dim=-1)
    logvar = LOGVAR_MAX - F.softplus(LOGVAR_MAX - logvar)
    return mean, LOGVAR_MIN + F.softplus(logvar - LOGVAR_MIN)


def output_regulariser(
    snapshots: Sequence[torch.Tensor], current: Sequence[torch.Tensor], beta: float, batch_size: int
) -> torch.Tensor:
    """beta * B * (1/t) sum_j ||W_j* - W_j||^2; tensors are (t, *shape), one row per earlier task."""
    n_prev = snapshots[0].shape[0]
    sq = sum(((s - c) ** 2).sum() for s, c in zip(snapshots, current, strict=True))
    return beta * batch_size * sq / n_prev


@torch.no_grad()
def adam_lookahead(optimizer: torch.optim.Adam) -> dict[nn.Parameter, torch.Tensor]:
    """The update Adam's next ``step()`` would add to each parameter with a gradient (from moment copies).

    Same arithmetic as torch's single-tensor Adam (no weight decay, amsgrad or maximize); the optimiser's
    state is only read.
    """
    out = {}
    for group in optimizer.param_groups:
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError("adam_lookahead supports plain Adam only (no weight decay, amsgrad, maximize)")
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(p, {})
            step = float(state["step"]) + 1 if state else 1.0
            m = state["exp_avg"] * beta1 + (1 - beta1) * p.grad if state else (1 - beta1) * p.grad
            v = state["exp_avg_sq"] * beta2 + (1 - beta2) * p.grad**2 if state else (1 - beta2) * p.grad**2
            denom = v.sqrt() / (1 - beta2**step) ** 0.5 + eps
            out[p] = -lr / (1 - beta1**step) * m / denom
    return out


# ---------------------------------------------------------------------------------------------- learner
class HnetLearner(nn.Module):
    """theta (the hypernetwork) plus one embedding per task; ``weights(t)``: the dynamics model of task t."""

    def __init__(self, config: HyperCRLConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config = config
        activation = {"elu": nn.ELU, "relu": nn.ReLU}[str(config.hnet_activation)]
        shapes = mlp_shapes(in_dim, config.hidden or (), out_dim)
        self.hnet = HyperNetwork(shapes, config.embedding_dim, config.hnet_hidden or (), activation)
        self.embeddings = nn.ParameterList()
        self.snapshots: list[torch.Tensor] = []

    def start_task(self, task: int, data: Sequence[TaskData]) -> None:
        """Snapshot h(e_j) for j < task, add e_task ~ N(0, 1), and create this task's two Adam optimisers."""
        del data  # HyperCRL replays nothing
        with torch.no_grad():
            self.hnet.eval()
            self.snapshots = [w.detach().clone() for w in self.hnet(self._previous(task))] if task else []
            self.hnet.train()
        gen = torch.Generator().manual_seed(_stream(self.config.seed, task, 0))
        while len(self.embeddings) <= task:
            self.embeddings.append(nn.Parameter(torch.randn(self.config.embedding_dim, generator=gen)))
        for j, e in enumerate(self.embeddings):
            e.requires_grad_(j == task)  # earlier embeddings are frozen
        self.opt_theta = torch.optim.Adam(self.hnet.parameters(), lr=self.config.lr)
        self.opt_emb = torch.optim.Adam([self.embeddings[task]], lr=self.config.lr)

    def end_task(self, task: int, data: Sequence[TaskData], batch: BatchFn) -> None:
        del task, data, batch

    def ensure_tasks(self, n_tasks: int) -> None:
        """Placeholders for ``n_tasks`` embeddings, so a checkpoint's state dict loads."""
        while len(self.embeddings) < n_tasks:
            self.embeddings.append(nn.Parameter(torch.zeros(self.config.embedding_dim), requires_grad=False))

    def _previous(self, task: int) -> torch.Tensor:
        return torch.stack([e.detach() for e in self.embeddings[:task]])  # (task, E)

    def weights(self, task: int) -> list[torch.Tensor]:
        return self.hnet(self.embeddings[task])

    def train_step(self, batch: BatchFn, task: int) -> dict[str, float]:
        """One HyperCRL step on a current-task batch; ``batch(j)`` gives (model input, target) of task j."""
        x, y = batch(task)
        cfg, theta = self.config, list(self.hnet.parameters())
        self.opt_theta.zero_grad(set_to_none=True)
        self.opt_emb.zero_grad(set_to_none=True)
        loss = task_loss(mlp_forward(x, self.weights(task)), y, cfg.gaussian)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([self.embeddings[task]], cfg.max_grad_norm)
        self.opt_emb.step()  # the embedding learns from the task loss only
        reg = torch.zeros(())
        if task:
            delta = adam_lookahead(self.opt_theta)  # detached: no backprop through dtheta
            ahead = {n: p + delta.get(p, 0.0) for n, p in self.hnet.named_parameters()}
            current = torch.func.functional_call(self.hnet, ahead, (self._previous(task),))
            reg = output_regulariser(self.snapshots, current, float(cfg.beta), len(x))
            reg.backward()  # adds onto theta's task-loss gradients
        torch.nn.utils.clip_grad_norm_(theta, cfg.max_grad_norm)
        self.opt_theta.step()
        return {"loss": loss.item() / len(x), "reg": reg.item()}

    def n_data_bytes(self, data: Sequence[TaskData], task: int) -> int:
        return _bytes(data[task])


def _bytes(d: TaskData) -> int:
    return sum(t.numel() * t.element_size() for t in (d.state, d.action, d.next_state, d.train))


def _stream(seed: int, task: int, stream: int) -> int:
    """A seed of its own for (run seed, task, purpose): resuming at a task start replays it exactly."""
    return int(np.random.SeedSequence([seed, task, stream]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- algorithm
class HyperCRL:
    """The continual loop of section 4 of the reference: per task, random steps, then MPC with retraining."""

    name: ClassVar[str] = "hypercrl"

    def __init__(self, config: HyperCRLConfig, device: str | torch.device = "cpu") -> None:
        import robocl_envs

        if torch.device(device).type != "cpu":
            raise ValueError("HyperCRL runs on the CPU (small models, env-bound)")
        torch.manual_seed(config.seed)
        self.config = config
        self.env_ids = robocl_envs.FAMILIES[config.family][: config.n_tasks]
        probe = gym.make(self.env_ids[0])
        probe.reset(seed=0)
        self.state_dim = int(probe.unwrapped.get_state().shape[0])  # type: ignore[attr-defined]
        self.action_dim = int(np.prod(probe.action_space.shape or ()))
        probe.close()
        self.codec = StateCodec(config.family, self.state_dim)
        out_dim = self.state_dim * (2 if config.gaussian else 1)
        self.learner = make_learner(config, self.codec.feature_dim + self.action_dim, out_dim)
        self.stats: list[dict[str, torch.Tensor]] = []
        self.data: list[TaskData] = []
        self.episodes: list[list[int]] = []  # store episode indices per finished task
        self.log = ContinualLog(len(self.env_ids))
        self.tasks_done = 0
        self.step = 0  # env steps over the whole run (random + MPC), the evaluator's clock
        self.model_errors: list[list[float]] = []  # after task i: model_error(k) for every k <= i

    # ------------------------------------------------------------------ model and planner
    def predict_next(
        self, weights: Sequence[torch.Tensor], task: int, state: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        """Mean next state (..., D) from raw (..., D) states and (..., A) actions, with task's statistics."""
        out = mlp_forward(model_input(self.codec, self.stats[task], state, action), weights)
        return self.codec.compose(state, out[..., : self.state_dim])

    def _fold_input_normalisation(
        self, weights: Sequence[torch.Tensor], task: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first layer with the task's z-scoring folded in, split into its feature and action columns:
        W (x - m) / s + b = (W / s) x + (b - (W / s) m)."""
        st = self.stats[task]
        mean = torch.cat([st["feature_mean"], st["action_mean"]])
        weight = weights[0] / torch.cat([st["feature_std"], st["action_std"]])
        bias = weights[1] - weight @ mean
        return weight[:, : self.codec.feature_dim], weight[:, self.codec.feature_dim :], bias

    @torch.no_grad()
    def plan(
        self,
        task: int,
        state: np.ndarray,
        weights: Sequence[torch.Tensor],
        reward_fn: Callable[..., torch.Tensor],
        generator: torch.Generator,
    ) -> np.ndarray:
        """CEM over the learned model from the true state; the first action of the best sequence (A,)."""
        s0 = torch.as_tensor(state, dtype=torch.float32)
        dtype = getattr(torch, self.config.planner_dtype)
        w_state, w_action, bias = (w.to(dtype) for w in self._fold_input_normalisation(weights, task))
        hidden_weights = [w.to(dtype) for w in weights[2:]]

        def cost(actions: torch.Tensor) -> torch.Tensor:  # (K, H, A) -> (K,)
            # The action half of the first layer for every step of every sequence in one matmul; each
            # horizon step then only adds the state half. States stay float32 whatever the layers' dtype.
            action_term = F.linear(actions.to(dtype), w_action, bias)  # (K, H, hidden)
            s, states = s0.expand(actions.shape[0], -1), []
            for h in range(actions.shape[1]):
                feats = self.codec.features(s).to(dtype)
                first = torch.addmm(action_term[:, h], feats, w_state.T).relu_()
                out = mlp_forward(first, hidden_weights)
                s = self.codec.compose(s, out[..., : self.state_dim].float())
                states.append(s)
            nxt = torch.stack(states, 1)  # (K, H, D)
            prev = torch.cat([s0.expand(len(nxt), 1, -1), nxt[:, :-1]], 1)
            return -reward_fn(prev, actions, nxt).sum(1)

        return cem_plan(cost, self.action_dim, self.config.cem(), generator)[0].numpy()

    @torch.no_grad()
    def model_error(self, task: int) -> float:
        """Mean squared error of the task's dynamics model on its validation split, in the raw units of
        the predicted state change (the quantity the model is trained on; per-dim normalising would let
        dims that barely move in one task dominate). Deterministic, so forgetting shows here without the
        noise of MPC returns."""
        d = self.data[task]
        val = ~d.train
        if not bool(val.any()):
            return float("nan")
        state, action, nxt = d.state[val], d.action[val], d.next_state[val]
        pred = self.predict_next(self.learner.weights(task), task, state, action)
        return float(((self.codec.target(state, pred) - self.codec.target(state, nxt)) ** 2).mean())

    def evaluate(self, task: int) -> float:
        """Mean MPC episode return on ``task`` with its own embedding (or head) and statistics."""
        env = gym.make(self.env_ids[task])
        gen = torch.Generator().manual_seed(_stream(self.config.seed, task, 1_000_000 + self.step))
        with torch.no_grad():
            weights = [w.detach() for w in self.learner.weights(task)]
        returns = []
        for ep in range(int(self.config.eval_episodes or 0)):
            env.reset(seed=_stream(self.config.seed, task, 100 + ep))  # disjoint from the training resets
            total, done, n = 0.0, False, 0
            while not done and n != self.config.eval_max_steps:
                state = env.unwrapped.get_state()  # type: ignore[attr-defined]
                action = self.plan(task, state, weights, env.unwrapped.reward_fn, gen)  # type: ignore[attr-defined]
                _, reward, terminated, truncated, _ = env.step(_clip(env, action))
                total, done, n = total + float(reward), terminated or truncated, n + 1
            returns.append(total)
        env.close()
        return float(np.mean(returns))

    # ------------------------------------------------------------------ the continual loop
    def run(self, run_dir: str | Path, on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Run (or resume) the task sequence; returns the continual metrics. ``on_step(step, task)`` is
        called after every env step (tests use it to simulate a kill)."""
        run_dir = Path(run_dir)
        path = run_dir / "data.zarr"
        store = (
            TrajectoryStore.open(path, "a")
            if (path / "zarr.json").exists()
            else TrajectoryStore.create(path, self._features(), fps=10.0, meta={"family": self.config.family})
        )
        with store:
            self._reload_data(store)
            evaluator = ContinualEvaluator(len(self.env_ids), self.evaluate, int(self.config.eval_every or 1))
            evaluator.log = self.log
            for task in range(self.tasks_done, len(self.env_ids)):
                episodes = self._run_task(task, evaluator, on_step)
                evaluator.end_task(self.step, task)
                self.learner.end_task(task, self.data, self._batch_fn(torch.Generator()))
                self.model_errors.append([self.model_error(k) for k in range(task + 1)])
                # Data first, checkpoint second: a kill in between redoes the task (its stale episodes stay
                # in the store, but only the indices the checkpoint lists are read back).
                self.episodes.append(store.add_episodes(episodes))
                self.tasks_done = task + 1
                self.save(run_dir / "checkpoints" / f"task_{task:02d}")
                metrics = self.write_metrics(run_dir)
        return metrics

    def _run_task(
        self, task: int, evaluator: ContinualEvaluator, on_step: Callable[[int, int], None] | None
    ) -> list[tuple[dict[str, Any], Any, dict[str, Any]]]:
        from robocl.store import EpisodeMeta

        cfg = self.config
        env = gym.make(self.env_ids[task])
        reward_fn = env.unwrapped.reward_fn  # type: ignore[attr-defined]
        rng = np.random.default_rng(_stream(cfg.seed, task, 1))
        plan_gen = torch.Generator().manual_seed(_stream(cfg.seed, task, 2))
        train_gen = torch.Generator().manual_seed(_stream(cfg.seed, task, 3))
        env.reset(seed=_stream(cfg.seed, task, 4))
        self.data.append(TaskData(self.state_dim, self.action_dim))
        self.stats.append(self.data[task].stats(self.codec))
        self.learner.start_task(task, self.data)
        state = env.unwrapped.get_state()  # type: ignore[attr-defined]
        episodes, steps = [], []
        n_random, n_mpc = int(cfg.n_random or 0), int(cfg.n_mpc or 0)
        for it in range(n_random + n_mpc):
            if it < n_random:
                action = rng.standard_normal(self.action_dim).astype(np.float32)
            else:
                if (it - n_random) % int(cfg.retrain_every or 1) == 0:
                    self.retrain(task, train_gen)
                with torch.no_grad():  # W_t once per env step, shared by every CEM rollout
                    weights = [w.detach() for w in self.learner.weights(task)]
                action = self.plan(task, state, weights, reward_fn, plan_gen).astype(np.float32)
            _, reward, terminated, truncated, _ = env.step(_clip(env, action))
            nxt = env.unwrapped.get_state()  # type: ignore[attr-defined]
            train = bool(rng.random() < cfg.train_fraction)
            self.data[task].add(state, action, nxt, train)  # the unclipped action, as the planner sees it
            steps.append(
                {
                    "observation.state": state,
                    "action": action,
                    "reward": reward,
                    "next_state": nxt,
                    "train": train,
                }
            )
            state = nxt
            last = it == n_random + n_mpc - 1
            if terminated or truncated or last:
                meta = EpisodeMeta(
                    task=self.env_ids[task],
                    terminated=terminated,
                    truncated=not terminated,
                    tags=(f"task{task}", cfg.method),
                )
                batch = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
                episodes.append((batch, meta, {"observation.state": nxt, "next_state": nxt}))
                steps = []
                if not last:
                    env.reset()
                    state = env.unwrapped.get_state()  # type: ignore[attr-defined]
            self.step += 1
            evaluator.maybe_evaluate(self.step, task)
            if on_step is not None:
                on_step(self.step, task)
        env.close()
        return episodes

    def retrain(self, task: int, generator: torch.Generator) -> list[dict[str, float]]:
        """Refresh the task's statistics, then G gradient steps over shuffled epochs of its train split."""
        self.stats[task] = self.data[task].stats(self.codec)
        train_idx = torch.nonzero(self.data[task].train).flatten()
        if len(train_idx) == 0:
            return []
        size = min(self.config.batch_size, len(train_idx))
        order: list[torch.Tensor] = []
        out = []
        for _ in range(int(self.config.grad_steps or 0)):
            if not order:  # a new epoch; the last partial batch is dropped
                perm = train_idx[torch.randperm(len(train_idx), generator=generator)]
                order = list(perm[: len(perm) // size * size].split(size))
            idx = order.pop(0)
            batch = self._batch_fn(generator)
            out.append(self.learner.train_step(_current_batch(batch, task, idx), task))
        return out

    def _batch_fn(self, generator: torch.Generator) -> BatchFn:
        """batch(j, idx): (model input, target) of task j's transitions idx (None: a random train batch)."""

        def batch(j: int, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            d = self.data[j]
            if idx is None:
                pool = torch.nonzero(d.train).flatten()
                idx = pool[torch.randint(len(pool), (self.config.batch_size,), generator=generator)]
            x = model_input(self.codec, self.stats[j], d.state[idx], d.action[idx])
            return x, self.codec.target(d.state[idx], d.next_state[idx])

        return batch

    def _features(self) -> dict[str, Feature]:
        return {
            "observation.state": Feature("state", "float32", (self.state_dim,)),
            "next_state": Feature("state", "float32", (self.state_dim,)),
            "action": Feature("action", "float32", (self.action_dim,)),
            "reward": Feature("reward", "float32"),
            "train": Feature("flag", "bool"),
        }

    def _reload_data(self, store: TrajectoryStore) -> None:
        """Rebuild finished tasks' transitions from the store (replay and memory counts read them)."""
        self.data = self.data[: self.tasks_done]
        for task in range(len(self.data), self.tasks_done):
            d = TaskData(self.state_dim, self.action_dim)
            for index in self.episodes[task]:
                ep = store.episode(index)
                d.state = torch.cat([d.state, torch.as_tensor(ep["observation.state"])])
                d.action = torch.cat([d.action, torch.as_tensor(ep["action"])])
                d.next_state = torch.cat([d.next_state, torch.as_tensor(ep["next_state"])])
                d.train = torch.cat([d.train, torch.as_tensor(ep["train"])])
            self.data.append(d)

    def write_metrics(self, run_dir: Path) -> dict[str, Any]:
        metrics = continual_metrics(self.log)
        metrics["memory_bytes"] = self.memory_bytes()
        errors = self.model_errors
        metrics["model_error_matrix"] = errors
        metrics["model_error_forgetting"] = [errors[-1][k] - errors[k][k] for k in range(len(errors) - 1)]
        (run_dir / "continual.json").write_text(
            json.dumps(
                {"metrics": metrics, "log": self.log.to_dict(), "config": asdict(self.config)}, indent=2
            )
        )
        plot_curves(self.log, run_dir / "curves.png", ylabel="episode reward")
        return metrics

    def memory_bytes(self) -> dict[str, int]:
        """Model parameters and the transitions training still reads (per the method); a coreset's kept
        transitions count as data, not model."""
        state = self.learner.state_dict()
        model = sum(t.numel() * t.element_size() for k, t in state.items() if not k.startswith("mem_core_"))
        task = max(self.tasks_done - 1, 0)
        return {"model": model, "data": self.learner.n_data_bytes(self.data, task)}

    # ------------------------------------------------------------------ checkpoints
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"learner.{k}": v for k, v in self.learner.state_dict().items()}
        for t, stats in enumerate(self.stats):
            out.update({f"stats.{t}.{k}": v for k, v in stats.items()})
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        n_tasks = len({k.split(".")[1] for k in tensors if k.startswith("stats.")})
        self.stats = [
            {k.split(".")[2]: v for k, v in tensors.items() if k.startswith(f"stats.{t}.")}
            for t in range(n_tasks)
        ]
        self.learner.ensure_tasks(n_tasks)
        self.learner.load_state_dict(
            {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
        )

    def trainer_state(self) -> dict[str, Any]:
        return {
            "tasks_done": self.tasks_done,
            "step": self.step,
            "log": self.log.to_dict(),
            "episodes": self.episodes,
            "model_errors": self.model_errors,
        }

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.tasks_done, self.step = int(state["tasks_done"]), int(state["step"])
        self.log = ContinualLog.from_dict(state["log"])
        self.episodes = [list(map(int, e)) for e in state["episodes"]]
        self.model_errors = [list(map(float, row)) for row in state["model_errors"]]

    def checkpoint_header(self) -> dict[str, Any]:
        spec = {"env_ids": self.env_ids, "state_dim": self.state_dim, "action_dim": self.action_dim}
        return {"config": asdict(self.config), "spec": spec, "seed": self.config.seed}

    def save(self, path: Path) -> Path:
        return save_checkpoint(
            path,
            method=self.name,
            step=self.step,
            tensors=self.tensors(),
            trainer_state=self.trainer_state(),
            **self.checkpoint_header(),
        )

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str = "cpu") -> HyperCRL:
        names = {f.name for f in fields(HyperCRLConfig)}
        algo = cls(HyperCRLConfig(**{k: v for k, v in ckpt.config.items() if k in names}), device)
        algo.load_tensors(ckpt.tensors)
        algo.load_trainer_state(ckpt.trainer_state())
        return algo

    @classmethod
    def open(cls, config: HyperCRLConfig, run_dir: str | Path) -> HyperCRL:
        """A new run, or the one in ``run_dir`` from its last per-task checkpoint (a killed run resumes at the
        start of the task it was in); the resumed config must match."""
        done = sorted((Path(run_dir) / "checkpoints").glob("task_[0-9][0-9]"))
        if not done:
            return cls(config)
        ckpt = load_checkpoint(done[-1])
        if ckpt.config != json.loads(json.dumps(asdict(config))):
            raise ValueError(f"{run_dir} holds a run with another config; use a new --run-dir")
        return cls.from_checkpoint(ckpt)

    def policy(self, task: int = -1) -> PlannerPolicy:
        """MPC with the model generated for ``task`` (default: the last task trained), as a robocl policy."""
        task = task % len(self.env_ids)
        env = gym.make(self.env_ids[task])
        gen = torch.Generator().manual_seed(_stream(self.config.seed, task, 2_000_000))
        with torch.no_grad():
            weights = [w.detach() for w in self.learner.weights(task)]
        reward_fn = env.unwrapped.reward_fn  # type: ignore[attr-defined]
        return PlannerPolicy(lambda state: self.plan(task, state, weights, reward_fn, gen))


class PlannerPolicy:
    """reset()/predict(obs) around a planner of flat ``get_state()`` vectors.

    The rollout engine's dict observations are turned back into that vector (:func:`robocl.features.
    flatten_obs`: robocl's arm tasks' ``get_state`` is proprioception then object state; the half-cheetahs'
    is their whole observation).
    """

    def __init__(self, plan: Callable[[np.ndarray], np.ndarray]) -> None:
        self.plan = plan

    def reset(self) -> None:
        """CEM restarts from N(0, sigma0) at every step, so nothing carries over between episodes."""

    def predict(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        state = flatten_obs(obs)
        if state.ndim == 1:
            return self.plan(state)
        return np.stack([self.plan(s) for s in state])


def make_learner(config: HyperCRLConfig, in_dim: int, out_dim: int) -> nn.Module:
    if config.method == "hypercrl":
        return HnetLearner(config, in_dim, out_dim)
    from robocl.algos.cl_baselines import MultiHeadLearner

    return MultiHeadLearner(config, in_dim, out_dim)


def _current_batch(batch: BatchFn, task: int, idx: torch.Tensor) -> BatchFn:
    """``batch`` with the epoch's indices fixed for the current task (other tasks draw at random)."""
    return lambda j, i=None: batch(j, idx if j == task else i)


def _clip(env: gym.Env, action: np.ndarray) -> np.ndarray:
    space = env.action_space
    return np.clip(action, space.low, space.high)  # type: ignore[attr-defined]
