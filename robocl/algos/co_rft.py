"""CO-RFT: chunked offline RL fine-tuning of a vision-language-action policy (Huang, Fang et al. 2025,
arXiv 2508.02219; robocl's notes with the source of every default: refs co-rft.md and flow-policies.md).

A VLA-style policy (a conv encoder per camera, proprioception, a frozen sentence encoder for the
instruction, a transformer trunk, and a flow-matching action expert that turns noise into a chunk of h
actions) is trained in two stages on a few dozen demonstrations. Stage 1 is imitation with every parameter
trainable (the IL policy, which is also the baseline). Stage 2 is offline RL whose unit of decision is the
chunk: a causal critic "expert" beside the policy reads the trunk's feature and the chunk and outputs Q^(j)
for every prefix a_{t..t+j-1}; each prefix has its own n-step target, and a Cal-QL conservative term keeps Q
of unseen chunks down (but not below the Monte-Carlo return of the logged episode). The policy improves
through the critic in one of three ways (``actor``; ``best_of_n`` by default for a flow head, see the
config):

- ``best_of_n`` (Q-chunking's "QC"): the flow proposes N chunks (one from x_0 = 0, the others from noise of
  several scales) and the one with the highest Q^(h) is used as A' in the TD target; when acting, the one
  with the highest Q^(k) of the k actions executed before the next choice (``rank_executed``; QC executes
  whole chunks, k = h). The flow itself stays as stage 1 left it, so the policy never leaves the
  demonstrations' support.
- ``distill`` (FQL / "QC-FQL"): a one-step actor maps noise to a chunk, trained to match the flow's sample
  from the same noise (weight ``distill_alpha``) while maximising Q^(h).
- ``td3_bc``: the regression head's TD3+BC update (for ``head="regression"``).

Choices where the paper is silent ([R] in the notes: the closest related work's default):
- chunked TD target per prefix (T-SAC's multi-horizon critic) with Q-chunking's in-chunk discounted sum;
  ``critic_loss="full"`` trains only the last valid prefix instead (the Q-chunking backup);
- twin critics, TD3 min over both in the target, Polyak tau 0.005 after every critic step (TD3/QC); acting
  by best-of-N ranks candidates by the mean over both (QC's q_agg);
- Cal-QL conservative term (temperature 1) on Q^(h) (Nakamoto et al.), weight 1.0 rather than Cal-QL's 5
  (measured; see the config);
- reward -1 per step until success, 0 at the success step (Q-chunking's robomimic convention);
- regression head: RoboVLMs' loss (Huber on arm channels + 0.01 x BCE on the gripper) and TD3+BC (delay 2,
  target noise 0.2 clipped at 0.5; alpha_bc rescaled to this BC term, see the config).

Deviations and why:
- The bootstrap for prefix j needs the history at o_{t+j}; the store's sampler gives it for j = h_eff
  only. With the trunk frozen (the default) every history's feature is computed once and looked up by id;
  with a trained trunk :class:`~robocl.store.chunked.ChunkedTDSampler` gathers the other h-1 histories
  (exact targets, at h times the observation reads; ``critic_loss="full"`` avoids that cost).
- Best-of-N with a frozen trunk draws each history's N candidates once per stage and re-ranks them under
  the target critics every ``bon_refresh`` updates (the target's argmax is at most that stale), instead of
  ranking B x h x N fresh samples every update, which cost ~10x an imitation update on a CPU.
  By default (``bon_ranked_target``) it also bootstraps from the value the ranking gave the chosen
  chunk (held until the next ranking), and ``cql_fraction`` computes the conservative term at a share of
  the batch's contexts (an eighth by default): cheaper estimators of the same targets that halve an
  update's arithmetic with success unchanged in the benchmark (see the config).
- The flow is not trained in stage 2 (FQL and QC keep fitting it): stage 1 fitted it on the same data, and a
  frozen flow keeps the candidate table valid.
- The distilled actor's Q term is divided by mean|Q| (stop-gradient; FQL's optional ``normalize_q_loss``),
  so ``distill_alpha`` does not depend on the reward scale.
- The TD loss averages over valid (unpadded) prefixes rather than dividing by h, so the per-prefix and the
  full-chunk variants have the same scale.
- CQL samples are not importance-weighted by default: the deterministic actors have no log-density (the
  notes' [N] choice), and weighting only the uniform samples by h*d*log 2 (35 for h=10, d=5) would let
  them swamp the policy samples, which are the ones Cal-QL calibrates. ``cql_importance_sample`` restores it.
- 3 CQL samples per kind, not Cal-QL's 10: the term dominates an update's cost, and 3 gave as good a
  critic gradient (see the config comment); ``cql_n_samples=10`` restores Cal-QL's count.
- The trunk is frozen in stage 2 by default (see the config). With ``rl_train_backbone=True`` it learns
  through the critic loss only and the actor reads it detached (DrQ-v2's convention), so one optimiser
  owns each parameter.
- For an episode that did not terminate, V_MC adds r_last / (1 - gamma) for the steps after the cut
  (Cal-QL's value for failed episodes with a constant reward).
- ``val_fraction`` of the episodes (seeded) are held out of stage 2 to measure the critic: Q^(h) of the
  logged chunks against their Monte-Carlo returns, and the drop in Q when the logged chunk is perturbed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from robocl.algos.bc import PolicySpec
from robocl.algos.chunk_losses import (
    chunk_bc_loss,
    chunked_targets,
    conservative_loss,
    critic_td_loss,
    distill_actor_loss,
    soft_update,
    td3_bc_actor_loss,
    td_prefixes,
)
from robocl.algos.co_rft_config import CORFTConfig
from robocl.checkpoint import Checkpoint, load_checkpoint
from robocl.features import check_training_data, data_world, normalization_stats, state_keys
from robocl.nets.critic import PrefixMLPCritic
from robocl.nets.flow import OneStepActor
from robocl.nets.language import LanguageEncoder
from robocl.nets.normalize import CONSTANT_SPREAD
from robocl.nets.relative import (
    AXES,
    RelativePositions,
    entity_positions,
    position_columns,
    relative_position_pairs,
    scene_position_columns,
)
from robocl.nets.transformer import ChunkCritic
from robocl.nets.vla import (
    BestOfN,
    ChunkChooser,
    FlowChooser,
    OneStep,
    VLAPolicy,
    VLAPolicyNet,
    prefer_mode,
)
from robocl.run.loop import guarded_step, to_torch
from robocl.run.runtime import seeded
from robocl.store import StoreView, TrajectoryStore, WindowSampler
from robocl.store.chunked import ChunkedTDSampler, chunk_windows, mc_returns, step_rewards


# ---------------------------------------------------------------------------------------------- algorithm
class CORFT:
    """Stage ``"il"``: ``update`` is one imitation step on every parameter (flow matching, or the regression
    loss). :meth:`start_rl` builds the critics, the target networks, the stage-2 actor and optimisers, and
    switches ``update`` to one chunked critic step plus the actor's step (none for best-of-N, whose policy is
    the frozen flow ranked by the critic). Checkpoints record the stage, so both load with
    :func:`robocl.load_policy`.

    Initialising from a pretrained backbone (:meth:`init_backbone`, ``--init``): a robocl checkpoint of this
    policy, or a ``.safetensors`` file whose tensors are named ``trunk.<name>`` and match
    :class:`robocl.nets.transformer.TokenTrunk` built with the same config and store (same state keys,
    cameras, language dimension and widths). A user's own torch backbone therefore has to be saved as such
    a state dict; every trunk tensor must be present with the same shape (the action head is copied too
    when its shapes match).
    """

    name: ClassVar[str] = "co-rft"

    def __init__(
        self, config: CORFTConfig, spec: PolicySpec, device: str | torch.device = "cpu", *, stage: str = "il"
    ) -> None:
        self.config, self.spec, self.device = config, spec, torch.device(device)
        with seeded(config.seed):
            self.policy_net = VLAPolicyNet(config, spec).to(self.device)
        # fused: one kernel for every parameter; the per-parameter loop took 3 of a ~27 ms stage-2 update
        # on one CPU thread (a 128-wide critic), for the same Adam.
        self.il_opt = torch.optim.AdamW(
            self.policy_net.parameters(), lr=config.il_lr, weight_decay=config.weight_decay, fused=True
        )
        self.stage, self.step = "il", 0
        self._language: LanguageEncoder | None = None
        # Stage 2 with a frozen trunk: the sampler whose history ids batches carry; per history its feature
        # (n_histories, d), best-of-N's candidates (n_histories, N, h, A) and the index of the candidate the
        # target critics rank first (n_histories,).
        self._histories: ChunkedTDSampler | None = None
        self._features: torch.Tensor | None = None
        self._candidates: torch.Tensor | None = None
        self._choice: torch.Tensor | None = None
        self._choice_value: torch.Tensor | None = None  # min_c Q_targ of each history's choice at ranking
        self.one_step: OneStepActor | None = None  # the distilled actor of stage 2
        if stage == "rl":
            self.start_rl()

    @classmethod
    def from_store(
        cls,
        config: CORFTConfig,
        store: TrajectoryStore,
        device: str = "cpu",
        *,
        language: LanguageEncoder | None = None,
    ) -> CORFT:
        """Shapes and statistics from ``store`` (state keys by default: every state feature), checked first;
        task embeddings from ``language`` or the config's model."""
        feats = store.features
        if config.state_keys is None:  # every state feature but those the trunk learns to predict
            keys = tuple(k for k in state_keys(store) if k not in config.aux_state_keys)
            config = replace(config, state_keys=keys)
        read = (*config.state_keys, *config.aux_state_keys)  # the auxiliary features are read in training
        check_training_data(store, method="co-rft", state=read, images=config.image_keys)
        lang_dim, embeddings = 0, None
        if config.language_model is not None and len(store.tasks) > 1:  # one instruction is a constant
            if (store.episodes["task_index"] < 0).any():
                raise ValueError("language conditioning needs a task string on every episode")
            language = language or LanguageEncoder(config.language_model)
            embeddings = language.encode(store.tasks)
            lang_dim = language.dim
        names = {k: feats[k].names for k in config.state_keys}
        pairs = relative_position_pairs(names) if config.relative_positions else []
        dropped = scene_position_columns(names) if pairs and not config.absolute_positions else []
        # The positions the trunk learns to predict; every column of features that name none.
        aux_names = {k: feats[k].names for k in config.aux_state_keys}
        n_aux = sum(int(np.prod(feats[k].shape)) for k in config.aux_state_keys)
        aux_stats = normalization_stats(store, config.aux_state_keys)[0] if config.aux_state_keys else {}
        aux_std = [np.asarray(aux_stats[k]["std"]).reshape(-1) for k in config.aux_state_keys]
        varying = np.concatenate(aux_std) >= CONSTANT_SPREAD if aux_std else np.ones(0, dtype=bool)
        # A column the demos hold constant (pick-place's plate.z: the plate lies on the table) is known, so
        # the readout leaves it at its mean: regressed, its error would reach the head in metres, as the
        # normaliser leaves a constant unscaled (4e5a834 to here: 3-5 cm off, where x and y are 1 cm).
        aux_columns = [c for c in position_columns(aux_names) or range(n_aux) if varying[c]]
        if config.aux_state_keys and not aux_columns:
            raise ValueError(f"aux_state_keys {list(config.aux_state_keys)}: no column varies in the demos")
        instructed = config.detector_instructed and lang_dim > 0  # one instruction says nothing
        spec = PolicySpec(
            obs_shapes={k: tuple(feats[k].shape) for k in (*config.state_keys, *config.image_keys)},
            action_dim=int(np.prod(feats["action"].shape)),
            fps=store.fps,
            extra={
                "tasks": list(store.tasks),
                "lang_dim": lang_dim,
                "stage": "il",
                "relative_positions": [list(p) for p in pairs],
                "relative_resolution": config.relative_resolution if pairs else 0.0,
                "dropped_state_columns": dropped,
                "aux_state_shapes": {k: list(feats[k].shape) for k in config.aux_state_keys},
                "aux_state_columns": aux_columns,
                **({"detector": detector_spec(config, store, instructed)} if config.detect_entity else {}),
                **(
                    {"estimated_positions": estimated_positions_spec(config, store)}
                    if config.head_input == "positions"
                    else {}
                ),
            },
            world=data_world(store, (*config.state_keys, *config.image_keys)),
        )
        algo = cls(config, spec, device)
        algo._language = language
        state_stats, steps = normalization_stats(store, config.state_keys)
        stats = {**store.stats, **state_stats}
        if pairs:  # over the same steps as the state features' statistics
            state = np.concatenate([store.steps(k).reshape(store.n_steps, -1) for k in config.state_keys], 1)
            relative = RelativePositions(pairs).numpy(state[steps])
            stats["relative"] = {"mean": relative.mean(0), "std": relative.std(0)}
        stats.update(aux_stats)
        if algo.policy_net.detector_instructed:  # over the store's instructions, one each
            assert embeddings is not None
            stats["instruction"] = {"mean": embeddings.mean(0).numpy(), "std": embeddings.std(0).numpy()}
        algo.policy_net.normalizer.load_stats(stats)
        if embeddings is not None:
            algo.policy_net.task_embeddings.copy_(embeddings)
        return algo

    def init_backbone(self, path: str | Path) -> list[str]:
        """Copy a pretrained trunk (and a matching head) into the policy; returns the names copied."""
        path = Path(path)
        if path.is_dir():
            tensors = {k.removeprefix("policy."): v for k, v in load_checkpoint(path).tensors.items()}
        else:
            tensors = load_file(str(path))
        return self.policy_net.load_backbone(tensors, str(path))

    def start_rl(self) -> None:
        """Enter stage 2 from the current policy: critics, target copies, the actor and optimisers; step
        restarts at 0. The flow head (if any) is frozen from here on."""
        cfg = self.config
        with seeded(cfg.seed + 1):
            feat_dim = self.policy_net.feat_dim
            critics = (_critic(cfg, self.spec, feat_dim) for _ in range(cfg.n_critics))
            self.critics = nn.ModuleList(critics).to(self.device)
            if cfg.actor == "distill":
                actor = OneStepActor(feat_dim, cfg.horizon, self.spec.action_dim, cfg.head_hidden)
                self.one_step = actor.to(self.device)
        self.target_policy = copy.deepcopy(self.policy_net).requires_grad_(False).eval()  # no dropout
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        groups: list[dict[str, Any]] = [{"params": list(self.critics.parameters()), "lr": cfg.critic_lr}]
        trunk = self.policy_net.trunk
        if trunk is not None:
            if cfg.rl_train_backbone:
                groups.append({"params": list(trunk.parameters()), "lr": cfg.il_lr})
            trunk.requires_grad_(cfg.rl_train_backbone)
            if self.policy_net.trunk_gate is not None and not cfg.rl_train_backbone:
                # Frozen with the trunk it gates; trainable, it put the whole policy (the camera encoders
                # too) on the Polyak list, averaged into its unchanging target copy every update.
                self.policy_net.trunk_gate.requires_grad_(False)
        self.critic_opt = torch.optim.Adam(groups, fused=True)
        self.actor_opt: torch.optim.Optimizer | None = None
        if cfg.actor == "td3_bc":
            self.actor_opt = torch.optim.Adam(self.policy_net.head.parameters(), lr=cfg.actor_lr, fused=True)
        else:
            self.policy_net.head.requires_grad_(False)
        if self.policy_net.aux_readout is not None:  # a stage-1 loss only
            self.policy_net.aux_readout.requires_grad_(False)
        if self.one_step is not None:
            self.actor_opt = torch.optim.Adam(self.one_step.parameters(), lr=cfg.actor_lr, fused=True)
        # Polyak pairs, listed once: walking the modules for them took ~0.3 ms of an ~8 ms update on one CPU
        # thread. A frozen policy's target copy stays equal to it.
        self._polyak = [(list(self.target_critics.parameters()), list(self.critics.parameters()))]
        if any(p.requires_grad for p in self.policy_net.parameters()):
            self._polyak.append((list(self.target_policy.parameters()), list(self.policy_net.parameters())))
        self.stage, self.step = "rl", 0
        self.spec.extra["stage"] = "rl"
        self._features = self._candidates = self._choice = self._choice_value = None

    def _best_of_n(self, score_steps: int | None = None) -> BestOfN:
        """Best-of-N over the online critics, scoring Q^(h) or Q^(score_steps)."""
        cfg = self.config
        noise, aggregate, margin = cfg.candidate_noise, cfg.bon_acting_q, cfg.bon_mode_margin
        return BestOfN(self.policy_net, self.critics, cfg.n_candidates, noise, score_steps, aggregate, margin)

    def _one_step(self, noise_scale: float = 1.0) -> OneStep:
        assert self.one_step is not None, "only the distill actor has a one-step policy"
        cfg = self.config
        return OneStep(self.one_step, cfg.horizon, self.spec.action_dim, cfg.gripper, noise_scale)

    # ------------------------------------------------------------------ updates
    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        # Evaluation may have switched the network to eval (no augmentation); the flags are checked first
        # because setting them walks every module (~0.1 ms, a stage-2 update's 1-2%).
        net, trunk = self.policy_net, self.policy_net.trunk
        if not net.training:
            net.train()
        frozen = self.stage == "rl" and not self.config.rl_train_backbone
        if frozen and trunk is not None and trunk.training:
            trunk.eval()  # a frozen trunk gives the critic the features the policy acts on
        if self.stage == "il":
            metrics = self._il_update(batch)
        else:
            # Stage 2 stays in float32 under a GPU's bf16 autocast (robocl.run.loop): Q is minus tens of
            # steps, which bf16's 8-bit mantissa resolves only to 0.25 near -50, coarser than the TD errors
            # stage 2 learns from; its small critics gain nothing from bf16 anyway.
            with torch.autocast(self.device.type, enabled=False):
                metrics = self._rl_update(batch)
        self.step += 1
        return metrics

    def _target_chunk(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.policy_net.normalizer.normalize("action", batch["action"].float()).clamp(-1, 1)

    def _bc(self, feat: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The imitation loss of the policy head at ``feat``: flow matching, or Huber + BCE (regression)."""
        net, cfg, target = self.policy_net, self.config, self._target_chunk(batch)
        if net.is_flow:
            return net.head.loss(feat, target, batch["action_is_pad"]), {}
        chunk, logit = net.regress(feat)
        return chunk_bc_loss(
            chunk, logit, target, batch["action_is_pad"],
            gripper_weight=cfg.gripper_weight, huber_delta=cfg.huber_delta,
        )  # fmt: skip

    def _il_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        net, cfg = self.policy_net, self.config
        if cfg.il_lr_schedule == "cosine" and cfg.il_schedule_updates is not None:
            lr = cfg.il_lr * cosine_warmup(self.step, cfg.il_schedule_updates, cfg.il_warmup)
            for group in self.il_opt.param_groups:
                group["lr"] = lr
        encoding = net.features_and_trunk(batch["obs"], net.lang_of(batch))
        loss, parts = self._bc(encoding.features, batch)
        if cfg.aux_state_keys:
            aux = net.aux_state_loss(encoding.trunk, batch["obs"])
            loss, parts = loss + cfg.aux_weight * aux, {**parts, "aux_state": aux.item()}
        if encoding.pixels is not None:
            detector = net.detector_loss(encoding.pixels[:, -1], batch["obs"])
            loss, parts = loss + cfg.detector_weight * detector, {**parts, "detector_px": detector.item()}
        grad_norm = guarded_step(loss, self.il_opt, net.parameters(), max_grad_norm=cfg.max_grad_norm)
        return {"loss": loss.item(), **parts, "grad_norm": grad_norm}

    def _rl_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        cfg = self.config
        is_pad = batch["action_is_pad"]
        B, h = is_pad.shape
        per_prefix = cfg.critic_loss == "prefix"
        data_chunk = self._target_chunk(batch)  # (B, h, A)
        if cfg.actor == "best_of_n":
            rank = self._choice is None or self._choice_value is None or self.step % cfg.bon_refresh == 0
            self._best_of_n_targets(batch["history_source"], rank=rank)
        length, weight = td_prefixes(is_pad, cfg.prefix_samples if per_prefix else 0)  # (B, S)
        feat, tfeat, next_feat = self._rl_features(batch, length)
        with torch.no_grad():  # bootstrap the trained prefixes only: o_{t+j} for each drawn length j
            next_chunk, next_q = self._bootstrap(batch, tfeat, length)
            y = chunked_targets(
                batch["reward"], is_pad, batch["done"], next_q.view(B, -1), cfg.gamma, length
            )  # (B, S)
        queries = [(feat, data_chunk, length)]  # Q^(j) of the logged chunk's drawn prefixes
        conservative = cfg.conservative != "none"
        executed = _score_steps(cfg, cfg.n_action_steps or 0, cfg.ensemble_coef)  # the Q^(k) acted on
        on_executed = conservative and cfg.cql_executed and executed is not None
        if conservative:
            n, m = cfg.cql_n_samples, max(1, round(B * cfg.cql_fraction))  # m contexts: the first rows
            sub = {k: v[:m] if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.no_grad():
                policy = self._policy_samples(sub, feat[:m].detach(), next_feat[:m], n)  # (m, 2n, h, A)
                uniform = torch.rand(m, n, h, self.spec.action_dim, device=self.device) * 2 - 1
                samples = torch.cat([uniform, policy], 1)  # (m, 3n, h, A)
            queries.append((feat[:m], samples, None))  # Q^(h) of the conservative samples
            if on_executed:  # Q^(k) of the logged chunk's first k actions and of the samples'
                k = torch.full((m,), executed, device=self.device)
                queries.append((feat[:m], data_chunk[:m], torch.minimum(k, length[:m, 0])))
                queries.append((feat[:m], samples, k[:, None].expand(m, 3 * n)))
        answers = [c.q_many(*queries) for c in self.critics]
        q = torch.stack([a[0] for a in answers])  # (C, B, S)
        q_data = q[..., 0]  # (C, B) Q of the logged chunk, Q^(h_eff)
        td = critic_td_loss(q, y, weight)
        metrics = {
            "critic_td": td.item(),
            "q_mean": ((q[0] * weight).sum() / weight.sum()).item(),
            "target_mean": ((y * weight).sum() / weight.sum()).item(),
        }
        loss, q_s = td, None
        if conservative:
            q_s = torch.stack([a[1] for a in answers])  # (C, m, 3n)
            terms = {"conservative": (q_data[:, :m], q_s)}  # name -> Q of the logged chunks, of the samples
            if on_executed:
                q_sk = torch.stack([a[3] for a in answers])  # (C, m, 3n)
                terms["conservative_executed"] = (torch.stack([a[2] for a in answers]), q_sk)
            log_density = h * self.spec.action_dim * np.log(0.5) if cfg.cql_importance_sample else 0.0
            for name, (q_logged, q_samples) in terms.items():
                term = conservative_loss(
                    q_logged, q_samples[..., :n], q_samples[..., n : 2 * n], q_samples[..., 2 * n :],
                    sub["mc_return"].float() if cfg.conservative == "calql" else None,
                    alpha=cfg.cql_alpha, temperature=cfg.cql_temperature,
                    log_uniform_density=log_density,
                )  # fmt: skip
                loss = loss + term
                metrics[name] = term.item()
            metrics["q_policy"] = q_s[0, :, n : 2 * n].mean().item()
        inputs = {
            "batch reward": batch["reward"], "batch mc_return": batch["mc_return"],
            "features of o_t": feat, "bootstrap features": tfeat, "bootstrap chunk": next_chunk,
            "target Q": next_q, "Q of the data chunk": q, "Q of the conservative samples": q_s,
        }  # fmt: skip
        params = [p for g in self.critic_opt.param_groups for p in g["params"]]
        metrics["critic_grad_norm"] = guarded_step(
            loss, self.critic_opt, params, max_grad_norm=cfg.rl_max_grad_norm,
            diagnose=lambda: f"stage-2 critic, update {self.step + 1}: {_non_finite(inputs)}",
        )  # fmt: skip
        for target, online in self._polyak:
            soft_update(target, online, cfg.tau)
        metrics.update(self._actor_update(batch, feat.detach()))
        return metrics

    def _actor_update(self, batch: Mapping[str, Any], feat: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        if cfg.actor == "td3_bc" and (self.step + 1) % cfg.policy_delay == 0:
            assert self.actor_opt is not None
            chunk, _ = self.policy_net.regress(feat)
            bc, parts = self._bc(feat, batch)
            actor_loss, lam = td3_bc_actor_loss(self.critics[0].q_chunk(feat, chunk), bc, cfg.alpha_bc)
            guarded_step(
                actor_loss,
                self.actor_opt,
                self.policy_net.head.parameters(),
                max_grad_norm=cfg.rl_max_grad_norm,
            )
            return {"actor_loss": actor_loss.item(), "bc": bc.item(), "lambda_": lam, **parts}
        if cfg.actor == "distill":
            assert self.one_step is not None and self.actor_opt is not None
            z = torch.randn(len(feat), cfg.horizon, self.spec.action_dim, device=self.device)
            with torch.no_grad():
                flow_chunk = self.policy_net.head.sample(feat, z)
            mu = self.one_step(feat, z)
            q_pi = torch.stack([c.q_chunk(feat, mu.clamp(-1, 1)) for c in self.critics]).mean(0)
            actor_loss, distill = distill_actor_loss(q_pi, mu, flow_chunk, cfg.distill_alpha)
            inputs = {
                "features": feat,
                "flow chunk": flow_chunk,
                "actor chunk": mu,
                "Q of the actor chunk": q_pi,
            }
            guarded_step(
                actor_loss, self.actor_opt, self.one_step.parameters(), max_grad_norm=cfg.rl_max_grad_norm,
                diagnose=lambda: f"distilled actor, update {self.step + 1}: {_non_finite(inputs)}",
            )  # fmt: skip
            return {"actor_loss": actor_loss.item(), "distill": distill, "q_actor": q_pi.mean().item()}
        return {}

    @staticmethod
    def _boot_ids(batch: Mapping[str, Any], length: torch.Tensor | None = None) -> torch.Tensor:
        """History ids of the bootstrap observations o_{t+j} of prefix lengths j (B, S) -> (B*S,); without
        ``length``, of the whole chunk, o_{t+h_eff} (B,)."""
        if length is None:
            length = (~batch["action_is_pad"]).sum(1, keepdim=True)
        return batch["boot_id"].gather(1, length - 1).flatten()

    def _bootstrap(
        self, batch: Mapping[str, Any], tfeat: torch.Tensor, length: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A' at the bootstrap observation of each prefix length (B, S) (rows of ``tfeat``), the policy's
        next chunk, and its value min_c Q_targ(o', A') (B*S,); with ``bon_ranked_target`` the value of the
        latest ranking and no chunk."""
        cfg = self.config
        if cfg.actor == "best_of_n":
            assert self._candidates is not None and self._choice is not None
            ids = self._boot_ids(batch, length)
            if cfg.bon_ranked_target:
                assert self._choice_value is not None
                return None, self._choice_value[ids]
            chunk = self._candidates[ids, self._choice[ids]]
        elif cfg.actor == "distill":
            z = torch.randn(len(tfeat), cfg.horizon, self.spec.action_dim, device=self.device)
            chunk = self._one_step().chunk(tfeat, z)
        else:
            chunk = self.target_policy.regress(tfeat)[0]
            noise = (torch.randn_like(chunk) * cfg.target_noise).clamp(
                -cfg.target_noise_clip, cfg.target_noise_clip
            )
            chunk = (chunk + noise).clamp(-1, 1)
        return chunk, torch.stack([c.q_chunk(tfeat, chunk) for c in self.target_critics]).min(0).values

    def _policy_samples(
        self, batch: Mapping[str, Any], feat: torch.Tensor, next_feat: torch.Tensor, n: int
    ) -> torch.Tensor:
        """(B, 2n, h, A) chunks of the current policy for the conservative term: n at o_t, n at o_{t+h_eff}.
        Best-of-N uses its own proposals (drawn from the candidate table); the others add noise to the
        actor's chunk (TD3+BC) or draw the distilled actor's noise."""
        cfg, B, a = self.config, len(feat), self.spec.action_dim
        if cfg.actor == "best_of_n":
            assert self._candidates is not None
            ids = torch.stack([batch["history_id"], self._boot_ids(batch)], 1)  # (B, 2)
            pick = torch.randint(cfg.n_candidates, (B, 2, n), device=self.device)
            return self._candidates[ids[..., None], pick].flatten(1, 2)
        if cfg.actor == "distill":
            both = torch.stack([feat, next_feat], 1).repeat_interleave(n, 1)  # (B, 2n, d)
            z = torch.randn(B * 2 * n, cfg.horizon, a, device=self.device)
            return self._one_step().chunk(both.flatten(0, 1), z).view(B, 2 * n, cfg.horizon, a)
        chunks = torch.stack([self.policy_net.regress(feat)[0], self.policy_net.regress(next_feat)[0]], 1)
        chunks = chunks.repeat_interleave(n, 1)
        return (chunks + torch.randn_like(chunks) * cfg.cql_sample_noise).clamp(-1, 1)

    def _rl_features(
        self, batch: Mapping[str, Any], length: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trunk features of o_t (B, d), of the bootstrap histories o_{t+j} of the prefix lengths j (B, S)
        (B*S, d), and of o_{t+h_eff} (B, d) for the CQL samples at the next state. Only the first carries
        gradients, and only when stage 2 trains the trunk."""
        if "history_id" in batch:  # a frozen trunk: features looked up, computed once per history
            table = self._history_features(batch["history_source"])
            next_feat = table[self._boot_ids(batch)]
            return table[batch["history_id"]], table[self._boot_ids(batch, length)], next_feat
        net, lang = self.policy_net, self.policy_net.lang_of(batch)
        with torch.no_grad():
            if "prefix_obs" in batch:  # every prefix's o_{t+j}: the trunk once per distinct history needed
                B, h = batch["boot_id"].shape
                rows = (torch.arange(B, device=self.device)[:, None] * h + length - 1).flatten()  # of B*h
                unique, inverse = torch.unique(batch["prefix_unique"][batch["prefix_inverse"][rows]],
                                               return_inverse=True)  # fmt: skip
                boot = {k: v.flatten(0, 1)[unique] for k, v in batch["prefix_obs"].items()}
                boot_lang = None if lang is None else lang[unique // h]
                tfeat = self.target_policy.features(boot, boot_lang)[inverse]
            else:
                tfeat = self.target_policy.features(batch["next_obs"], lang)
            next_feat = net.features(batch["next_obs"], lang)
        return net.features(batch["obs"], lang), tfeat, next_feat

    def _history_features(self, token: str) -> torch.Tensor:
        """(n_histories, d) frozen-trunk features of every history of the stage-2 sampler, computed at the
        first update after the trunk last changed (so a resumed run computes them from the same weights)."""
        source = self._histories
        if source is None or source.token != token:
            raise ValueError(
                "this batch's history ids come from another sampler than this algorithm's latest "
                "CORFT.rl_sampler(...): draw stage-2 batches from the sampler made last"
            )
        if self._features is None:
            net, chunk = self.policy_net, 1024
            parts = []
            with torch.no_grad():
                for lo in range(0, source.n_histories, chunk):
                    obs, task = source.histories(np.arange(lo, min(lo + chunk, source.n_histories)))
                    obs = {k: torch.from_numpy(v).to(self.device) for k, v in obs.items()}
                    lang = net.lang_of({"task_index": torch.from_numpy(task).to(self.device)})
                    parts.append(net.features(obs, lang))
            self._features = torch.cat(parts)
        return self._features

    @torch.no_grad()
    def _best_of_n_targets(self, token: str, *, rank: bool) -> None:
        """Best-of-N's target policy: every history's N candidates, drawn once per stage from a generator
        seeded by the config (so a resumed run draws the same ones), and with ``rank`` their ranking under
        the target critics and the chosen chunk's value (a resumed run restores the ranking it saved)."""
        table, best_of_n = self._history_features(token), self._best_of_n()
        rows = 256  # histories per piece: 8k candidate chunks through the flow or a critic at a time
        if self._candidates is None:
            generator = torch.Generator(self.device).manual_seed(self.config.seed + 2)
            self._candidates = torch.cat(
                [best_of_n.propose(table[lo : lo + rows], generator) for lo in range(0, len(table), rows)]
            )
        if not rank:
            return
        best = []
        for lo in range(0, len(table), rows):
            feat, cand = table[lo : lo + rows], self._candidates[lo : lo + rows]
            q = torch.stack([c.q_chunk(feat, cand) for c in self.target_critics]).min(0).values  # (rows, N)
            choice = prefer_mode(q, self.config.bon_mode_margin)
            best.append((choice, q.gather(1, choice[:, None])[:, 0]))
        self._choice = torch.cat([choice for choice, _ in best])
        self._choice_value = torch.cat([value for _, value in best])

    # ------------------------------------------------------------------ validation
    def validate(self, sampler: ChunkedTDSampler) -> dict[str, float]:
        """How the critic scores held-out demonstrations (windows whose chunk lies inside the episode):
        ``val_q_bias`` / ``val_q_abs_err`` / ``val_q_mc_corr``: Q^(h) of the logged chunk against its
        Monte-Carlo return, over the successful episodes; ``val_q_spread``: Q of the logged chunk minus Q of
        the same chunk with N(0, 0.2^2) noise (> 0: the critic tells demonstrated chunks from nearby ones);
        ``val_q_policy_gap``: Q of the chunk the policy would execute minus Q of the logged one (both over
        every held-out episode); ``val_failed_episodes`` and, when there are any, ``val_q_failed_bias``.
        Best-of-N adds ``val_bon_left_mode``, the share of held-out histories where it acts on another
        proposal than the flow's mode, and ``val_bon_gain``, the mean value of the best proposal over the
        mode's (the scale ``bon_mode_margin`` is set in).

        Failed episodes are scored apart because their return says little about the critic: a demonstration
        cut at the time limit has V_MC = -1 / (1 - gamma) at every step (-100 at gamma 0.99), whatever the
        state, and a failure the demonstrator's noise causes late cannot be seen at the start. In the
        benchmark at 52931d1 (60 demos, 6 held out) the seeds whose held-out episodes all succeeded scored a
        correlation of 0.86-0.92 and a bias of -0.8 to 7 steps; each held-out failure (pick-place seed 0,
        push seeds 1 and 2) moved the pooled bias to 19-33 steps and the correlation to 0.14-0.62."""
        if self.stage != "rl":
            raise ValueError("validate() measures the stage-2 critic: call start_rl() first")
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):  # float32, as update()
            return self._validate(sampler)

    def _validate(self, sampler: ChunkedTDSampler) -> dict[str, float]:
        batch = to_torch(
            sampler.extend(sampler.sampler.get_batch(np.arange(len(sampler.sampler)))), self.device
        )
        full = ~batch["action_is_pad"].any(1)
        if not full.any():
            return {}
        net, was_training = self.policy_net, self.policy_net.training
        net.eval()
        feat = net.features(batch["obs"], net.lang_of(batch))[full]
        data = self._target_chunk(batch)[full]
        generator = torch.Generator(self.device).manual_seed(self.config.seed)
        perturbed = (data + 0.2 * torch.randn(data.shape, generator=generator, device=self.device)).clamp(
            -1, 1
        )
        choose, best_of_n = self.policy().choose, {}
        if isinstance(choose, BestOfN):  # the same draw as choose(feat, generator), with its scores kept
            acting, chosen, q_candidates = choose.choose(feat, generator)
            best_of_n = {
                "val_bon_left_mode": (chosen != 0).float().mean().item(),
                "val_bon_gain": (q_candidates.max(1).values - q_candidates[:, 0]).mean().item(),
            }
        else:
            acting = choose(feat, generator)
        q_data, q_perturbed, q_policy = (
            torch.stack([c.q_chunk(feat, x) for c in self.critics]).mean(0) for x in (data, perturbed, acting)
        )
        net.train(was_training)
        mc = batch["mc_return"][full].float()
        episodes = batch["episode"][full].cpu().numpy()
        failed_np = ~sampler.sampler.store.episodes["success"][episodes].astype(bool)
        failed, error = torch.from_numpy(failed_np).to(self.device), q_data - mc
        metrics = {
            "val_q_spread": (q_data - q_perturbed).mean().item(),
            "val_q_policy_gap": (q_policy - q_data).mean().item(),
            "val_failed_episodes": float(len(np.unique(episodes[failed_np]))),
            **best_of_n,
        }
        if failed.any():
            metrics["val_q_failed_bias"] = error[failed].mean().item()
        if not failed.all():
            ok = ~failed
            corr = (
                torch.corrcoef(torch.stack([q_data[ok], mc[ok]]))[0, 1] if ok.sum() > 1 else torch.tensor(0.0)
            )
            metrics |= {
                "val_q_bias": error[ok].mean().item(),
                "val_q_abs_err": error[ok].abs().mean().item(),
                "val_q_mc_corr": corr.nan_to_num(0.0).item(),
            }
        return metrics

    # ------------------------------------------------------------------ training driver
    def il_sampler(self, data: TrajectoryStore | StoreView) -> WindowSampler:
        """Stage-1 windows over ``data`` (seeded from config.seed), with the auxiliary state features."""
        return self._windows(data, self.config.seed, extra_keys=self.config.aux_state_keys)

    def rl_sampler(self, data: TrajectoryStore | StoreView) -> ChunkedTDSampler:
        """Stage-2 windows with rewards, Monte-Carlo returns and bootstrap histories (a stream of its own).

        With a frozen trunk (the default) its batches carry history ids instead of observations, and this
        algorithm encodes every history of ``data`` once, at the first stage-2 update, and looks the
        features up: a stage-2 update then costs the critic and the actor only. Only the latest sampler
        made here has its ids resolved; :meth:`update` rejects a batch from an earlier one."""
        sampler = self._chunked_sampler(
            data, seed=self.config.seed + 1, history_ids=not self.config.rl_train_backbone
        )
        if sampler.history_ids:
            self._histories, self._features, self._candidates = sampler, None, None
            self._choice = self._choice_value = None
        return sampler

    def val_sampler(self, data: TrajectoryStore | StoreView) -> ChunkedTDSampler:
        """Windows of held-out episodes for :meth:`validate` (observations, rewards, Monte-Carlo returns)."""
        return self._chunked_sampler(data, seed=self.config.seed + 3, history_ids=False)

    def split(self, data: TrajectoryStore | StoreView) -> tuple[StoreView, StoreView | None]:
        """(stage-2 training episodes, held-out episodes or None): ``val_fraction`` of them, seeded."""
        view = data if isinstance(data, StoreView) else data.view()
        if not self.config.val_fraction or view.n_episodes < 2:
            return view, None
        return view.split(self.config.val_fraction, seed=self.config.seed)

    def _chunked_sampler(
        self, data: TrajectoryStore | StoreView, *, seed: int, history_ids: bool
    ) -> ChunkedTDSampler:
        cfg = self.config
        windows = self._windows(data, seed)
        rewards = step_rewards(windows.store, cfg.reward)
        mc = mc_returns(rewards, windows.store.episodes, cfg.gamma)
        return ChunkedTDSampler(
            windows, rewards, mc, prefix=cfg.critic_loss == "prefix", history_ids=history_ids
        )

    def _windows(
        self, data: TrajectoryStore | StoreView, seed: int, extra_keys: tuple[str, ...] = ()
    ) -> WindowSampler:
        cfg = self.config
        keys = [*cfg.state_keys, *cfg.image_keys, *extra_keys]
        return chunk_windows(
            data, n_obs=cfg.n_obs, horizon=cfg.horizon, gamma=cfg.gamma, obs_keys=keys, seed=seed
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        model = {f"policy.{k}": v for k, v in self.policy_net.state_dict().items()}
        if self.stage == "il":
            return {"model": model, "trainer": {"il_opt": self.il_opt.state_dict(), "step": self.step}}
        model |= {f"critic.{k}": v for k, v in self.critics.state_dict().items()}
        if self.one_step is not None:
            model |= {f"actor.{k}": v for k, v in self.one_step.state_dict().items()}
        trainer = {
            "critic_opt": self.critic_opt.state_dict(),
            "actor_opt": None if self.actor_opt is None else self.actor_opt.state_dict(),
            "target_policy": self.target_policy.state_dict(),
            "target_critics": self.target_critics.state_dict(),
            "best_of_n_choice": self._choice,  # the candidates' ranking, which only a refresh recomputes
            "best_of_n_value": self._choice_value,
            "step": self.step,
        }
        return {"model": model, "trainer": trainer}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_networks(self, state["model"])
        self._features = self._candidates = None  # recomputed from these weights at the next update
        trainer = state["trainer"]
        if self.stage == "il":
            self.il_opt.load_state_dict(trainer["il_opt"])
        else:
            self.critic_opt.load_state_dict(trainer["critic_opt"])
            if self.actor_opt is not None:
                self.actor_opt.load_state_dict(trainer["actor_opt"])
            self.target_policy.load_state_dict(trainer["target_policy"])
            self.target_critics.load_state_dict(trainer["target_critics"])
            self._choice = trainer["best_of_n_choice"]
            self._choice_value = trainer.get("best_of_n_value")  # absent from checkpoints before it
        self.step = int(trainer["step"])

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str = "cpu") -> CORFT:
        """The whole algorithm (optimisers and targets fresh) with the checkpoint's networks."""
        spec = PolicySpec.from_dict(ckpt.spec)
        algo = cls(CORFTConfig(**ckpt.config), spec, device, stage=spec.extra["stage"])
        load_networks(algo, ckpt.tensors)
        algo.step = ckpt.step
        return algo

    @staticmethod
    def policy_from_checkpoint(ckpt: Checkpoint, device: str = "cpu") -> VLAPolicy:
        """The policy alone, for inference: the network, and the critics (best-of-N) or the distilled actor
        a stage-2 policy acts with; no optimiser, no target copies, no candidate tables."""
        config, spec = CORFTConfig(**ckpt.config), PolicySpec.from_dict(ckpt.spec)
        net = VLAPolicyNet(config, spec).to(device)
        net.load_state_dict(_strip(ckpt.tensors, "policy."))
        choose: ChunkChooser = FlowChooser(net, config.flow_noise)
        if spec.extra["stage"] == "rl" and config.actor == "best_of_n":
            critics = nn.ModuleList(_critic(config, spec, net.feat_dim) for _ in range(config.n_critics))
            critics.load_state_dict(_strip(ckpt.tensors, "critic."))
            choose = BestOfN(
                net, critics.to(device).eval(), config.n_candidates, config.candidate_noise,
                _score_steps(config, config.n_action_steps or 0, config.ensemble_coef), config.bon_acting_q,
                config.bon_mode_margin,
            )  # fmt: skip
        elif spec.extra["stage"] == "rl" and config.actor == "distill":
            actor = OneStepActor(net.feat_dim, config.horizon, spec.action_dim, config.head_hidden)
            actor.load_state_dict(_strip(ckpt.tensors, "actor."))
            choose = OneStep(
                actor.to(device), config.horizon, spec.action_dim, config.gripper, config.flow_noise
            )
        return _policy(net, torch.device(device), None, choose, config)

    def policy(
        self,
        *,
        flow_noise: float | None = None,
        n_action_steps: int | None = None,
        ensemble_coef: float | None = None,
    ) -> VLAPolicy:
        """The policy of the current stage (IL: the flow or regression head; stage 2: best-of-N, the
        distilled actor or the TD3+BC head), executed as the config says unless overridden here."""
        cfg = self.config
        noise = cfg.flow_noise if flow_noise is None else flow_noise
        if ensemble_coef and n_action_steps is None:  # temporal ensembling predicts every step
            n_action_steps = 1
        steps = cfg.n_action_steps if n_action_steps is None else n_action_steps
        coef = cfg.ensemble_coef if ensemble_coef is None else ensemble_coef
        choose: ChunkChooser = FlowChooser(self.policy_net, noise)
        if self.stage == "rl" and cfg.actor == "best_of_n":
            choose = self._best_of_n(_score_steps(cfg, steps or 0, coef))
        elif self.stage == "rl" and cfg.actor == "distill":
            choose = self._one_step(noise)
        execution = {"n_action_steps": steps, "ensemble_coef": coef}
        return _policy(self.policy_net, self.device, self._language, choose, cfg, **execution)


def _policy(
    net: VLAPolicyNet,
    device: torch.device,
    language: LanguageEncoder | None,
    choose: ChunkChooser,
    config: CORFTConfig,
    *,
    n_action_steps: int | None = None,
    ensemble_coef: float | None = None,
) -> VLAPolicy:
    return VLAPolicy(
        net,
        device,
        language,
        choose=choose,
        n_action_steps=config.n_action_steps if n_action_steps is None else n_action_steps,
        ensemble_coef=config.ensemble_coef if ensemble_coef is None else ensemble_coef,
        seed=config.seed,
    )


def detector_spec(config: CORFTConfig, store: TrajectoryStore, instructed: bool) -> dict[str, Any]:
    """What ``VLAPolicyNet`` needs to locate ``config.detect_entity`` (see its ``spec.extra["detector"]``),
    from the store, ``instructed``: conditioned on the instruction; raises naming what is missing."""
    names = config.detect_entity
    assert names is not None
    what = f"detect_entity={list(names)}"
    cameras = [k for k in config.image_keys if store.features[k].camera is not None]
    if not cameras:
        raise ValueError(
            f"{what} needs a calibrated camera among image_keys={config.image_keys}: "
            "record one with Feature(camera=CameraCalibration(...)) (robocl's tasks record the front one)"
        )
    aux = entity_positions({k: store.features[k].names for k in config.aux_state_keys})
    aux_state = np.concatenate([store.steps(k).reshape(store.n_steps, -1) for k in config.aux_state_keys], 1)
    entities = {}
    for entity in names:
        if set(aux.get(entity, {})) != set(AXES):
            raise ValueError(
                f"{what}: aux_state_keys={config.aux_state_keys} name no {entity}.x/y/z "
                f"(entities with a position there: {sorted(aux)})"
            )
        columns = [aux[entity][axis] for axis in AXES]
        # Lifted to the height the entity rests at when an episode starts: where the policy decides where
        # to reach (after the grasp the lifted position is off by the lift, and the tool's own matters).
        height = float(np.median(aux_state[store.episodes["start"], columns[2]]))
        entities[entity] = {"columns": columns, "height": height}
    return {
        "camera": cameras[0],
        "calibration": store.features[cameras[0]].camera.to_dict(),
        "entities": entities,
        "instructed": instructed,
        "tool_columns": tool_columns(config, store, what),
        "resolution": config.relative_resolution,
    }


def estimated_positions_spec(config: CORFTConfig, store: TrajectoryStore) -> dict[str, Any]:
    """What ``VLAPolicyNet`` needs to read the positions the camera estimates (``head_input="positions"``,
    see its ``spec.extra["estimated_positions"]``), from the store; raises naming what is missing."""
    # Only entities named along x, y and z, so the push goal (goal.x, goal.y) is left out and the push head
    # acts without it. Why: read from the trunk's readout (1.6-2.2 cm off at unseen positions), it lowered
    # push image imitation from 47 / 33 to 44 / 25 of 50, seen / unseen (seed 2, benchmarks/co_rft_log.md).
    aux = entity_positions({k: store.features[k].names for k in config.aux_state_keys})
    entities = {name: [axes[a] for a in AXES] for name, axes in aux.items() if set(axes) == set(AXES)}
    if not entities:
        raise ValueError(
            f"head_input='positions': aux_state_keys={config.aux_state_keys} name no entity's x, y, z "
            "(e.g. object.x, object.y, object.z)"
        )
    return {
        "entities": entities,
        "tool_columns": tool_columns(config, store, "head_input='positions'"),
        "resolution": config.relative_resolution,
    }


def tool_columns(config: CORFTConfig, store: TrajectoryStore, reader: str) -> list[int]:
    """The tool's x, y, z columns over the concatenated state keys: the first entity they name."""
    tools = list(entity_positions({k: store.features[k].names for k in config.state_keys}).values())
    if not tools or set(tools[0]) != set(AXES):
        raise ValueError(
            f"{reader} is read relative to the tool: state_keys={config.state_keys} must name its x, y, z "
            "first (e.g. tcp.x, tcp.y, tcp.z in observation.state)"
        )
    return [tools[0][axis] for axis in AXES]


def cosine_warmup(step: int, total: int, warmup: int) -> float:
    """The lr factor of update ``step`` (0-based: the updates done before it) of ``total``: (step + 1) /
    warmup during the warm-up (the first update already moves), then 0.5 (1 + cos(pi p)) with p = (step -
    warmup) / (total - warmup), clipped to [0, 1] (0 from ``total`` on)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _score_steps(config: CORFTConfig, n_action_steps: int, ensemble_coef: float) -> int | None:
    """The prefix best-of-N scores when acting: with ``rank_executed``, the ``n_action_steps`` executed per
    choice; None (Q^(h)) without it, for whole chunks (0) and under temporal ensembling (which executes an
    average of several chunks' actions)."""
    return (n_action_steps or None) if config.rank_executed and not ensemble_coef else None


def _non_finite(tensors: Mapping[str, torch.Tensor | None]) -> str:
    """Which of ``tensors`` (in data-flow order) hold a NaN or inf: the first is where to look."""
    bad = [name for name, t in tensors.items() if t is not None and not torch.isfinite(t).all()]
    return f"non-finite: {', '.join(bad)}" if bad else "every input finite (the loss arithmetic overflowed)"


def _critic(config: CORFTConfig, spec: PolicySpec, feat_dim: int) -> nn.Module:
    if config.critic == "mlp":
        return PrefixMLPCritic(feat_dim, spec.action_dim, config.horizon, config.critic_hidden)
    return ChunkCritic(
        feat_dim, spec.action_dim, config.horizon,
        d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads,
    )  # fmt: skip


def load_networks(algo: CORFT, tensors: Mapping[str, torch.Tensor]) -> None:
    """The checkpoint's networks into ``algo`` (its stage decides which it has)."""
    algo.policy_net.load_state_dict(_strip(tensors, "policy."))
    if algo.stage == "rl":
        algo.critics.load_state_dict(_strip(tensors, "critic."))
        if algo.one_step is not None:
            algo.one_step.load_state_dict(_strip(tensors, "actor."))


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
