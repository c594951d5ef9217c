"""The VLA-style chunk policy CO-RFT fine-tunes, and its numpy inference wrapper.

:class:`VLAPolicyNet` = :class:`~robocl.nets.transformer.TokenTrunk` (cameras, proprioception, language)
+ an MLP head that regresses a chunk of h actions, normalised to [-1, 1] with the store's min-max statistics.
The arm channels go through tanh and the gripper channel (the last one, when ``config.gripper``) is a logit
(RoboVLMs' policy head: MLP+tanh for the arm, sigmoid for the gripper). :class:`VLAPolicy` runs it step by
step in an environment through :class:`robocl.policy.ChunkExecutor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from robocl.nets.language import LanguageEncoder
from robocl.nets.mlp import MLP
from robocl.nets.normalize import Normalizer
from robocl.nets.transformer import TokenTrunk
from robocl.policy import ChunkExecutor, ObsHistory, batch_size_of


class VLAConfig(Protocol):
    """The fields of a method config the network is built from (see ``CORFTConfig`` for their meaning)."""

    state_keys: tuple[str, ...]
    image_keys: tuple[str, ...]
    language_model: str | None
    n_obs: int
    horizon: int
    n_action_steps: int
    d_model: int
    n_layers: int
    n_heads: int
    vision_channels: tuple[int, ...]
    aug_shift: int
    dropout: float
    gripper: bool


class Spec(Protocol):
    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int
    extra: dict[str, Any]


class VLAPolicyNet(nn.Module):
    """Trunk + chunk head. Normalised chunks live in [-1, 1]; the gripper channel is 2*sigmoid(logit)-1."""

    def __init__(self, config: VLAConfig, spec: Spec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        state_shapes = {k: spec.obs_shapes[k] for k in config.state_keys}
        self.normalizer = Normalizer(
            {**state_shapes, "action": (spec.action_dim,)},
            {**{k: "mean_std" for k in state_shapes}, "action": "min_max"},
        )
        lang_dim = int(spec.extra.get("lang_dim", 0))
        self.trunk = TokenTrunk(
            sum(int(np.prod(s)) for s in state_shapes.values()),
            config.image_keys,
            lang_dim,
            config.n_obs,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            vision_channels=config.vision_channels,
            aug_shift=config.aug_shift,
            dropout=config.dropout,
        )
        self.head = MLP(config.d_model, (config.d_model,), config.horizon * spec.action_dim)
        # One frozen embedding per store task, so training and known instructions need no language model.
        self.register_buffer("task_embeddings", torch.zeros(len(spec.extra.get("tasks", [])), lang_dim))

    def features(self, obs: Mapping[str, torch.Tensor], lang: torch.Tensor | None) -> torch.Tensor:
        keys = self.config.state_keys
        lowdim = (
            torch.cat([self.normalizer.normalize(k, obs[k].float()).flatten(2) for k in keys], -1)
            if keys
            else None
        )
        return self.trunk(lowdim, {k: obs[k] for k in self.config.image_keys}, lang)

    def act(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, d) -> normalised chunk (B, h, A), gripper logits (B, h) or None."""
        raw = self.head(feat).view(-1, self.config.horizon, self.spec.action_dim)
        if not self.config.gripper:
            return torch.tanh(raw), None
        logit = raw[..., -1]
        # tanh(x/2) = 2*sigmoid(x) - 1: the critic sees the gripper as a value in [-1, 1] like the data.
        return torch.cat([torch.tanh(raw[..., :-1]), torch.tanh(logit / 2).unsqueeze(-1)], -1), logit

    def lang_of(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        return self.task_embeddings[batch["task_index"].long()] if self.task_embeddings.shape[1] else None


class VLAPolicy:
    """numpy inference: observations keyed by store feature names (one step, or a batch on axis 0), plus
    ``obs["task"]``, the instruction (a string, or one per row) when the policy is language-conditioned.
    Instructions seen in training use the stored embeddings; others go through the language model."""

    def __init__(
        self, net: VLAPolicyNet, device: torch.device, language: LanguageEncoder | None = None
    ) -> None:
        self.net, self.device, self._language = net.eval(), device, language
        cfg = net.config
        self.obs_keys = [*cfg.state_keys, *cfg.image_keys]
        self._single_ndim = {k: len(net.spec.obs_shapes[k]) for k in self.obs_keys}
        self._task_row = {t: i for i, t in enumerate(net.spec.extra.get("tasks", []))}
        self.history = ObsHistory(cfg.n_obs)
        self.executor = ChunkExecutor(
            self.predict_chunk, cfg.horizon, n_action_steps=cfg.n_action_steps or None
        )

    def reset(self) -> None:
        self.history.reset()
        self.executor.reset()

    def embed(self, tasks: Sequence[str]) -> torch.Tensor:
        """(B, lang_dim) instruction embeddings."""
        table = self.net.task_embeddings
        unknown = [t for t in tasks if t not in self._task_row]
        if unknown and self._language is None:
            name = self.net.config.language_model
            assert name is not None
            self._language = LanguageEncoder(name)
        rows = [table[self._task_row[t]] if t in self._task_row else None for t in tasks]
        fresh = (
            iter(self._language.encode(unknown).to(table.device)) if unknown and self._language else iter(())
        )
        return torch.stack([r if r is not None else next(fresh) for r in rows])

    @torch.no_grad()
    def predict_chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        """(B, n_obs, ...) histories (+ "task_embedding" (B, E)) -> (B, h, A) actions in env units."""
        x = {k: torch.as_tensor(np.asarray(obs[k]), device=self.device) for k in self.obs_keys}
        lang = torch.as_tensor(obs["task_embedding"], device=self.device) if "task_embedding" in obs else None
        chunk = self.net.act(self.net.features(x, lang))[0]
        return self.net.normalizer.unnormalize("action", chunk).cpu().numpy()

    def predict(self, obs: Mapping[str, Any]) -> np.ndarray:
        if not isinstance(obs, Mapping):
            raise TypeError("CO-RFT policies take a dict of observations keyed by store feature names")
        batch, single = batch_size_of(obs, self._single_ndim)
        shapes = self.net.spec.obs_shapes
        step = {k: np.asarray(obs[k]).reshape(batch, *shapes[k]) for k in self.obs_keys}
        inputs: dict[str, Any] = self.history.push(step)
        if self.net.task_embeddings.shape[1]:
            if "task" not in obs:
                raise KeyError("this policy is language-conditioned: pass the instruction as obs['task']")
            tasks = [obs["task"]] * batch if isinstance(obs["task"], str) else [str(t) for t in obs["task"]]
            inputs["task_embedding"] = self.embed(tasks).cpu().numpy()
        action = self.executor(inputs, batch)
        return action[0] if single else action
