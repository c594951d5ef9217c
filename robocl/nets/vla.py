"""The VLA-style chunk policy CO-RFT fine-tunes, and its numpy inference wrapper.

:class:`VLAPolicyNet` = :class:`~robocl.nets.transformer.TokenTrunk` (cameras, proprioception, language)
+ an action head that outputs a chunk of h actions, normalised to [-1, 1] with the store's min-max statistics:

- ``head="flow"`` (default): a flow-matching action expert (:class:`~robocl.nets.flow.FlowHead`, pi0 /
  SmolVLA's design), sampled from x_0 ~ N(0, sigma^2 I) in K Euler steps. The gripper channel (the last,
  when ``config.gripper``) is a continuous value like the others and is snapped to fully open or fully
  closed at execution (``snap_gripper``): the Panda's gripper is position-controlled, so a value between
  the two modes (which a sample drawn between them can give) half-opens the fingers and drops the object.
- ``head="regression"``: an MLP that regresses the chunk, tanh on the arm channels and a logit for the
  gripper (RoboVLMs' policy head: MLP+tanh for the arm, sigmoid for the gripper).

With ``relative_positions`` the low-dimensional input also holds the differences between the entities the
state features name (:mod:`robocl.nets.relative`: object - tool, plate - object, ...), standardised and,
with ``spec.extra["relative_resolution"]`` > 0, once more on a log scale with that resolution
(:func:`~robocl.nets.relative.log_scaled`; a checkpoint saved before that option existed loads with the
standardised encoding only). :class:`VLAPolicy` runs the network step by step in an environment through
:class:`robocl.policy.ChunkExecutor`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robocl.nets.flow import FlowHead, OneStepActor
from robocl.nets.language import LanguageEncoder
from robocl.nets.mlp import MLP
from robocl.nets.normalize import Normalizer
from robocl.nets.relative import RelativePositions, log_scaled
from robocl.nets.transformer import TokenTrunk
from robocl.nets.vision import PinholeCamera
from robocl.policy import ChunkExecutor, ObsHistory, batch_size_of
from robocl.store import CameraCalibration

# Standardised auxiliary targets are clipped to this many standard deviations: an object knocked off the
# table (in the CO-RFT benchmark's demos one rolled 4 m, 80 std) stays a bounded pull on the trunk.
AUX_CLIP = 5.0
# A detected entity's offset from the tool reaches the head in these units (m): 1 at 10 cm, as the
# benchmark's pilots had it.
DETECTED_UNIT = 0.1


class VLAConfig(Protocol):
    """The fields of a method config the network is built from (see ``CORFTConfig`` for their meaning)."""

    state_keys: tuple[str, ...]
    image_keys: tuple[str, ...]
    language_model: str | None
    n_obs: int
    horizon: int
    d_model: int
    n_layers: int
    n_heads: int
    vision_channels: tuple[int, ...]
    aug_shift: int
    aux_state_keys: tuple[str, ...]
    detect_entity: tuple[str, ...] | None  # the spec's "detector" comes from it
    dropout: float
    gripper: bool
    head: str
    head_hidden: tuple[int, ...]
    flow_steps: int
    state_path: str


class Spec(Protocol):
    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int
    extra: dict[str, Any]


class Encoding(NamedTuple):
    """What :meth:`VLAPolicyNet.features_and_trunk` computes: the features the head and the critic read
    (B, feat_dim), the trunk's output before its gate (B, d_model) (None without a trunk), and the
    detector's pixels (B, n_obs, detected entities, 2) (None without one)."""

    features: torch.Tensor
    trunk: torch.Tensor | None
    pixels: torch.Tensor | None


def snap_gripper(chunk: torch.Tensor) -> torch.Tensor:
    """The last channel of a normalised chunk (..., A) set to -1 (open) or +1 (closed) by its sign."""
    grip = torch.where(chunk[..., -1:] >= 0, 1.0, -1.0).to(chunk.dtype)
    return torch.cat([chunk[..., :-1], grip], -1)


