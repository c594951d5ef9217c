"""The ``robocl`` command: a thin layer over the public API, one subcommand per capability."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robocl import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from robocl.edit import describe_edit
    from robocl.store import TrajectoryStore

    with TrajectoryStore.open(args.path, "r") as store:
        info = store.summary()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    size = info["bytes_stored"]
    print(f"store        {info['location']}  (format {info['format_version']}, {info['fps']:g} fps)")
    print(f"episodes     {info['n_episodes']}   steps {info['n_steps']}")
    print(_success_line(info))
    print(f"size         {'-' if size is None else f'{size / 1e6:.2f} MB'}")
    if info["meta"]:
        print(f"meta         {json.dumps(info['meta'])}")
    print("features")
    for name, feat in info["features"].items():
        shape = "x".join(map(str, feat["shape"])) or "scalar"
        print(f"  {name:<32} {feat['kind']:<9} {feat['dtype']:<8} {shape}")
    print(f"tasks ({len(info['tasks'])})")
    for i, task in enumerate(info["tasks"]):
        print(f"  {i:>3}  {task}")
    if info["tags"]:
        print(f"tags         {', '.join(info['tags'])}")
    if info["history"]:
        print(f"history ({len(info['history'])} edits)")
        for entry in info["history"]:
            print(f"  {entry['time']}  {describe_edit(entry)}")
    return 0


def _success_line(info: dict[str, Any]) -> str:
    """Success over the episodes whose success is recorded; "unknown" where none is."""
    n, known, rate = info["n_episodes"], info["n_success_known"], info["success_rate"]
    if n == 0:
        return "success rate -"
    if known == 0:
        return "success      unknown (no episode records it; robocl edit STORE --episodes ... --success true)"
    if known < n:
        return f"success rate {rate:.1%} of the {known} episodes that record it ({n - known} unknown)"
    return f"success rate {rate:.1%}"


def _cmd_validate(args: argparse.Namespace) -> int:
    from robocl.store.validate import repair_store, validate_store

    report = validate_store(args.path, read_chunks=not args.quick or args.repair is not None)
    print(report.as_text())
    if report.ok or args.repair is None:
        return 0 if report.ok else 1
    print(repair_store(args.path, args.repair, report=report).as_text())
    after = validate_store(args.path)
    print(after.as_text())
    return 0 if after.ok else 1


def _cmd_train_bc(args: argparse.Namespace) -> int:
    from robocl.algos.bc import BCConfig
    from robocl.config import config_from_args
    from robocl.run.loop import LoopConfig
    from robocl.run.train import train_bc

    paths = train_bc(
        config_from_args(BCConfig, args),
        args.data,
        args.run_dir,
        config_from_args(LoopConfig, args),
        resume=args.resume,
        tags=_tags(args),
        evaluate=_evaluation(args, args.eval_env),
        progress=not args.quiet,
    )
    print(f"checkpoint: {paths['bc']}")
    return 0


def _cmd_train_co_rft(args: argparse.Namespace) -> int:
    from robocl.algos.co_rft_config import CORFTConfig
    from robocl.config import config_from_args
    from robocl.features import PROPRIOCEPTION, camera_keys, state_keys
    from robocl.run.loop import LoopConfig
    from robocl.run.train import train_co_rft
    from robocl.store import TrajectoryStore

    if args.n_updates is not None:
        raise ValueError("co-rft trains two stages: use --il-updates and --rl-updates, not --n-updates")
    pretrain = args.method == "vla-pretrain"
    overrides: dict[str, Any] = {}
    if args.images:  # every camera of the store; proprioception only, unless --state-keys says otherwise
        with TrajectoryStore.open(args.data, "r") as store:
            cameras, states = camera_keys(store), state_keys(store)
        if not cameras:
            raise ValueError(f"--images: {args.data} has no camera features (robocl info lists its features)")
        overrides["image_keys"] = cameras
        if args.state_keys is None and PROPRIOCEPTION in states:
            overrides["state_keys"] = (PROPRIOCEPTION,)
    config = config_from_args(CORFTConfig, args, **overrides)
    il_updates = _il_updates(args)
    il_loop = config_from_args(LoopConfig, args, n_updates=il_updates) if il_updates else None
    rl_updates = 0 if pretrain else args.rl_updates
    rl_loop = config_from_args(LoopConfig, args, n_updates=rl_updates) if rl_updates else None
    env_id = None if pretrain else _eval_env(args)
    paths = train_co_rft(
        config,
        args.data,
        args.run_dir,
        il_loop=il_loop,
        rl_loop=rl_loop,
        init=args.init,
        resume=args.resume,
        tags=_tags(args),
        evaluate=_evaluation(args, env_id, both_positions=True),
        progress=not args.quiet,
    )
    for stage, path in paths.items():
        print(f"{stage} checkpoint: {path}")
    if pretrain:
        print(f"fine-tune from it: robocl train co-rft --init {paths['il']} --images ...")
    elif env_id is not None and args.eval_episodes:
        print(f"evaluations: {Path(args.run_dir) / 'eval'} (robocl compare {args.run_dir})")
    return 0


def _il_updates(args: argparse.Namespace) -> int:
    """--il-updates, or by default IL_UPDATES_PER_EPISODE for every episode the run trains on (--tags)."""
    from robocl.algos.co_rft_config import il_updates_for
    from robocl.store import TrajectoryStore

    if args.il_updates is not None:
        return args.il_updates
    with TrajectoryStore.open(args.data, "r") as store:
        view = store.view(tags=_tags(args)) if args.tags else store.view()
        return il_updates_for(view.n_episodes)


def _tags(args: argparse.Namespace) -> list[str]:
    return args.tags.split(",") if args.tags else []


def _eval_env(args: argparse.Namespace) -> str | None:
    """The env a training run is evaluated on: --eval-env, else the store's env id when it needs no import."""
    if args.eval_env is not None:
        return args.eval_env
    from robocl.store import TrajectoryStore

    with TrajectoryStore.open(args.data, "r") as store:
        env_id = store.meta.get("env_id")
    if isinstance(env_id, str) and ":" in env_id:
        # Metadata never triggers an import: a module:Env id runs only when the user passes it.
        module = env_id.rsplit(":", 1)[0]
        print(f"no evaluation: the store's env {env_id!r} would import module {module!r}; "
              f"pass --eval-env {env_id} to evaluate on it")  # fmt: skip
        return None
    if not isinstance(env_id, str):
        print("no evaluation: the store names no simulated env (pass --eval-env ID)")
        return None
    return env_id


