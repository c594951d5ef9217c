"""What HyperCRL and its continual-learning baselines share: the configuration, each task's transitions and
statistics, the state feature map, and the dynamics loss (robocl's notes: refs hypercrl.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robocl.algos.cem import CEMConfig

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
    # Adam learning rate of theta and of the embedding. The reference's 1e-4 underfits at CPU budgets: on
    # random-action data (benchmarks/results/hypercrl_lr_{door,push}.json, 5 tasks, 800/1000 steps each),
    # door task-0 validation error 0.221 at 1e-4, 0.125 at 3e-4, 0.108 at 1e-3 (fine-tuned MLP 0.159);
    # push 0.0185 / 0.0163 / 0.0166. Model-error forgetting stays below 0.3% of fine-tuning's at 1e-3
    # (door 0.0007 vs 0.264, push 0.0001 vs 0.048).
    lr: float = 1e-3
    baseline_lr: float = 1e-3  # Adam learning rate of the multi-head baselines
    max_grad_norm: float = 5.0  # gradient-norm clip of theta and of the embedding
    batch_size: int = 100  # transitions per gradient step
    train_fraction: float = 0.75  # probability that a transition joins the train split (else validation)
    # Early stopping per retraining session; 0 = off (the reference trains each session's G updates to the
    # end). This share of a task's validation transitions becomes its selection split: every
    # early_stop_every updates and at the session's end the current task's model is scored there, and the
    # session ends on its best weights (Keras EarlyStopping's restore_best_weights: the weights only, the
    # optimisers' moments go on). Carved from validation, not train, so every method trains on the same
    # transitions as without it, and the reported model error (the rest of the validation split) never
    # selected the weights. With 3,000 updates per door task (5 tasks, 3 seeds, 0.4 / 50,
    # hypercrl_door_es_g1500.json, 4b64c78) HyperCRL's final model error went from 0.162 / 0.171 (seeds
    # 855 / 1045, without) to 0.128 / 0.159, 1.13x multi-task replay's over 3 seeds (without: 1.31x): the
    # hypernetwork overfits a door task's ~900 train transitions after a few hundred updates (median kept
    # update 425 of 1,500), where the MLP baselines keep improving (median 1,475-1,500).
    # On push (1,000 updates per task, hypercrl_push_es.json) it helped multi-task replay instead (0.0204 ->
    # 0.0180) and not HyperCRL (0.0204 -> 0.0222): off by default.
    early_stop_fraction: float = 0.0
    early_stop_every: int = 50  # updates between selection scores (with early_stop_fraction)
    n_random: int | None = None  # env steps per task with N(0, I) actions before planning starts
    n_mpc: int | None = None  # env steps per task with the CEM planner
    retrain_every: int | None = None  # MPC env steps between retraining sessions (K)
    grad_steps: int | None = None  # gradient steps per retraining session (G)
    horizon: int | None = None  # CEM planning horizon H
    n_samples: int | None = None  # CEM population size
    n_elites: int | None = None  # CEM elites
    n_iters: int | None = None  # CEM refits before the final best-of-population draw
    init_std: float | None = None  # CEM initial std, raw action units
    # CEM refits of a plan warm-started from the previous step's (shifted) plan; None: every plan starts
    # from N(0, init_std^2) with n_iters refits, as the reference does (robocl.algos.cem)
    warm_iters: int | None = None
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
        if not 0 <= self.early_stop_fraction < 1 or self.early_stop_every < 1:
            raise ValueError(
                f"early_stop_fraction={self.early_stop_fraction} must be in [0, 1) and "
                f"early_stop_every={self.early_stop_every} >= 1"
            )
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
            self.warm_iters,
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
        if self.absolute:  # an empty index still costs an index_put per planner step
            nxt[..., self.absolute] = delta[..., self.absolute]
        return nxt


class TaskData:
    """One task's transitions (raw units), its train/validation split and its input statistics.

    Rows live in arrays that double when full, so an append is amortised O(1) (a reference door task holds
    62k transitions); the properties are views of the filled rows."""

    def __init__(self, state_dim: int, action_dim: int) -> None:
        self._state = torch.zeros(64, state_dim)
        self._action = torch.zeros(64, action_dim)
        self._next_state = torch.zeros(64, state_dim)
        self._train = torch.zeros(64, dtype=torch.bool)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    @property
    def state(self) -> torch.Tensor:
        return self._state[: self.n]

    @property
    def action(self) -> torch.Tensor:
        return self._action[: self.n]

    @property
    def next_state(self) -> torch.Tensor:
        return self._next_state[: self.n]

    @property
    def train(self) -> torch.Tensor:
        return self._train[: self.n]

    def add(self, state: np.ndarray, action: np.ndarray, next_state: np.ndarray, train: bool) -> None:
        self.extend(np.asarray(state)[None], np.asarray(action)[None], np.asarray(next_state)[None], [train])

    def extend(self, state: Any, action: Any, next_state: Any, train: Any) -> None:
        """Append rows (leading axis) at once."""
        m = len(state)
        if self.n + m > len(self._state):
            size = max(2 * len(self._state), self.n + m)
            for name in ("_state", "_action", "_next_state", "_train"):
                old = getattr(self, name)
                grown = old.new_zeros((size, *old.shape[1:]))
                grown[: self.n] = old[: self.n]
                setattr(self, name, grown)
        rows = slice(self.n, self.n + m)
        self._state[rows] = torch.as_tensor(np.asarray(state), dtype=torch.float32)
        self._action[rows] = torch.as_tensor(np.asarray(action), dtype=torch.float32)
        self._next_state[rows] = torch.as_tensor(np.asarray(next_state), dtype=torch.float32)
        self._train[rows] = torch.as_tensor(np.asarray(train), dtype=torch.bool)
        self.n += m

    def nbytes(self) -> int:
        """Bytes of the transitions held (what a method that replays them keeps in memory)."""
        return sum(
            t.numel() * t.element_size() for t in (self.state, self.action, self.next_state, self.train)
        )

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


def stream_seed(seed: int, task: int, stream: int) -> int:
    """A seed of its own for (run seed, task, purpose): resuming at a task start replays it exactly."""
    return int(np.random.SeedSequence([seed, task, stream]).generate_state(1)[0])
