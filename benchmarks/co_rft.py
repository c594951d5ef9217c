"""CO-RFT against imitation and outside baselines on a few noisy, mixed-quality demonstrations.

    python -m benchmarks.co_rft                                  # small budget, a few minutes on a CPU
    python -m benchmarks.co_rft --task push --demos 30,60 --seeds 0,1,2,3,4 --episodes 50 \
        --il-updates 30000 --rl-updates 2000                               # the full run (the README's)
    python -m benchmarks.co_rft --images --device cuda --demos 60 --seeds 0 --only il,co-rft \
        --il-updates 15000 --rl-updates 500 --episodes 20                  # cameras, on a GPU (minutes)
    python -m benchmarks.co_rft --combine part1.json part2.json --name co_rft_push   # a run done in parts

For each demo count (scripted mixed-quality demos of ``--task``, collection seed 0) and each seed, in one run:

- ``mlp bc``: a plain MLP regressing 10-action chunks (robocl's BC, 5 executed), the outside reference;
- ``iql``: IQL on single actions (``benchmarks/iql.py``, d3rlpy's defaults), the one-step offline-RL baseline;
- ``il regression`` / ``il``: the VLA-style policy (CORFTConfig defaults) with a regression head / with the
  flow-matching head, ``--il-updates`` imitation steps;
- ``il +extra``: the flow policy trained for ``--rl-updates`` more imitation steps (CO-RFT's gradient
  steps), afresh, so its lr schedule spans the longer budget;
- ``co-rft`` (best-of-N chunk selection, the default), ``co-rft distill`` (FQL's one-step actor) and
  ``co-rft regression`` (TD3+BC): stage 2 from the matching IL policy, ``--rl-updates`` updates on all but
  the held-out episodes;
- ``il whole chunk`` / ``il 3 per chunk`` / ``il ensemble``: the flow IL policy executing all 10 actions of
  a chunk open loop / 3 of 10 / ACT's temporal ensembling, and ``<variant> whole chunk`` for every stage-2
  policy, beside the default of 5 of 10; ``il sigma S`` (S = 0, 0.25, 0.5, 1): the flow IL policy sampled
  from x_0 ~ N(0, S^2 I) (how chunks are drawn and executed, measured rather than assumed);
- ``<method> object +-C cm`` (``--object-offset C,...``): every state policy again, told an object position
  off by N(0, C^2) cm per axis, one draw per episode: how precisely a camera must localise the object.

Each is evaluated on seen and unseen object positions (success with a Wilson 95% interval over the episodes
of all seeds pooled, cycle time of the successes). The JSON also holds ms per update of every phase, the
inference latency per chunk on one thread, the stage-2 critic's validation curve (Q against Monte-Carlo
returns on held-out demonstrations, every ``--val-every`` updates) and, per cell, a fingerprint of every
trained policy's weights and of its evaluation episodes: a rerun of a cell at the JSON's commit (``dirty``
says whether the tree had uncommitted changes) gives the same fingerprints, so a different number later is
code drift, not nondeterminism (``--check-determinism`` trains the first seed's flow IL policy on the last
``--demos`` count twice and says so).
Imitation trains under bf16 autocast on a GPU and in float32 on a CPU, one autocast region per update, as
robocl's training loop does; ``--amp bf16`` / ``--amp off`` force either (``budget.bf16_autocast`` in the
JSON says which ran). Stage 2 and the plain MLP cloner train in float32.
The JSON is rewritten after every cell, so a long run stopped early can be finished with the missing
``--seeds``/``--demos`` under another ``--name`` and the parts merged with ``--combine``.
Result: benchmarks/results/co_rft_<task>[_images].json (``--name`` overrides).
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("MUJOCO_GL", "egl")  # --images renders on a headless CPU

from benchmarks.common import RUN_INFO_KEYS, markdown_table, run_info, write_result
from benchmarks.iql import IQL, IQLConfig
from robocl.algos.bc import BC, BCConfig
from robocl.algos.co_rft import CORFT, CORFTConfig
from robocl.checkpoint import load_checkpoint, resolve_checkpoint
from robocl.eval.metrics import wilson_interval
from robocl.features import IMAGE_PREFIX
from robocl.nets.vla import VLAConfig
from robocl.run.loop import NonFiniteError, checkpoint_header, save_algorithm, stage_seed, to_torch
from robocl.store import TrajectoryStore

# Scripted demos of a less practised teleoperator (noise, pauses, detours; datasets/pick_place_50_mixed.toml
# for pick-and-place): the data where a -1/step critic has faster chunks to prefer. Push uses the block with
# unequal halves (HyperCRL's second task): it turns under a straight push, so a constant action fails (0/10;
# it succeeds 10/10 on the uniform block); its expert is noise-sensitive (noise 0.1 with pauses and detours:
# 30% success), so its noise is 0.05. Demo success: pick-place ~97%, push ~93%.
TASKS = {
    "pick-place": {"env": "robocl/PickPlace-v0", "gripper": True,
                   "demos": {"noise": 0.2, "hesitation": 0.05, "detour": 0.3}},
    "push": {"env": "robocl/Push-Density1-v0", "gripper": False,
             "demos": {"noise": 0.05, "hesitation": 0.05, "detour": 0.3}},
}  # fmt: skip
CAMERAS = ("front", "wrist")  # what --images renders (the store's IMAGE_PREFIX + name)
# Stage-2 variants: name -> (the IL policy they start from, CORFTConfig overrides).
RL_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "co-rft": ("il", {}),
    "co-rft distill": ("il", {"actor": "distill"}),
    "co-rft regression": ("il regression", {}),
}
# How the flow IL policy is executed, beside the config's default: whole chunks open loop, ACT's temporal
# ensembling, and the noise scale sigma of x_0 ~ N(0, sigma^2 I) at inference (flow heads only).
EXECUTIONS: dict[str, dict[str, Any]] = {
    "il whole chunk": {"n_action_steps": 0},
    "il 3 per chunk": {"n_action_steps": 3},
    "il ensemble": {"ensemble_coef": 0.01},
    **{f"il sigma {sigma:g}": {"flow_noise": sigma} for sigma in (0.0, 0.25, 0.5, 1.0)},
}
NETWORK_FIELDS = set(VLAConfig.__annotations__)


class PositionOffset:
    """``policy`` seeing a thing where it is not: every episode (each ``reset``) draws one offset per
    axis ~ N(0, ``sigma``^2) (m) and adds it to the ``columns`` of ``observation.object`` that hold the
    thing's position, as a camera that localises it only so well would. It asks how precisely an image
    policy must know where the object (or the plate, the goal: ``--offset-entity``) is
    (``--object-offset``)."""

    def __init__(self, policy: Any, sigma: float, columns: list[int], seed: int) -> None:
        self.policy, self.sigma, self.columns = policy, sigma, columns
        self.rng = np.random.default_rng(seed)
        self.offset = np.zeros(len(columns))
        self.obs_keys = getattr(policy, "obs_keys", ())

    def reset(self) -> None:
        self.offset = self.rng.normal(0.0, self.sigma, len(self.columns))
        self.policy.reset()

    def predict(self, obs: Any) -> np.ndarray:
        state = np.array(obs["observation.object"], dtype=np.float32)  # a copy: the rollout keeps its own
        state[..., self.columns] += self.offset
        return self.policy.predict({**obs, "observation.object": state})


def _position_columns(store: TrajectoryStore, entity: str) -> list[int]:
    """The columns of ``observation.object`` named ``<entity>.x``, ``.y`` (and ``.z`` where the store has
    it: push's goal is a point on the table), in that order."""
    feature = store.features.get("observation.object")
    names = list(feature.names or ()) if feature is not None else []
    wanted = [f"{entity}.{axis}" for axis in "xyz" if f"{entity}.{axis}" in names]
    if len(wanted) < 2:
        raise ValueError(
            f"--offset-entity {entity!r}: the store's observation.object names no {entity}.x and {entity}.y"
        )
    return [names.index(n) for n in wanted]


def _offset_label(method: str, cm: float, entity: str) -> str:
    return f"{method} {entity} +-{cm:g} cm" if cm else method


def _overrides(text: str, option: str) -> dict[str, Any]:
    """``field=value;field=value`` -> CORFTConfig overrides, values parsed as JSON (else kept as text)."""
    overrides = {}
    for item in filter(None, text.split(";")):
        key, _, value = item.partition("=")
        if key not in CORFTConfig.__dataclass_fields__:
            raise argparse.ArgumentTypeError(f"{option} {text!r}: {key!r} is not a CORFTConfig field")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _variant(text: str) -> tuple[str, tuple[str, dict[str, Any]]]:
    """``NAME:field=value;field=value`` -> (NAME, ("il", CORFTConfig overrides))."""
    name, _, fields = text.partition(":")
    overrides = _overrides(fields, "--variant")
    shaping = sorted(set(overrides) & NETWORK_FIELDS)  # the variant copies the trained IL network
    if shaping:
        raise argparse.ArgumentTypeError(
            f"--variant {text!r}: {shaping[0]!r} shapes the IL policy network (use --set)"
        )
    return name, ("il", overrides)


def _settings(text: str) -> dict[str, Any]:
    """``--set`` text -> CORFTConfig overrides for every CO-RFT policy of the run (IL and stage 2)."""
    overrides = _overrides(text, "--set")
    fixed = sorted(set(overrides) & {"seed", "head", "image_keys", "state_keys", "gripper"})
    if fixed:  # the benchmark sets these per cell and per method
        raise argparse.ArgumentTypeError(f"--set {text!r}: {fixed[0]!r} is set by the benchmark itself")
    return overrides


# The last updates of a run are counted (matrix-product FLOPs, forward and backward) rather than timed:
# 50 spans one best-of-N re-ranking period (bon_refresh), so a stage-2 count includes its amortised share.
FLOP_WINDOW = 50
# The image policy's position readout is scored on new expert episodes: this many per position set
# (collection seed 500,000, apart from the demos' and the evaluations'), this many windows of them.
READOUT_EPISODES, READOUT_WINDOWS = 20, 2048


def _train(
    update: Any,
    sample: Any,
    n_updates: int,
    times: list[list[float]],
    every: Any = None,
    flops: list[float] | None = None,
    window: int = FLOP_WINDOW,
) -> None:
    """``n_updates`` calls of ``update(batch)``; appends this run's seconds per update (sampling excluded)
    to ``times`` and, with ``flops``, the mean FLOPs of its last updates (``window``, at most half of
    the run, not timed); calls ``every(i)`` after update i when given."""
    run, counted = [], []
    first_counted = n_updates - (min(window, n_updates // 2) if flops is not None else 0)
    # A GPU runs the update's kernels after update() returns: wait for them, or the clock reads launches.
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    for i in range(n_updates):
        batch = sample()
        try:
            if i >= first_counted:
                with FlopCounterMode(display=False) as counter:  # counts, never changes, the arithmetic
                    update(batch)
                counted.append(counter.get_total_flops())
            else:
                t0 = time.perf_counter()
                update(batch)
                if sync is not None:
                    sync()
                run.append(time.perf_counter() - t0)
        except NonFiniteError as exc:
            times.append(run)  # the updates before it were measured
            counting = " (FLOP-counted)" if i >= first_counted else ""
            raise NonFiniteError(f"update {i + 1} of {n_updates}{counting}: {exc}") from exc
        if every is not None:
            every(i + 1)
    times.append(run)
    if flops is not None and counted:
        flops.append(statistics.mean(counted))


@torch.no_grad()
def _finite_check(algo: CORFT, copied: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """After imitation: the policy's tensors that hold a NaN or inf (the learner's and the copy evaluated),
    whether its chunks on a training batch are finite, in float32 as it acts (runs whose bf16 forwards
    used stale weight casts, fixed in 044fd65, acted with NaN chunks after finite losses), and the first
    module that output a NaN or inf on that batch (None: none did)."""
    net = algo.policy_net
    # Hooks fire as each module returns, inner before outer: the first one to see a NaN or inf names the
    # innermost module whose output turned non-finite.
    first: list[str] = []

    def watch(name: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if not first and isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
                first.append(name)

        return hook

    handles = [m.register_forward_hook(watch(n)) for n, m in net.named_modules() if n]
    try:
        with torch.autocast(algo.device.type, enabled=False):
            batch = to_torch(batch, algo.device)
            was_training = net.training
            chunks = net.eval().sample(net.features(batch["obs"], net.lang_of(batch)))
            net.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    bad = {name: [k for k, v in m.state_dict().items() if not torch.isfinite(v).all()] for name, m in
           (("learner", net), ("evaluated copy", copied))}  # fmt: skip
    return {
        "non_finite_tensors": bad,
        "chunks_finite": bool(torch.isfinite(chunks).all()),
        "first_non_finite_module": first[0] if first else None,
    }


@torch.no_grad()
def _readout_errors(
    policy: Any, algo: CORFT, stores: dict[str, TrajectoryStore], n_windows: int = READOUT_WINDOWS
) -> dict[str, dict[str, float]]:
    """How precisely the image policy locates what it must reach, per position set: the readout's error
    over ``n_windows`` windows of new expert episodes (``stores``, one per position set), and
    (``"<set>, first frame"``) over each episode's first frame: the arm still at home and the object
    alone in view, where the policy chooses where to reach (pilots saw the unseen error largest there)."""
    errors = {}
    for positions, store in stores.items():
        sampler = algo.il_sampler(store)
        lengths = np.asarray(store.episodes["length"])
        starts = np.cumsum(lengths) - lengths  # a window per step: episode e's first is its start
        errors[positions] = _readout_error(policy, algo, store, sampler.sample(n_windows))
        errors[f"{positions}, first frame"] = _readout_error(policy, algo, store, sampler.get_batch(starts))
    return errors


def _readout_error(policy: Any, algo: CORFT, store: TrajectoryStore, windows: Any) -> dict[str, float]:
    """The mean absolute error (cm) of the trunk's readout of the ``aux_state_keys`` positions at the
    last frame of ``windows`` (a batch of ``store``), per named position column."""
    net, keys, columns = policy.net, algo.config.aux_state_keys, policy.net.aux_columns
    batch = to_torch(windows, algo.device)
    lang = None
    if net.task_embeddings.shape[1]:  # the instructions by text: the new episodes index their own list
        lang = policy.embed([store.tasks[i] for i in batch["task_index"].tolist()])
    encoding = net.features_and_trunk(batch["obs"], lang)
    truth = torch.cat([batch["obs"][k][:, -1].float().flatten(1) for k in keys], 1)  # what it regresses
    error = (net.read_positions(encoding.trunk) - truth)[:, columns].abs().mean(0)
    names = [name for k in keys for name in store.features[k].names or ()]
    errors = {
        names[c] if names else str(c): round(100 * float(e), 2)
        for c, e in zip(columns.tolist(), error, strict=True)
    }
    if encoding.pixels is not None:  # each detected position, on the plane it is lifted to: x and y
        found = net.detected_entities(encoding.pixels[:, -1])[..., :2]  # (B, detected, 2)
        detected = (found - truth[:, net.entity_columns[:, :2]]).abs().mean(0)
        for name, entity in zip(net.detected_names, detected, strict=True):
            for axis, e in zip("xy", entity, strict=True):
                errors[f"detected {name}.{axis}"] = round(100 * float(e), 2)
    return errors


def _fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _corft(
    store: TrajectoryStore,
    cfg: CORFTConfig,
    args: argparse.Namespace,
    times: list,
    language: Any,
    flops: list | None = None,
    saved: Path | None = None,
) -> CORFT:
    """The flow or regression IL learner of ``cfg``, trained ``args.il_updates`` updates; with ``saved``
    (``--il-dir``) the learner a previous run saved there, if its config and spec are this one's, else
    trained and saved there."""
    if cfg.il_schedule_updates is None:  # the horizon of stage 1's lr schedule, as robocl train sets it
        cfg = dataclasses.replace(cfg, il_schedule_updates=args.il_updates)
    algo = CORFT.from_store(cfg, store, language=language, device=args.device)
    if saved is not None and resolve_checkpoint(saved) is not None:
        _load_imitation(algo, saved)
        return algo
    sampler = algo.il_sampler(store)
    torch.manual_seed(stage_seed(cfg.seed, "il"))  # dropout's stream, seeded as the loop seeds a stage
    sample = lambda: to_torch(sampler.sample(args.batch_size), args.device)  # noqa: E731

    def update(batch: dict[str, Any]) -> dict[str, float]:
        # One autocast region per update, as robocl's loop opens: inside a region each weight is cast to
        # bf16 once and the cast kept, so a region around the whole run gave every update after the first
        # the first update's weights (the optimiser's steps landed in float32 weights no forward ever used).
        with _precision(args):
            return algo.update(batch)

    _train(update, sample, args.il_updates, times, flops=flops, window=args.flop_window)
    if saved is not None:
        save_algorithm(algo, saved)
    return algo


def _load_imitation(algo: CORFT, path: Path) -> None:
    """Load the IL learner saved at ``path`` into ``algo``, built for the same cell: a config or spec that
    differs (another store, seed, budget or setting) is refused, naming the first field that does. A config
    field added since the learner was saved counts at its default, as loading a checkpoint reads it."""
    ckpt = load_checkpoint(path, method=algo.name)
    header = json.loads(json.dumps(checkpoint_header(algo)))  # tuples as the saved JSON holds them
    saved_config = json.loads(json.dumps(dataclasses.asdict(CORFTConfig(**ckpt.config))))
    for part, saved in (("config", saved_config), ("spec", ckpt.spec)):
        wanted = header[part]
        differs = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if differs:
            raise SystemExit(
                f"--il-dir: {path} holds another learner than this cell's: its {part} differs at "
                f"{differs[0]!r} ({saved.get(differs[0])!r}, this cell {wanted.get(differs[0])!r})"
            )
    algo.load_state_dict({"model": ckpt.tensors, "trainer": ckpt.trainer_state()["algorithm"]})


def _cell_config(
    store: TrajectoryStore, task: dict[str, Any], seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The CORFTConfig fields every CO-RFT policy of one (store, seed) cell shares, ``--set`` included."""
    cameras = tuple(k for k, f in store.features.items() if f.is_image)
    if args.cameras:  # a subset, in the store's order
        cameras = tuple(k for k in cameras if k.removeprefix(IMAGE_PREFIX) in args.cameras)
    base: dict[str, Any] = {**args.set, "image_keys": cameras, "seed": seed, "gripper": task["gripper"]}
    if args.images:  # the cameras replace the privileged object state (proprioception stays)
        base["state_keys"] = ("observation.state",)
    else:
        # With the privileged object state the instruction is redundant (the target plate's position is in
        # it), and on 60 pick-and-place demos it let the policy tell demos apart: 4 seeds of flow IL without
        # it reached 92% / 66% (seen / unseen) against 72-84% / 48-72% with it (pilots, 3k updates).
        base["language_model"] = None
    return base


def _precision(args: argparse.Namespace) -> torch.autocast:
    """The autocast one imitation update runs under: bf16 where ``--amp`` asks for it, else a no-op."""
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)


def _policies(
    store: TrajectoryStore,
    task: dict[str, Any],
    seed: int,
    args: argparse.Namespace,
    language: Any,
    record: dict[str, Any],
) -> dict[str, Any]:
    """The trained policies of one (store, seed) cell, keyed by method name (``args.methods``); fills
    ``record`` with ms and FLOPs per update, validation curves and weight fingerprints."""
    out, wanted, times, flops = {}, set(args.methods), record["times"], record["flops"]
    base = _cell_config(store, task, seed, args)
    ils = {}
    variants = {n: v for n, v in args.variants.items() if {n, f"{n} whole chunk"} & wanted}
    started_from = {il_name for il_name, _ in variants.values()}
    for il_name, head in (("il", "flow"), ("il regression", "regression")):
        evaluated = {il_name, *EXECUTIONS, "il +extra"} if il_name == "il" else {il_name}
        if not evaluated & wanted and il_name not in started_from:
            continue
        cfg = CORFTConfig(head=head, **base)
        saved = None
        if args.il_dir is not None:
            cell = f"{args.task}{'_images' if args.images else ''}_{store.n_episodes}demos_seed{seed}"
            saved = args.il_dir / f"{cell}_{il_name.replace(' ', '_')}"
            if resolve_checkpoint(saved) is not None:  # loaded, not trained: no update times for it
                record["il_loaded_from"][il_name] = str(saved)
        algo = _corft(store, cfg, args, times[il_name], language, flops[il_name], saved)
        ils[il_name] = algo
        out[il_name] = copy.deepcopy(algo).policy()
        record["fingerprints"][il_name] = _fingerprint(algo.state_dict()["model"])
        check = algo.il_sampler(store).sample(args.batch_size)  # a fresh sampler: the stream is untouched
        record["finite"][il_name] = _finite_check(algo, out[il_name].net, check)
        if il_name == "il":
            if args.readout_stores:
                record["readout_cm"] = _readout_errors(out[il_name], algo, args.readout_stores)
            for name, execution in EXECUTIONS.items():
                if name in wanted:
                    out[name] = copy.deepcopy(algo).policy(**execution)
            if "il +extra" in wanted:  # trained afresh for the longer budget (its lr schedule's horizon)
                longer = argparse.Namespace(**{**vars(args), "il_updates": args.il_updates + args.rl_updates})
                out["il +extra"] = _corft(store, cfg, longer, [], language).policy()
    for name, (il_name, overrides) in variants.items():
        variant = copy.deepcopy(ils[il_name])
        variant.config = dataclasses.replace(variant.config, **overrides)
        variant.start_rl()
        train, val = variant.split(store)
        sampler, val_sampler = variant.rl_sampler(train), variant.val_sampler(val) if val else None
        curve = record["validation"].setdefault(name, [])

        def validate(i: int, v: CORFT = variant, vs: Any = val_sampler, c: list = curve) -> None:
            if vs is not None and (i % args.val_every == 0 or i == args.rl_updates):
                c.append({"update": i, **v.validate(vs)})

        sample = lambda s=sampler: to_torch(s.sample(args.batch_size), args.device)  # noqa: E731
        torch.manual_seed(stage_seed(seed, "rl"))
        try:
            _train(
                variant.update, sample, args.rl_updates, times[name], validate, flops[name], args.flop_window
            )
        except NonFiniteError as exc:  # a result of this cell, reported; the other methods still run
            record["diverged"][name] = str(exc)
            print(f"seed {seed}: {name} diverged: {exc}", flush=True)
            continue
        out[name] = variant.policy()
        out[f"{name} whole chunk"] = variant.policy(n_action_steps=0)  # open loop, as for IL
        record["fingerprints"][name] = _fingerprint(variant.state_dict()["model"])
    if "mlp bc" in wanted:
        bc = BC.from_store(BCConfig(obs_keys=("observation.state", "observation.object"), seed=seed), store)
        bc_sampler = bc.sampler(store)
        sample = lambda: to_torch(bc_sampler.sample(args.batch_size), "cpu")  # noqa: E731
        torch.manual_seed(stage_seed(seed, "bc"))
        _train(
            bc.update,
            sample,
            args.il_updates,
            times["mlp bc"],
            flops=flops["mlp bc"],
            window=args.flop_window,
        )
        out["mlp bc"] = bc.policy()
    if "iql" in wanted:
        iql = IQL(IQLConfig(n_updates=args.iql_updates, seed=seed), store)
        _train(
            lambda _: iql.update(), lambda: None, args.iql_updates, times["iql"], flops=flops["iql"],
            window=args.flop_window,
        )  # fmt: skip
        out["iql"] = iql.policy()
    return {name: policy for name, policy in out.items() if name in wanted}


def _latency(policy: Any, store: TrajectoryStore, repeats: int = 50) -> float | None:
    """Median ms for one chunk prediction on a single observation history (one thread); None for a policy
    that acts one action at a time (IQL), so the JSON says null rather than NaN, which JSON lacks."""
    if not hasattr(policy, "predict_chunk"):
        return None
    n_obs = policy.net.config.n_obs
    rows = {k: store.steps(k)[:1] for k in policy.obs_keys}
    obs = {k: np.repeat(v[:, None], n_obs, axis=1) for k, v in rows.items()}
    if getattr(policy.net, "task_embeddings", torch.zeros(0, 0)).shape[1]:
        obs["task_embedding"] = policy.net.task_embeddings[:1].cpu().numpy()
    runs, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_chunk(obs)
        runs.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return 1000 * statistics.median(runs)


def _check_determinism(store: TrajectoryStore, task: dict[str, Any], args: argparse.Namespace, language: Any):
    """Train the flow IL policy of the first seed's cell on ``store`` twice in this process, at the cells'
    precision: equal fingerprints = deterministic."""
    cfg = CORFTConfig(head="flow", **_cell_config(store, task, args.seeds[0], args))
    small = argparse.Namespace(**{**vars(args), "il_updates": min(args.il_updates, 200)})
    trained = [_corft(store, cfg, small, [], language) for _ in range(2)]
    prints = [_fingerprint(algo.state_dict()["model"]) for algo in trained]
    return {"il_updates": small.il_updates, "fingerprints": prints, "identical": prints[0] == prints[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--demos", default="30,60", help="demo counts, comma-separated")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--il-updates", type=int, default=300, help="stage-1 updates (and MLP BC's)")
    parser.add_argument("--rl-updates", type=int, default=30, help="stage-2 updates (and extra IL steps)")
    parser.add_argument("--iql-updates", type=int, default=1000, help="IQL updates")
    parser.add_argument("--val-every", type=int, default=250, help="stage-2 updates between validations")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--flop-window", type=int, default=FLOP_WINDOW, help="last updates of each run FLOP-counted (0: none)"
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="pick-place")
    parser.add_argument(
        "--images",
        action="store_true",
        help="the policy sees the cameras (--cameras picks, --image-size sizes)",
    )
    parser.add_argument(
        "--image-size", type=int, default=96, help="with --images: camera frame height and width in pixels"
    )
    parser.add_argument(
        "--cameras",
        default="",
        help=f"with --images: the cameras the policy reads, comma-separated from {','.join(CAMERAS)} "
        "(default: both)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the policy trains and acts")
    parser.add_argument(
        "--amp",
        choices=("auto", "bf16", "off"),
        default="auto",
        help="training precision: bf16 autocast (auto: on a GPU only, as robocl's training loop), or float32",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (default 1, for two jobs sharing 2 cores; more for a job that has "
        "the machine to itself); inference latency is timed on one thread either way",
    )
    parser.add_argument(
        "--episodes", type=int, default=10, help="evaluation episodes per seed and position set"
    )
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=[],
        help="an extra stage-2 variant from the flow IL policy, 'NAME:field=value;...' (stage-2 "
        "CORFTConfig fields, JSON values)",
    )
    parser.add_argument(
        "--set",
        type=_settings,
        action="append",
        default=[],
        help="CORFTConfig overrides for every CO-RFT policy of the run, 'field=value;...' (JSON values), "
        "e.g. 'n_obs=1' (recorded in the JSON's budget); repeatable, later fields win",
    )
    parser.add_argument(
        "--object-offset",
        default="",
        help="also evaluate every state policy with a position (the object's, or --offset-entity's) off "
        "by N(0, sigma^2) per axis, one draw per episode: comma-separated sigmas in cm, e.g. '1,2,3' (one "
        "row each)",
    )
    parser.add_argument(
        "--offset-entity",
        default="object",
        help="what --object-offset moves: the position in observation.object named '<entity>.x', '.y' "
        "(.z); 'plate' (pick-place's target plate), 'block' or 'goal' (push)",
    )
    parser.add_argument("--only", default="", help="comma-separated methods to run; default: all")
    parser.add_argument("--name", default="", help="result file name (default co_rft_<task>[_images])")
    parser.add_argument("--check-determinism", action="store_true", help="retrain one IL policy twice")
    parser.add_argument(
        "--il-dir",
        type=Path,
        help="keep each cell's IL learners here (robocl checkpoints): a later run with the same task, "
        "settings and seed loads them instead of training (stage-2 experiments on an image policy "
        "in minutes); a learner saved for another cell is refused",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="merge the result files of one run completed in parts (same commit, clean tree, budget; "
        "each seed and demo count once) into --name; trains nothing",
    )
    args = parser.parse_args()
    args.set = {key: value for settings in args.set for key, value in settings.items()}
    if args.combine:
        if not args.name:
            parser.error("--combine needs --name for the merged file")
        print(combine(args.combine, args.name))
        return
    args.variants = {**RL_VARIANTS, **dict(args.variant)}
    variants = [m for name in args.variants for m in (name, f"{name} whole chunk")]
    args.methods = ["mlp bc", "iql", "il regression", "il", *EXECUTIONS, "il +extra", *variants]
    if args.only:
        only = set(args.only.split(","))
        if only - set(args.methods):
            parser.error(f"--only: unknown methods {sorted(only - set(args.methods))}")
        args.methods = [m for m in args.methods if m in only]
    if "language_model" in args.set and not args.images:  # _policies turns it off for the state policy
        parser.error("--set language_model: the state-only policy reads no instruction; add --images")
    args.cameras = tuple(filter(None, args.cameras.split(",")))
    if args.cameras and not args.images:
        parser.error("--cameras: the state-only policy reads no camera; add --images")
    unknown = sorted(set(args.cameras) - set(CAMERAS))
    if unknown:
        parser.error(f"--cameras: unknown {unknown}; the tasks render {CAMERAS}")
    if args.image_size != 96 and not args.images:
        parser.error("--image-size: the state-only policy reads no camera; add --images")
    args.object_offset = tuple(float(x) for x in filter(None, args.object_offset.split(",")))
    if args.object_offset and args.images:
        parser.error(
            "--object-offset moves the object state the state policy reads; the image policy has none"
        )
    if args.offset_entity != "object" and not args.object_offset:
        parser.error(f"--offset-entity {args.offset_entity}: moves nothing without --object-offset")
    if any(cm <= 0 for cm in args.object_offset):
        parser.error(f"--object-offset {args.object_offset}: sigmas must be > 0 cm (0 is the plain row)")
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    # auto: bf16 autocast on a GPU, as robocl's training loop runs there (robocl.run.loop); bf16 on a CPU
    # tells a GPU-only failure from one of bf16 itself. Stage 2 stays float32 either way (CORFT.update).
    args.bf16 = args.amp == "bf16" or (args.amp == "auto" and args.device.startswith("cuda"))
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be >= 1")
    torch.set_num_threads(args.threads)
    from robocl.collect import collect
    from robocl.eval.evaluate import evaluate
    from robocl.nets.language import LanguageEncoder

    demos = [int(x) for x in args.demos.split(",")]
    language = LanguageEncoder()
    task = TASKS[args.task]
    env = task["env"]
    times: dict[str, list[list[float]]] = collections.defaultdict(list)  # phase -> runs -> s per update
    flops: dict[str, list[float]] = collections.defaultdict(list)  # phase -> runs -> FLOPs per update
    cells: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    latency: dict[str, float | None] = {}
    demo_stats: dict[int, dict[str, float]] = {}
    t_start = time.perf_counter()
    # At the start: the commit and tree the numbers come from (a commit made during a long run is not).
    args.info, args.dirty = run_info(args.seeds[0]), _git_dirty()
    name = args.name or f"co_rft_{args.task.replace('-', '_')}{'_images' if args.images else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for n_demos in demos:
            path = Path(tmp) / f"demos{n_demos}.zarr"
            collect(
                env, n_demos, path, seed=0, progress=False, images=args.images, image_size=args.image_size,
                **task["demos"],
            )  # fmt: skip
            stores[n_demos] = store = TrajectoryStore.open(path)
            table = store.episodes
            demo_stats[n_demos] = {
                "success_rate": float(table["success"].mean()),
                "cycle_time_mean": float(table["length"][table["success"]].mean() / store.fps),
            }
        args.readout_stores = {}  # new expert episodes the image policy's position readout is scored on
        if args.images and args.set.get("aux_state_keys"):
            for positions in ("seen", "unseen"):
                path = Path(tmp) / f"readout_{positions}.zarr"
                args.readout_stores[positions] = collect(
                    env, READOUT_EPISODES, path, seed=500_000, progress=False, images=True,
                    image_size=args.image_size, positions=positions,
                )  # fmt: skip
        determinism = (
            _check_determinism(stores[demos[-1]], task, args, language) if args.check_determinism else None
        )
        # Seeds outermost, and the JSON rewritten after every cell: a run stopped early still reports
        # every demo count over the seeds it finished.
        for seed in args.seeds:
            for n_demos, store in stores.items():
                record = {
                    "demos": n_demos,
                    "seed": seed,
                    "times": times,
                    "flops": flops,
                    "validation": {},
                    "fingerprints": {},
                    "finite": {},
                    "diverged": {},
                    "il_loaded_from": {},
                }
                # Checked before training.
                columns = _position_columns(store, args.offset_entity) if args.object_offset else []
                policies = _policies(store, task, seed, args, language, record)
                for (method, policy), cm in itertools.product(policies.items(), (0.0, *args.object_offset)):
                    if not cm:
                        latency.setdefault(method, _latency(policy, store))
                    else:  # seeded by (seed, offset): every method at one offset sees the same draws
                        policy = PositionOffset(policy, cm / 100, columns, seed=1_000 * seed + int(10 * cm))
                    method = _offset_label(method, cm, args.offset_entity)
                    for positions in ("seen", "unseen"):
                        res = evaluate(
                            policy,
                            env,
                            n_episodes=args.episodes,
                            positions=positions,
                            seed=100_000 + 1_000 * seed,
                            out_dir=Path(tmp) / f"eval_{n_demos}_{seed}_{method}_{positions}",
                            progress=False,
                        )
                        episodes = res["episodes"]
                        outcome = [(r.success, r.length) for r in episodes]
                        record["fingerprints"][f"{method} {positions} episodes"] = hashlib.sha256(
                            repr(outcome).encode()
                        ).hexdigest()[:16]
                        cells.append(
                            {
                                "demos": n_demos,
                                "seed": seed,
                                "method": method,
                                "positions": positions,
                                "successes": int(sum(r.success for r in episodes)),
                                "episodes": len(episodes),
                                "cycle_times": [r.cycle_time for r in episodes if r.cycle_time is not None],
                            }
                        )
                records.append({k: v for k, v in record.items() if k not in ("times", "flops")})
                run = {"seeds": sorted({c["seed"] for c in cells}), "wall_s": time.perf_counter() - t_start}
                tables = _report(name, args, env, task, demo_stats, times, flops, cells, records, latency,
                                 run, determinism)  # fmt: skip
                print(f"seed {seed}, {n_demos} demos done after {run['wall_s']:.0f} s", flush=True)
        for store in stores.values():
            store.close()
    print(tables)


def combine(paths: list[Path], name: str) -> str:
    """Merge result files of one benchmark run stopped and completed in parts (``--seeds``/``--demos``
    subsets, and ``--only`` subsets: a method's rows pool the cells of the parts that ran it) into
    ``results/<name>.json``: the cells are pooled as if one process had run them, which is sound because
    every cell is seeded on its own (the fingerprints check that). Refuses parts from different commits,
    dirty trees or budgets, a variant with different settings, and a (seed, demos) cell present twice."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first, done, variants = parts[0], set(), {}
    for path, part in zip(paths, parts, strict=True):
        if part["dirty"]:
            raise SystemExit(f"--combine: {path} was measured on a tree with uncommitted changes")
        for key in ("commit", "env_id", "demo_settings"):
            if part[key] != first[key]:
                raise SystemExit(f"--combine: {path} has {key} {part[key]!r}, {paths[0]} has {first[key]!r}")
        # Parts may run different methods (--only), so different stage-2 variants; one in several parts
        # must have the same settings in each.
        budget = {k: v for k, v in part["budget"].items() if k not in ("demos", "variants")}
        if budget != {k: v for k, v in first["budget"].items() if k not in ("demos", "variants")}:
            raise SystemExit(f"--combine: {path} has a different budget from {paths[0]}")
        for variant, settings in part["budget"].get("variants", {}).items():
            if variants.setdefault(variant, settings) != settings:
                raise SystemExit(f"--combine: {path} runs variant {variant!r} with other settings")
        cells = {(r["seed"], r["demos"]) for r in part["records"]}
        if cells & done:
            raise SystemExit(f"--combine: {path} repeats the (seed, demos) cells {sorted(cells & done)}")
        done |= cells
    demo_stats: dict[int, dict[str, float]] = {}
    for path, part in zip(paths, parts, strict=True):
        for n_demos, stats in part["demos_collected"].items():
            if demo_stats.setdefault(int(n_demos), stats) != stats:
                raise SystemExit(f"--combine: {path} collected different {n_demos}-demo data")
    cells = [c for part in parts for c in part["cells"]]
    methods = list(dict.fromkeys([s["method"] for part in parts for s in part["summary"]]))  # the run's order
    rows, summary = _summary(sorted(demo_stats), methods, cells)
    per_part = {
        key: [part.get(key, {}) for part in parts]
        for key in ("ms_per_update_median", "ms_per_update_mean", "ms_first_update_median")
    }
    payload = {
        **{k: first.get(k) for k in RUN_INFO_KEYS},
        "dirty": False,
        "seeds": sorted({c["seed"] for c in cells}),
        "wall_s": sum(part["wall_s"] for part in parts),
        "env_id": first["env_id"],
        "demo_settings": first["demo_settings"],
        "demos_collected": {n: demo_stats[n] for n in sorted(demo_stats)},
        "budget": {**first["budget"], "demos": sorted(demo_stats), "variants": variants},
        # Medians of the parts' medians: the parts ran at different times, under different machine load.
        **{
            key: {
                phase: statistics.median(p[phase] for p in values if phase in p)
                for phase in dict.fromkeys(ph for p in values for ph in p)
            }
            for key, values in per_part.items()
        },
        "gflop_per_update": {k: v for part in parts for k, v in part.get("gflop_per_update", {}).items()},
        # Each policy's latency from the first part that measured it.
        "ms_per_chunk_inference": {
            k: v for part in reversed(parts) for k, v in part["ms_per_chunk_inference"].items()
        },
        "determinism": next((p["determinism"] for p in parts if p["determinism"]), None),
        "parts": [
            {
                "file": Path(path).name,
                "date": part["date"],
                "cpu": part.get("cpu"),
                "cpu_vector_isa": part.get("cpu_vector_isa"),
                "torch_cpu_capability": part.get("torch_cpu_capability"),
                "kernel_settings": part.get("kernel_settings"),
                "cells": sorted([r["seed"], r["demos"]] for r in part["records"]),
                "wall_s": part["wall_s"],
            }
            for path, part in zip(paths, parts, strict=True)
        ],
        "summary": summary,
        "records": sorted(
            (r for part in parts for r in part["records"]), key=lambda r: (r["seed"], r["demos"])
        ),
        "cells": cells,
    }
    path = write_result(name, payload)
    table = markdown_table(["demos", "method", "positions", "success (95% CI)", "cycle time"], rows)
    return f"{table}\n\nwrote {path}"


def _git_dirty() -> bool:
    try:
        status = subprocess.check_output(
            ["git", "status", "--porcelain", "--untracked-files=no"], text=True, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.CalledProcessError):
        return True
    return bool(status.strip())


def _summary(
    demo_counts: list[int], methods: list[str], cells: list[dict[str, Any]]
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """Pool the cells of every (demos, method, positions) over seeds: the table rows and the JSON summary."""
    rows, summary = [], []
    for n_demos in demo_counts:
        for method in methods:
            for positions in ("seen", "unseen"):
                group = [
                    c
                    for c in cells
                    if (c["demos"], c["method"], c["positions"]) == (n_demos, method, positions)
                ]
                if not group:
                    continue
                k, n = sum(c["successes"] for c in group), sum(c["episodes"] for c in group)
                cycles = [t for c in group for t in c["cycle_times"]]
                lo, hi = wilson_interval(k, n)
                cycle = float(np.mean(cycles)) if cycles else None
                summary.append(
                    {
                        "demos": n_demos,
                        "method": method,
                        "positions": positions,
                        "success_rate": k / n,
                        "success_ci95": [lo, hi],
                        "episodes": n,
                        "cycle_time_mean": cycle,
                    }
                )
                rows.append(
                    [n_demos, method, positions, f"{k}/{n} = {k / n:.0%} [{lo:.0%}, {hi:.0%}]",
                     "-" if cycle is None else f"{cycle:.2f} s"]
                )  # fmt: skip
    return rows, summary


def _report(
    name: str,
    args: argparse.Namespace,
    env: str,
    task: dict[str, Any],
    demo_stats: dict[int, dict[str, float]],
    times: dict[str, list[list[float]]],
    flops: dict[str, list[float]],
    cells: list[dict[str, Any]],
    records: list[dict[str, Any]],
    latency: dict[str, float | None],
    run: dict[str, Any],
    determinism: dict[str, Any] | None,
) -> str:
    """Write the JSON for the cells so far; returns the printed tables."""
    methods = [
        _offset_label(m, cm, args.offset_entity) for m in args.methods for cm in (0.0, *args.object_offset)
    ]
    rows, summary = _summary(list(demo_stats), methods, cells)
    # The first stage-2 update of each run also encodes every history once (the frozen-trunk feature table,
    # best-of-N's candidates): it is reported apart.
    times = {k: [run for run in v if run] for k, v in times.items()}  # a run diverged at its first update
    times = {k: v for k, v in times.items() if v}
    later = {k: [t for run in v for t in run[1:] or run] for k, v in times.items()}
    ms = {k: 1000 * statistics.median(v) for k, v in later.items()}
    # The mean also spreads the periodic work over the updates (best-of-N re-ranks every history's
    # candidates every bon_refresh updates), which the median leaves out.
    mean_ms = {k: 1000 * statistics.mean(v) for k, v in later.items()}
    first_ms = {k: 1000 * statistics.median(run[0] for run in v) for k, v in times.items()}
    # Matrix-product FLOPs (torch's FlopCounterMode), set by the shapes: equal across runs but for the
    # best-of-N ranking's share; so ms per update against IL splits into arithmetic and its speed.
    gflop = {k: statistics.mean(v) / 1e9 for k, v in flops.items() if v}
    payload = {
        **args.info,
        "dirty": args.dirty,
        **run,
        "env_id": env,
        "demo_settings": task["demos"],
        "demos_collected": demo_stats,
        "budget": {
            "demos": list(demo_stats),
            "images": args.images,
            "cameras": list(args.cameras or CAMERAS) if args.images else [],
            "image_size": args.image_size if args.images else None,
            "device": args.device,
            "bf16_autocast": args.bf16,
            "threads": args.threads,
            "il_updates": args.il_updates,
            "rl_updates": args.rl_updates,
            "iql_updates": args.iql_updates,
            "batch_size": args.batch_size,
            "eval_episodes_per_seed": args.episodes,
            "variants": {name: args.variants[name] for name in args.methods if name in args.variants},
            "config_overrides": args.set,
            "object_offset_cm": list(args.object_offset),
            "offset_entity": args.offset_entity,
        },
        "ms_per_update_median": ms,
        "ms_per_update_mean": mean_ms,
        "ms_first_update_median": first_ms,
        "gflop_per_update": gflop,
        "ms_per_chunk_inference": latency,
        "determinism": determinism,
        "summary": summary,
        "records": records,
        "cells": cells,
    }
    path = write_result(name, payload)
    diverged = [
        f"seed {r['seed']}, {r['demos']} demos, {k}: {v}" for r in records for k, v in r["diverged"].items()
    ]
    readouts = [(r, positions, cm) for r in records for positions, cm in r.get("readout_cm", {}).items()]
    readout_table = [
        "",
        markdown_table(
            ["seed", "demos", "positions", *(f"readout error {c} (cm)" for c in readouts[0][2])],
            [[r["seed"], r["demos"], positions, *cm.values()] for r, positions, cm in readouts],
        ),
    ] if readouts else []  # fmt: skip
    g = {k: gflop.get(k, np.nan) for k in ms}
    phases = [[k, v, mean_ms[k], first_ms[k], g[k], g[k] / v * 1e3] for k, v in ms.items()]
    return "\n".join(
        [
            markdown_table(["demos", "method", "positions", "success (95% CI)", "cycle time"], rows),
            "",
            markdown_table(
                ["phase", "ms / update (median)", "(mean)", "first update ms", "GFLOP / update", "GFLOP/s"],
                phases,
            ),
            "",
            markdown_table(["policy", "ms / chunk (1 thread)"], [[k, v] for k, v in latency.items()]),
            *readout_table,
            *(f"\ndiverged (no cells): {d}" for d in diverged),
            f"\nwrote {path}",
        ]
    )


if __name__ == "__main__":
    main()