def _evaluation(args: argparse.Namespace, env_id: str | None, *, both_positions: bool = False) -> Any:
    """The shared evaluator at the end of every stage (and every --eval-every updates), or None;
    ``both_positions``: at seen and unseen start positions, where the env has them."""
    if env_id is None or not args.eval_episodes:
        return None
    from robocl.eval.evaluate import EnvEvaluation
    from robocl.eval.rollout import env_has_positions

    positions = ("seen", "unseen") if both_positions and env_has_positions(env_id) else ("seen",)
    return EnvEvaluation(env_id, args.eval_episodes, positions)


def _cmd_train_hypercrl(args: argparse.Namespace) -> int:
    from robocl.algos.dynamics import HyperCRLConfig
    from robocl.config import config_from_args
    from robocl.run.continual import train_hypercrl

    config = config_from_args(HyperCRLConfig, args)
    metrics = train_hypercrl(config, args.run_dir, resume=args.resume, progress=not args.quiet)
    print(json.dumps({k: metrics[k] for k in ("after_task_matrix", "average", "forgetting_ratio")}, indent=2))
    print(f"metrics: {Path(args.run_dir) / 'continual.json'}, curves: {Path(args.run_dir) / 'curves.png'}")
    return 0


def _cmd_train_symphony(args: argparse.Namespace) -> int:
    from robocl.algos.symphony import SymphonyConfig
    from robocl.config import config_from_args
    from robocl.run.train import OnlineLoopConfig, train_symphony

    config = config_from_args(SymphonyConfig, args)
    online = config_from_args(OnlineLoopConfig, args)
    run_dir = args.run_dir or f"runs/symphony/{online.env.replace('/', '_')}_seed{config.seed}"
    paths = train_symphony(config, online, run_dir, resume=args.resume, progress=not args.quiet)
    print(f"checkpoint: {paths['online']}")
    print(f"experience: {Path(run_dir) / 'data' / 'replay.zarr'} (robocl info shows it)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from robocl.eval.evaluate import evaluate, parse_video_episodes
    from robocl.eval.rollout import env_has_positions
    from robocl.run.runtime import resolve_device

    positions = args.positions if env_has_positions(args.env) else None
    which, n_videos = ("first", 2)
    if args.video_episodes is not None:
        which, n_videos = parse_video_episodes(args.video_episodes, args.episodes)
    out = Path(args.out) if args.out else _eval_dir(Path(args.policy), args.env, positions)
    result = evaluate(
        args.policy,
        args.env,
        n_episodes=args.episodes,
        out_dir=out,
        positions=args.positions,
        num_envs=args.num_envs,
        seed=args.seed,
        video=args.video or args.video_episodes is not None,
        n_videos=n_videos,
        video_episodes=which,
        record=args.record,
        max_steps=args.max_steps,
        env_kwargs=args.env_kwargs,
        device=str(resolve_device(args.device)),
        force=args.force,
        progress=not args.quiet,
    )
    print(result["table"])
    print(f"wrote {out / 'eval_info.json'}")
    return 0


def _eval_dir(ckpt: Path, env_id: str, positions: str | None) -> Path:
    """Where ``robocl eval`` writes by default: beside the checkpoint, not inside it (a later save replaces
    the checkpoint folder whole), named by the env's registered id (no ``module:``) and its positions."""
    from robocl.run.layout import safe_name

    name = f"{ckpt.name}_{env_id.rsplit(':', 1)[-1]}" + (f"_{positions}" if positions else "")
    return ckpt.parent / "eval" / safe_name(name)


def _cmd_compare(args: argparse.Namespace) -> int:
    from robocl.eval.compare import compare

    table, _ = compare(args.runs, out_dir=args.out, step=args.step)
    print(table)
    if args.out:
        print(f"plots in {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- the parser
# Subcommands are built lazily: only the one on the command line imports its modules (torch, the algorithms,
# MuJoCo), so ``robocl --help`` and ``robocl info`` start in a fraction of a second.
COMMANDS = {
    "info": "summarise a trajectory store",
    "validate": "check a store's schema, commit record and chunks",
    "train": "train a policy (robocl train METHOD --help)",
    "eval": "roll out a policy and report success, cycle time and returns",
    "compare": "compare runs: success, cycle time, learning curves (IQM + CIs)",
    "collect": "roll out a policy and write the episodes to a trajectory store",
    "ingest": "read a LeRobot/D4RL/Minari/robomimic dataset into a store",
    "export": "write a store (or its filtered episodes) as a LeRobot/D4RL/Minari/robomimic dataset",
    "edit": "set committed episodes' success and tags (crash-safe, logged in the store's history)",
    "view": "write an episode's video (cameras, instruction, reward, success) and state/action curves",
}
METHODS = {
    "bc": "chunked behaviour cloning on low-dimensional observations",
    "co-rft": "CO-RFT: flow-matching imitation, then chunked offline RL (Cal-QL critic, best-of-N chunks)",
    "vla-pretrain": "pretrain the CO-RFT policy by imitation on a multi-task store (a generalist for --init)",
    "symphony": "Symphony online actor-critic on a gymnasium env",
    "hypercrl": "HyperCRL continual model-based RL (and its CL baselines)",
}


def _add_runtime_args(p: argparse.ArgumentParser, *, device: bool = False) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: robocl's networks are small, and more threads oversubscribe a "
        "shared machine; raise it for image policies on a machine of their own)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    if device:
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="store path or URL")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="store path or URL")
    p.add_argument("--quick", action="store_true", help="check chunks exist without reading them")
    p.add_argument(
        "--repair",
        choices=("truncate", "drop"),
        help="remove the damage found: truncate = keep the episodes before the first damaged one (in "
        "place); drop = keep every undamaged episode (local stores: rewritten, the original kept aside)",
    )
    p.set_defaults(func=_cmd_validate)