class VLAPolicyNet(nn.Module):
    """Trunk + chunk head. ``spec.extra["relative_positions"]`` lists the relative-position pairs as
    (name, earlier index, later index) over the concatenated state keys (empty: none);
    ``spec.extra["relative_resolution"]`` (m, absent or 0: off) adds them again log-scaled;
    ``spec.extra["dropped_state_columns"]`` (absent: none) lists state columns left out of the input;
    ``spec.extra["detector"]`` (absent: none) has a camera's encoder locate entities (see
    :meth:`detected_offset`): ``camera`` (the image key), its ``calibration``, the ``entities`` (name ->
    ``columns``: its x, y, z over the concatenated auxiliary state, its training label, and ``height``: the
    plane (m) its pixel is lifted to), whether it is ``instructed`` (conditioned on the instruction, read
    standardised over the store's tasks), the tool's ``tool_columns`` over the concatenated state keys and
    the ``resolution`` (m, absent or 0: off) of the offsets' log-scaled copy.
    ``spec.extra["estimated_positions"]`` (absent: off) has the head read, of the cameras, only the positions
    they estimate (see :meth:`estimated_relative`): the ``entities`` (name -> x, y, z columns over the
    concatenated auxiliary state), the detected ones' from the detector, the others' from the trunk's
    readout, with the tool's ``tool_columns`` and the log scale's ``resolution``."""

    def __init__(self, config: VLAConfig, spec: Spec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        state_shapes = {k: spec.obs_shapes[k] for k in config.state_keys}
        pairs = [tuple(p) for p in spec.extra.get("relative_positions", [])]
        self.relative = RelativePositions(pairs) if pairs else None
        shapes: dict[str, tuple[int, ...]] = {**state_shapes, "action": (spec.action_dim,)}
        modes: dict[str, Any] = {**{k: "mean_std" for k in state_shapes}, "action": "min_max"}
        if pairs:
            shapes["relative"], modes["relative"] = (len(pairs),), "mean_std"
        aux_shapes = {k: tuple(v) for k, v in spec.extra.get("aux_state_shapes", {}).items()}
        shapes.update(aux_shapes)
        modes.update(dict.fromkeys(aux_shapes, "mean_std"))
        lang_dim = int(spec.extra.get("lang_dim", 0))
        detector = spec.extra.get("detector")
        self.detector_instructed = bool(detector and detector.get("instructed"))
        if self.detector_instructed:
            shapes["instruction"], modes["instruction"] = (lang_dim,), "mean_std"
        self.normalizer = Normalizer(shapes, modes)
        self.resolution = float(spec.extra.get("relative_resolution", 0.0)) if pairs else 0.0
        n_relative = len(pairs) * (2 if self.resolution else 1)
        n_state = sum(int(np.prod(s)) for s in state_shapes.values())
        # The state columns the policy reads (absolute_positions=False leaves the scene's out).
        dropped = set(spec.extra.get("dropped_state_columns", []))
        self.kept_columns: torch.Tensor | None
        self.register_buffer(
            "kept_columns",
            torch.tensor([i for i in range(n_state) if i not in dropped]) if dropped else None,
            persistent=False,
        )
        lowdim_dim = n_state - len(dropped) + n_relative
        # Where the low-dim history goes (see CORFTConfig.state_path). pi0 gives the robot state to its
        # action expert, not to the VLM: the trunk then fuses the cameras and the instruction only, and is
        # left out when there is neither.
        self.state_to_trunk = bool(lowdim_dim) and config.state_path in ("trunk", "both")
        self.state_to_head = bool(lowdim_dim) and config.state_path in ("head", "both")
        has_trunk = self.state_to_trunk or bool(config.image_keys) or lang_dim > 0
        calibration = CameraCalibration.from_dict(detector["calibration"]) if detector else None
        self.camera = PinholeCamera(calibration) if calibration else None
        detected = located_entities(detector, config) if detector else {}
        self.detected_names = list(detected)
        self.detect_resolution = float(detector.get("resolution", 0.0)) if detector else 0.0
        estimated = spec.extra.get("estimated_positions")
        self.entity_columns: torch.Tensor  # (detected, 3)
        self.detect_heights: torch.Tensor  # (detected, 1)
        self.tool_columns: torch.Tensor
        columns = [e["columns"] for e in detected.values()]
        self.register_buffer("entity_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        heights = [[float(e["height"])] for e in detected.values()]
        self.register_buffer("detect_heights", torch.tensor(heights), persistent=False)
        # Both specs name the same tool (co_rft.tool_columns), so either one's will do.
        tool_columns = (detector or estimated or {}).get("tool_columns", [])
        self.register_buffer("tool_columns", torch.tensor(tool_columns, dtype=torch.long), persistent=False)
        self.estimated_resolution = float(estimated["resolution"]) if estimated else 0.0
        # (E, 3) each estimated entity's columns, and whether the detector gives it (else the readout).
        self.estimated_columns: torch.Tensor
        entities = estimated["entities"] if estimated else {}
        self.register_buffer(
            "estimated_columns", torch.tensor(list(entities.values()), dtype=torch.long), persistent=False
        )
        # The detector's index of each estimated entity it locates (-1: the trunk's readout gives it).
        self.estimated_by_detector = [self.detected_names.index(e) if e in detected else -1 for e in entities]
        self.trunk = (
            TokenTrunk(
                lowdim_dim if self.state_to_trunk else 0,
                config.image_keys,
                lang_dim,
                config.n_obs,
                d_model=config.d_model,
                n_layers=config.n_layers,
                n_heads=config.n_heads,
                vision_channels=config.vision_channels,
                aug_shift=config.aug_shift,
                dropout=config.dropout,
                detector_camera=detector["camera"] if detector else None,
                detected=len(detected),
                instruction_dim=lang_dim if self.detector_instructed else 0,
            )
            if has_trunk
            else None
        )
        # A per-feature gate on the trunk's output, zero at initialisation (ReZero / DiT's adaLN-zero): the
        # head starts from the low-dim history alone and takes in the fused cameras and instruction as they
        # prove useful. Ungated, a freshly initialised trunk's output (a LayerNorm'd 128-d vector, constant
        # where the instruction is) swamped the first layer and halved success on 60 push demos.
        self.head_reads_trunk = has_trunk and not estimated
        self.trunk_gate = (
            nn.Parameter(torch.zeros(config.d_model))
            if self.head_reads_trunk and self.state_to_head
            else None
        )
        # The features the head (and the critic) read: [trunk output, normalised low-dim history, the
        # detected entities' offsets from the tool (and their log-scaled copy)], or with estimated positions
        # [normalised low-dim history, the estimated positions' differences (and their log-scaled copy)].
        n_pairs = len(entities) * (len(entities) + 1) // 2  # over the tool and the estimated entities
        self.feat_dim = (
            (config.d_model if self.head_reads_trunk else 0)
            + (config.n_obs * lowdim_dim if self.state_to_head else 0)
            + (3 * len(detected) * (2 if self.detect_resolution else 1) if detector and not estimated else 0)
            + (3 * n_pairs * (2 if self.estimated_resolution else 1) if estimated else 0)
        )
        h, a = config.horizon, spec.action_dim
        self.head: nn.Module = (
            FlowHead(self.feat_dim, h, a, config.head_hidden, config.flow_steps)
            if config.head == "flow"
            else MLP(self.feat_dim, config.head_hidden, h * a)
        )
        # The linear readout of the trunk's output that regresses the auxiliary state's columns (stage 1).
        aux_columns = list(spec.extra.get("aux_state_columns", []))
        self.aux_columns: torch.Tensor
        self.register_buffer("aux_columns", torch.tensor(aux_columns, dtype=torch.long), persistent=False)
        self.aux_readout = (
            nn.Linear(config.d_model, len(aux_columns)) if aux_columns and self.trunk is not None else None
        )
        # One frozen embedding per store task, so training and known instructions need no language model.
        self.register_buffer("task_embeddings", torch.zeros(len(spec.extra.get("tasks", [])), lang_dim))

    def load_backbone(self, tensors: Mapping[str, torch.Tensor], source: str) -> list[str]:
        """Copy a pretrained trunk (every trunk tensor present, same shapes) and the head when its shapes
        match; returns the names copied. ``source`` names the file in errors."""
        own = self.state_dict()
        trunk = {k for k in own if k.startswith("trunk.")}
        if not trunk and any(k.startswith("trunk.") for k in tensors):
            raise ValueError(
                f"{source} holds a trunk but this policy has none (no cameras, no instruction and "
                f"state_path={self.config.state_path!r}): fine-tune with the backbone's inputs"
            )
        bad = sorted(k for k in trunk if k not in tensors or tensors[k].shape != own[k].shape)
        if bad:
            raise ValueError(
                f"{source}: the backbone does not match this policy's trunk; missing or differently shaped: "
                f"{bad[:8]}{' ...' if len(bad) > 8 else ''}"
            )
        heads = {k for k in own if k.startswith("head.")}
        if all(k in tensors and tensors[k].shape == own[k].shape for k in heads):
            trunk |= heads
        self.load_state_dict({**own, **{k: tensors[k] for k in trunk}})
        return sorted(trunk)

    @property
    def is_flow(self) -> bool:
        return isinstance(self.head, FlowHead)

    def features(self, obs: Mapping[str, torch.Tensor], lang: torch.Tensor | None) -> torch.Tensor:
        """(B, feat_dim) features of observation histories (B, n_obs, ...) per key."""
        return self.features_and_trunk(obs, lang)[0]

    def features_and_trunk(self, obs: Mapping[str, torch.Tensor], lang: torch.Tensor | None) -> Encoding:
        """The features of observation histories, with what the auxiliary losses read."""
        keys = self.config.state_keys
        lowdim = None
        if keys:
            parts = [self.normalizer.normalize(k, obs[k].float()).flatten(2) for k in keys]  # (B, n_obs, D_k)
            if self.kept_columns is not None:
                parts = [torch.cat(parts, -1)[..., self.kept_columns]]
            if self.relative is not None:
                raw = torch.cat([obs[k].float().flatten(2) for k in keys], -1)
                relative = self.relative(raw)
                parts.append(self.normalizer.normalize("relative", relative))
                if self.resolution:
                    parts.append(log_scaled(relative, self.resolution))
            lowdim = torch.cat(parts, -1)
        parts, fused, pixels = [], None, None
        if self.trunk is not None:
            images = {k: obs[k] for k in self.config.image_keys}
            said = self.normalizer.normalize("instruction", lang) if self.detector_instructed else None
            fused, pixels = self.trunk(lowdim if self.state_to_trunk else None, images, lang, said)
            if self.head_reads_trunk:
                parts.append(fused if self.trunk_gate is None else fused * self.trunk_gate)
        if self.state_to_head:
            assert lowdim is not None
            parts.append(lowdim.flatten(1))
        if len(self.estimated_columns):
            assert fused is not None
            parts.append(self.estimated_relative(fused, pixels, obs).to(parts[0].dtype))
        elif pixels is not None:
            parts.append(self.detected_offset(pixels[:, -1], obs).to(parts[0].dtype))
        return Encoding(torch.cat(parts, -1), fused, pixels)

    def read_positions(self, trunk_out: torch.Tensor) -> torch.Tensor:
        """(B, D) the trunk's readout of the auxiliary state (the concatenated ``aux_state_keys``) at the
        last observed frame, in the features' own units: what ``aux_state_loss`` trains, unstandardised.
        Columns it does not read hold their mean over the demonstrations."""
        assert self.aux_readout is not None, "built without aux_state_keys"
        shapes = self.spec.extra["aux_state_shapes"]
        sizes = [int(np.prod(shape)) for shape in shapes.values()]
        standardised = torch.zeros(len(trunk_out), sum(sizes), device=trunk_out.device)
        standardised[:, self.aux_columns] = self.aux_readout(trunk_out).float()
        parts = zip(shapes.items(), standardised.split(sizes, 1), strict=True)
        read = [self.normalizer.unnormalize(k, p.view(-1, *shape)).flatten(1) for (k, shape), p in parts]
        return torch.cat(read, 1)

    def estimated_relative(
        self, trunk_out: torch.Tensor, pixels: torch.Tensor | None, obs: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """(B, 3 P or 6 P) the positions the camera estimates at the last observed frame, read as the state
        policy reads positions (:mod:`robocl.nets.relative`): every pair of [tool, entities...], later
        minus earlier, in units of DETECTED_UNIT, then log-scaled. Detached: the readout and the detector
        learn from their labels only, and nothing else of the trunk reaches the head."""
        read = self.read_positions(trunk_out.detach())
        points = [self.tool_position(obs)]
        found = None if pixels is None else self.detected_entities(pixels[:, -1].detach())
        for columns, index in zip(self.estimated_columns, self.estimated_by_detector, strict=True):
            if index >= 0:
                assert found is not None, "a detected entity needs the detector's pixels"
                points.append(found[:, index])
            else:
                points.append(read[:, columns])
        offsets = torch.cat([b - a for a, b in itertools.combinations(points, 2)], -1)
        return _as_offsets(offsets, self.estimated_resolution)

    def tool_position(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3) the tool's position at the last observed frame."""
        return torch.cat([obs[k][:, -1].float().flatten(1) for k in self.config.state_keys], 1)[
            :, self.tool_columns
        ]

    def detected_entities(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, detected, 2) detector pixels -> (B, detected, 3) world positions, each entity's on the plane
        z = its ``height``."""
        assert self.camera is not None, "built without a detector"
        return self.camera.lift(pixels, self.detect_heights)

    def detected_offset(self, pixels: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3 or 6 per detected entity) each detected entity minus the tool at the last observed frame,
        in units of DETECTED_UNIT, then (with a ``resolution``) log-scaled as the state policy reads its
        relative positions: the state policy's object - tool (:mod:`robocl.nets.relative`), seen through
        the camera. Detached: the detector learns from its pixel labels only, so the head cannot bend it
        towards what imitation finds convenient."""
        offsets = self.detected_entities(pixels.detach()) - self.tool_position(obs)[:, None]
        return _as_offsets(offsets.flatten(1), self.detect_resolution)

    def detector_loss(self, pixels: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Smooth-L1 (pixels) of the detector's last-frame pixels (B, detected, 2) against the entities'
        positions in the auxiliary state projected through the camera. Smooth-L1, not MSE: an entity
        knocked out of view (the benchmark's demos have one that rolls 4 m) is a bounded pull."""
        assert self.camera is not None, "built without a detector"
        aux = torch.cat([obs[k][:, -1].float().flatten(1) for k in self.config.aux_state_keys], 1)
        target = self.camera.project(aux[:, self.entity_columns])
        return F.smooth_l1_loss(pixels.float(), target)

    def aux_state_loss(self, trunk_out: torch.Tensor | None, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error of the readout of ``trunk_out`` against the auxiliary state's columns at the
        last observed frame (``obs[key]`` (B, n_obs, ...)), standardised and clipped to +-AUX_CLIP."""
        assert self.aux_readout is not None and trunk_out is not None, "built without aux_state_keys"
        keys = self.config.aux_state_keys
        target = torch.cat([self.normalizer.normalize(k, obs[k][:, -1].float()).flatten(1) for k in keys], 1)
        target = target[:, self.aux_columns].clamp(-AUX_CLIP, AUX_CLIP)
        return F.mse_loss(self.aux_readout(trunk_out).float(), target)

    def regress(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Regression head: (B, d) -> normalised chunk (B, h, A), gripper logits (B, h) or None."""
        raw = self.head(feat).view(-1, self.config.horizon, self.spec.action_dim)
        if not self.config.gripper:
            return torch.tanh(raw), None
        logit = raw[..., -1]
        # tanh(x/2) = 2*sigmoid(x) - 1: the critic sees the gripper as a value in [-1, 1] like the data.
        return torch.cat([torch.tanh(raw[..., :-1]), torch.tanh(logit / 2).unsqueeze(-1)], -1), logit

    def sample(self, feat: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The chunk the policy executes, normalised (B, h, A): the flow integrated from x_0 = ``noise``
        (None = 0, the deterministic mode) with the gripper snapped, or the regression head's output."""
        if not self.is_flow:
            return self.regress(feat)[0]
        if noise is None:
            noise = feat.new_zeros(len(feat), self.config.horizon, self.spec.action_dim)
        chunk = self.head.sample(feat, noise)
        return snap_gripper(chunk) if self.config.gripper else chunk

    def lang_of(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        return self.task_embeddings[batch["task_index"].long()] if self.task_embeddings.shape[1] else None


def located_entities(detector: Mapping[str, Any], config: VLAConfig) -> dict[str, dict[str, Any]]:
    """The entities a ``spec.extra["detector"]`` locates (name -> ``columns``, ``height``). A spec saved
    when the detector located one entity (``entity_columns``, ``height``) reads as that entity, named by
    the config it was saved with."""
    if "entities" in detector:
        return dict(detector["entities"])
    (name,) = config.detect_entity or ("",)
    return {name: {"columns": detector["entity_columns"], "height": detector["height"]}}


def _as_offsets(offsets: torch.Tensor, resolution: float) -> torch.Tensor:
    """(B, D) position differences (m) as the head reads estimated ones: in units of DETECTED_UNIT, then
    (``resolution`` > 0) again log-scaled, as the state policy reads its relative positions."""
    parts = [offsets / DETECTED_UNIT]
    if resolution:
        parts.append(log_scaled(offsets, resolution))
    return torch.cat(parts, -1)


class ChunkChooser(Protocol):
    """How a policy turns trunk features (B, d) into the normalised chunks it executes (B, h, A), drawing any
    noise from ``generator``: the flow at a noise scale, best-of-N under a critic, a distilled actor."""

    def __call__(self, feat: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


class FlowChooser:
    """The network's own chunks: the flow from x_0 ~ N(0, noise_scale^2 I), or the regression output."""

    def __init__(self, net: VLAPolicyNet, noise_scale: float = 0.0) -> None:
        self.net, self.noise_scale = net, noise_scale

    def __call__(self, feat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.net.is_flow or self.noise_scale == 0:
            return self.net.sample(feat)
        shape = (len(feat), self.net.config.horizon, self.net.spec.action_dim)
        return self.net.sample(
            feat, torch.randn(shape, generator=generator, device=feat.device) * self.noise_scale
        )


def candidate_scales(n: int, noise: Sequence[float]) -> torch.Tensor:
    """(n,) noise scale of each best-of-N proposal: 0 for the first (the flow's mode), then ``noise`` in
    turn."""
    return torch.tensor([0.0, *itertools.islice(itertools.cycle(noise), n - 1)])


def prefer_mode(q: torch.Tensor, margin: float) -> torch.Tensor:
    """(B, N) values of proposals whose first is the flow's mode -> (B,) index of the chosen one: the argmax,
    unless its value exceeds the mode's by ``margin`` or less, then the mode (index 0). margin = 0 is the
    plain argmax (ties go to the mode, argmax's first index)."""
    best = q.argmax(1)
    gain = q.gather(1, best[:, None])[:, 0] - q[:, 0]
    return torch.where(gain > margin, best, torch.zeros_like(best))


class BestOfN:
    """Best-of-N acting (QC): the flow proposes ``n`` chunks per row (:func:`candidate_scales`) and the one
    with the highest Q^(h) is executed; with ``score_steps`` = k < h, the one with the highest Q^(k) of its
    first k actions (for a policy that executes k and then chooses again). ``aggregate`` combines the
    critics: "mean" (QC's q_agg) or "min" (pessimistic, as the TD target: it ranks down the proposals the
    critics disagree on). With ``mode_margin`` > 0 the mode is kept unless the best beats it by more than
    that (:func:`prefer_mode`)."""

    def __init__(
        self,
        net: VLAPolicyNet,
        critics: nn.ModuleList,
        n: int,
        noise: Sequence[float],
        score_steps: int | None = None,
        aggregate: Literal["mean", "min"] = "mean",
        mode_margin: float = 0.0,
    ) -> None:
        self.net, self.critics, self.n, self.noise = net, critics, n, tuple(noise)
        if aggregate not in ("mean", "min"):
            raise ValueError(f"aggregate={aggregate!r} must be 'mean' or 'min'")
        if not mode_margin >= 0:
            raise ValueError(f"mode_margin={mode_margin} must be >= 0")
        self.mode_margin = mode_margin
        self.aggregate = aggregate
        horizon = net.config.horizon
        if score_steps is not None and not 1 <= score_steps <= horizon:
            raise ValueError(f"score_steps={score_steps} must be in [1, horizon={horizon}]")
        self.score_steps = None if score_steps == horizon else score_steps

    def propose(self, feat: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, d) features -> (B, N, h, A) normalised candidate chunks."""
        cfg, a = self.net.config, self.net.spec.action_dim
        scales = candidate_scales(self.n, self.noise).to(feat.device)
        noise = torch.randn(len(feat), self.n, cfg.horizon, a, generator=generator, device=feat.device)
        chunks = self.net.sample(
            feat.repeat_interleave(self.n, 0), (noise * scales[:, None, None]).flatten(0, 1)
        )
        return chunks.view(len(feat), self.n, cfg.horizon, a)

    def score(self, feat: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(B, d) features, (B, N, h, A) candidates -> (B, N) Q^(h), or Q^(score_steps), over the critics
        by ``aggregate``."""
        if self.score_steps is None:
            q = torch.stack([c.q_chunk(feat, candidates) for c in self.critics])
        else:
            length = torch.full(candidates.shape[:2], self.score_steps, device=feat.device)
            q = torch.stack([c.q_prefix(feat, candidates, length) for c in self.critics])
        return q.mean(0) if self.aggregate == "mean" else q.min(0).values

    def choose(
        self, feat: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, d) features -> the (B, h, A) chosen chunks, their (B,) proposal indices and the (B, N)
        scores of every proposal."""
        candidates = self.propose(feat, generator)
        q = self.score(feat, candidates)
        chosen = prefer_mode(q, self.mode_margin)
        return candidates[torch.arange(len(feat)), chosen], chosen, q

    def __call__(self, feat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.choose(feat, generator)[0]


class OneStep:
    """The distilled actor's chunk mu(o, z) from z ~ N(0, noise_scale^2 I), clipped (gripper snapped)."""

    def __init__(self, actor: OneStepActor, horizon: int, action_dim: int, gripper: bool, noise_scale: float):
        self.actor, self.shape, self.gripper, self.noise_scale = (
            actor,
            (horizon, action_dim),
            gripper,
            noise_scale,
        )

    def chunk(self, feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.actor(feat, noise).clamp(-1.0, 1.0)
        return snap_gripper(out) if self.gripper else out

    def __call__(self, feat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = (
            torch.randn(len(feat), *self.shape, generator=generator, device=feat.device) * self.noise_scale
        )
        return self.chunk(feat, noise)


class VLAPolicy:
    """numpy inference: observations keyed by store feature names (one step, or a batch on axis 0), plus
    ``obs["task"]``, the instruction (a string, or one per row) when the policy is language-conditioned.
    Instructions seen in training use the stored embeddings; others go through the language model.

    ``choose`` picks the chunk from the trunk features (default: the flow at x_0 = 0, or the regression
    head); its noise comes from a generator seeded with ``seed``, so a rollout is reproducible.
    ``n_action_steps`` (0 = the whole chunk) and ``ensemble_coef`` (temporal ensembling, ACT's m; 0 = off)
    set how chunks are executed (:class:`~robocl.policy.ChunkExecutor`).
    """

    def __init__(
        self,
        net: VLAPolicyNet,
        device: torch.device,
        language: LanguageEncoder | None = None,
        *,
        choose: ChunkChooser | None = None,
        n_action_steps: int = 0,
        ensemble_coef: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.net, self.device, self._language = net.eval(), device, language
        cfg = net.config
        self.choose = choose or FlowChooser(net)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.obs_keys = [*cfg.state_keys, *cfg.image_keys]
        # What it reads and at which shapes: rollouts render its cameras at the frame size it learnt from.
        self.obs_shapes = {k: tuple(net.spec.obs_shapes[k]) for k in self.obs_keys}
        self._single_ndim = {k: len(shape) for k, shape in self.obs_shapes.items()}
        self._task_row = {t: i for i, t in enumerate(net.spec.extra.get("tasks", []))}
        self.history = ObsHistory(cfg.n_obs)
        self.executor = ChunkExecutor(
            self.predict_chunk,
            cfg.horizon,
            n_action_steps=n_action_steps or (1 if ensemble_coef else None),
            ensemble_coef=ensemble_coef or None,
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
        chunk = self.choose(self.net.features(x, lang), self.generator)
        return self.net.normalizer.unnormalize("action", chunk).cpu().numpy()

    def predict(self, obs: Mapping[str, Any]) -> np.ndarray:
        if not isinstance(obs, Mapping):
            raise TypeError("CO-RFT policies take a dict of observations keyed by store feature names")
        batch, single = batch_size_of(obs, self._single_ndim)
        step = {}
        for key, shape in self.obs_shapes.items():
            value = np.asarray(obs[key])
            if value.shape[value.ndim - len(shape) :] != shape:
                raise ValueError(f"{key}: this policy learnt from {shape} per step, got {value.shape}")
            step[key] = value.reshape(batch, *shape)
        inputs: dict[str, Any] = self.history.push(step)
        if self.net.task_embeddings.shape[1]:
            if "task" not in obs:
                raise KeyError("this policy is language-conditioned: pass the instruction as obs['task']")
            tasks = [obs["task"]] * batch if isinstance(obs["task"], str) else [str(t) for t in obs["task"]]
            inputs["task_embedding"] = self.embed(tasks).cpu().numpy()
        action = self.executor(inputs, batch)
        return action[0] if single else action