def _add_train(p: argparse.ArgumentParser, method: str | None) -> None:
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name, help_text in METHODS.items():
        sub = methods.add_parser(name, help=help_text)
        if name == method:
            _TRAIN_BUILDERS[name](sub)


def _add_train_bc(p: argparse.ArgumentParser) -> None:
    from robocl.algos.bc import BCConfig
    from robocl.config import add_config_args
    from robocl.run.loop import LoopConfig

    p.add_argument("--data", required=True, help="trajectory store to train on")
    p.add_argument("--run-dir", required=True, help="the run directory (run.json, checkpoints/, eval/, tb/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--tags", help="train on episodes with all these comma-separated tags")
    p.add_argument("--eval-env", help="env id evaluated every --eval-every updates and at the end")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_args(p, BCConfig)
    add_config_args(p, LoopConfig)
    p.set_defaults(func=_cmd_train_bc)


def _add_train_co_rft(p: argparse.ArgumentParser, *, pretrain: bool = False) -> None:
    from robocl.algos.co_rft_config import IL_UPDATES_PER_EPISODE, RL_UPDATES, CORFTConfig
    from robocl.config import add_config_args
    from robocl.run.loop import LoopConfig

    p.add_argument("--data", required=True, help="trajectory store to train on (pretraining: multi-task)")
    p.add_argument("--run-dir", required=True, help="the run directory; stages il and rl")
    p.add_argument("--init", help="pretrained backbone: a robocl checkpoint dir or a .safetensors file")
    p.add_argument("--images", action="store_true", help="use every camera of the store")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--tags", help="train on episodes with all these comma-separated tags")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    if pretrain:
        p.add_argument("--il-updates", type=int, default=50_000, help="imitation updates")
        p.set_defaults(rl_updates=0, eval_env=None, eval_episodes=0)
    else:
        p.add_argument(
            "--il-updates",
            type=int,
            help=f"stage-1 updates (default {IL_UPDATES_PER_EPISODE} per training episode); 0 skips stage 1",
        )
        p.add_argument("--rl-updates", type=int, default=RL_UPDATES, help="stage-2 updates; 0 = IL only")
        p.add_argument("--eval-env", help="env evaluated after each stage (default: the store's env_id)")
        p.add_argument(
            "--eval-episodes", type=int, default=20, help="episodes per stage and position set; 0 skips"
        )
    add_config_args(p, CORFTConfig)
    add_config_args(p, LoopConfig)
    p.set_defaults(func=_cmd_train_co_rft)


def _add_train_symphony(p: argparse.ArgumentParser) -> None:
    from robocl.algos.symphony import SymphonyConfig
    from robocl.config import add_config_args
    from robocl.run.train import OnlineLoopConfig

    p.add_argument(
        "--run-dir", help="the run directory (run.json, checkpoints/, eval/, tb/, data/replay.zarr)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_args(p, OnlineLoopConfig)
    add_config_args(p, SymphonyConfig)
    p.set_defaults(func=_cmd_train_symphony)


def _add_train_hypercrl(p: argparse.ArgumentParser) -> None:
    from robocl.algos.dynamics import HyperCRLConfig
    from robocl.config import add_config_args

    p.add_argument("--run-dir", required=True, help="the run directory: a stage per task, data/data.zarr")
    p.add_argument("--resume", action="store_true", help="continue the run (from the start of its task)")
    _add_runtime_args(p)
    add_config_args(p, HyperCRLConfig)
    p.set_defaults(func=_cmd_train_hypercrl)


_TRAIN_BUILDERS = {
    "bc": _add_train_bc,
    "co-rft": _add_train_co_rft,
    "vla-pretrain": lambda p: _add_train_co_rft(p, pretrain=True),
    "symphony": _add_train_symphony,
    "hypercrl": _add_train_hypercrl,
}


def _add_eval(p: argparse.ArgumentParser) -> None:
    from robocl.collect import json_object

    p.add_argument("--policy", required=True, help="checkpoint directory")
    p.add_argument(
        "--env",
        required=True,
        help="gymnasium env id: robocl/..., any registered id, or module:Id for an env a module registers "
        "(your robot's: see README, 'Run a policy on your robot')",
    )
    p.add_argument(
        "--env-kwargs",
        type=json_object,
        help='JSON object of env constructor arguments, e.g. \'{"port": "/dev/ttyACM0"}\'',
    )
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument(
        "--positions",
        choices=("seen", "unseen"),
        default="seen",
        help="start positions, for envs that have them",
    )
    p.add_argument("--num-envs", type=int, default=1, help="parallel worker envs")
    p.add_argument("--video", action="store_true", help="write MP4s of the first 2 episodes")
    p.add_argument(
        "--video-episodes",
        metavar="first:N|failures[:N]|successes[:N]",
        help="which episodes get MP4s (implies --video): the first N, or the first N (default all) failures "
        "or successes",
    )
    p.add_argument("--record", help="also write every episode into this store (tag 'eval')")
    p.add_argument("--seed", type=int, default=100_000, help="episode i starts from reset(seed + i)")
    p.add_argument("--max-steps", type=int, help="episode length override")
    p.add_argument("--out", help="output folder (default: <policy>/../eval/<name>_<env>_<positions>)")
    p.add_argument(
        "--force",
        action="store_true",
        help="run the policy even where the env does not match the features, rate or env it learnt from",
    )
    _add_runtime_args(p, device=True)
    p.set_defaults(func=_cmd_eval)


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories, or folders of runs (one run per seed)")
    p.add_argument("--out", help="folder for the PNG plots")
    p.add_argument(
        "--step",
        choices=("final", "best"),
        default="final",
        help="which evaluation of each stage a run contributes: its final one (default), or its best",
    )
    p.set_defaults(func=_cmd_compare)


def _add_collect(p: argparse.ArgumentParser) -> None:
    from robocl import collect

    collect.configure_parser(p)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the policy (default 1)")


def _add_convert(p: argparse.ArgumentParser, name: str) -> None:
    from robocl import convert_cli

    convert_cli.configure_parser(p, name)


def _add_store_tool(p: argparse.ArgumentParser, name: str) -> None:
    import importlib

    importlib.import_module(f"robocl.{name}").configure_parser(p)


_BUILDERS = {
    "info": _add_info,
    "validate": _add_validate,
    "eval": _add_eval,
    "compare": _add_compare,
    "collect": _add_collect,
    "ingest": lambda p: _add_convert(p, "ingest"),
    "export": lambda p: _add_convert(p, "export"),
    "edit": lambda p: _add_store_tool(p, "edit"),
    "view": lambda p: _add_store_tool(p, "view"),
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``robocl`` parser; only the subcommand named in ``argv`` gets its full options (and imports)."""
    parser = argparse.ArgumentParser(
        prog="robocl",
        description="robocl: offline and continual RL for robot learning on one trajectory store",
    )
    parser.add_argument("--version", action="version", version=f"robocl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    for name, help_text in COMMANDS.items():
        # collect's options are SUPPRESSed so that a recipe's values apply unless a flag overrides them.
        default = argparse.SUPPRESS if name == "collect" else None
        p = sub.add_parser(name, help=help_text, description=help_text, argument_default=default)
        if name != command:
            continue
        if name == "train":
            _add_train(p, words[1] if len(words) > 1 else None)
        else:
            _BUILDERS[name](p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # MuJoCo picks its OpenGL backend at import; EGL renders headless (no display on servers and CI).
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "threads", None) is not None:
        from robocl.run.runtime import set_threads

        set_threads(args.threads)
    from robocl.errors import user_errors

    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        print(f"robocl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # The loop saved the state before this reached us; say where, and how to go on.
        message = f"robocl {args.command}: {exc or 'interrupted'}"
        if args.command == "train" and "--resume" not in argv:
            message += "; continue with: " + " ".join(["robocl", *argv, "--resume"])
        print(message, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
