"""The ``robocl`` command: a thin layer over the public API, one subcommand per capability."""

from __future__ import annotations

import argparse
import json
import os
import re
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
    from robocl.algos.bc import BC, BCConfig
    from robocl.config import config_from_args
    from robocl.store import TrajectoryStore
    from robocl.train import LoopConfig, fit

    config = config_from_args(BCConfig, args)
    loop = config_from_args(LoopConfig, args)
    with TrajectoryStore.open(args.data, "r") as store:
        view = store.view(tags=args.tags.split(",")) if args.tags else store.view()
        algo = BC.from_store(config, store, device=loop.device)
        evaluate = _periodic_eval(args) if args.eval_env else None
        fit(algo, algo.sampler(view), loop, args.run_dir, resume=args.resume, evaluate=evaluate)
    print(f"checkpoint: {Path(args.run_dir) / 'checkpoints' / 'last'}")
    return 0


def _cmd_train_co_rft(args: argparse.Namespace) -> int:
    from robocl.algos.co_rft import CORFTConfig, train_co_rft
    from robocl.config import config_from_args
    from robocl.features import PROPRIOCEPTION, camera_keys, state_keys
    from robocl.store import TrajectoryStore
    from robocl.train import LoopConfig

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
    il_loop = config_from_args(LoopConfig, args, n_updates=args.il_updates) if args.il_updates else None
    rl_updates = 0 if pretrain else args.rl_updates
    rl_loop = config_from_args(LoopConfig, args, n_updates=rl_updates) if rl_updates else None
    paths = train_co_rft(
        config,
        args.data,
        args.run_dir,
        il_loop=il_loop,
        rl_loop=rl_loop,
        init=args.init,
        resume=args.resume,
        tags=args.tags.split(",") if args.tags else (),
    )
    for stage, path in paths.items():
        print(f"{stage} checkpoint: {path}")
    if pretrain:
        print(f"fine-tune from it: robocl train co-rft --init {paths['il']} --images ...")
    elif args.eval_episodes:
        _evaluate_stages(paths, args)
    return 0


def _eval_dir(ckpt: Path, env_id: str, positions: str | None) -> Path:
    """Where ``robocl eval`` writes by default: beside the checkpoint, not inside it (a later save replaces
    the checkpoint folder whole), named by the env's registered id (no ``module:``) and its positions, with
    only characters every file system takes."""
    name = f"{ckpt.name}_{env_id.rsplit(':', 1)[-1]}" + (f"_{positions}" if positions else "")
    return ckpt.parent / "eval" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _evaluate_stages(paths: dict[str, Path], args: argparse.Namespace) -> None:
    """``robocl eval`` of every stage's checkpoint at seen and unseen positions (where the env has them),
    on the store's env."""
    from robocl.eval.evaluate import evaluate
    from robocl.eval.rollout import env_has_positions
    from robocl.store import TrajectoryStore

    env_id = args.eval_env
    if env_id is None:
        with TrajectoryStore.open(args.data, "r") as store:
            env_id = store.meta.get("env_id")
        if isinstance(env_id, str) and ":" in env_id:
            # Metadata never triggers an import: a module:Env id runs only when the user passes it.
            module = env_id.rsplit(":", 1)[0]
            print(
                f"no evaluation: the store's env {env_id!r} would import module {module!r}; "
                f"pass --eval-env {env_id} to evaluate on it"
            )
            return
    if env_id is None:
        print("no evaluation: the store names no simulated env (pass --eval-env ID)")
        return
    position_sets = ("seen", "unseen") if env_has_positions(env_id) else ("seen",)
    for stage, path in paths.items():
        for positions in position_sets:
            out = _eval_dir(Path(path), env_id, positions if len(position_sets) > 1 else None)
            result = evaluate(
                str(path), env_id, n_episodes=args.eval_episodes, out_dir=out, positions=positions
            )
            print(f"[{stage}] " + result["table"])


def _cmd_train_hypercrl(args: argparse.Namespace) -> int:
    from robocl.algos.hypercrl import HyperCRL, HyperCRLConfig
    from robocl.config import config_from_args

    algo = HyperCRL.open(config_from_args(HyperCRLConfig, args), args.run_dir)
    metrics = algo.run(args.run_dir)
    print(json.dumps({k: metrics[k] for k in ("after_task_matrix", "average", "forgetting_ratio")}, indent=2))
    print(f"metrics: {Path(args.run_dir) / 'continual.json'}, curves: {Path(args.run_dir) / 'curves.png'}")
    return 0


def _cmd_train_symphony(args: argparse.Namespace) -> int:
    from robocl.algos.symphony import OnlineLoopConfig, SymphonyConfig, train_online
    from robocl.config import config_from_args

    config = config_from_args(SymphonyConfig, args)
    loop = config_from_args(OnlineLoopConfig, args)
    run_dir = args.run_dir or f"runs/symphony/{loop.env.replace('/', '_')}_seed{config.seed}"
    train_online(config, loop, run_dir, resume=args.resume)
    print(f"checkpoint: {Path(run_dir) / 'checkpoints' / 'last'}")
    print(f"experience: {Path(run_dir) / 'replay.zarr'} (robocl info shows it)")
    return 0


def _periodic_eval(args: argparse.Namespace) -> Any:
    from robocl.eval.evaluate import evaluate

    def run(algo: Any) -> dict[str, float]:
        out = Path(args.run_dir) / "eval" / f"step_{algo.step:07d}"
        result = evaluate(
            algo.policy(), args.eval_env, n_episodes=args.eval_episodes, out_dir=out, progress=False
        )
        summary = result["summary"]
        metrics = {"mean_return": summary["mean_return"]}
        if summary["success_rate"] is not None:  # None: the env reports no success
            metrics["success_rate"] = summary["success_rate"]
        if summary["cycle_time_mean"] is not None:
            metrics["cycle_time"] = summary["cycle_time_mean"]
        return metrics

    return run


def _cmd_eval(args: argparse.Namespace) -> int:
    from robocl.eval.evaluate import evaluate, parse_video_episodes
    from robocl.eval.rollout import env_has_positions

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
        force=args.force,
    )
    print(result["table"])
    print(f"wrote {out / 'eval_info.json'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from robocl.eval.compare import compare

    table, _ = compare(args.runs, out_dir=args.out)
    print(table)
    if args.out:
        print(f"plots in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robocl",
        description="robocl: offline and continual RL for robot learning on one trajectory store",
    )
    parser.add_argument("--version", action="version", version=f"robocl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser("info", help="summarise a trajectory store")
    info.add_argument("path", help="store path or URL")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)

    validate = sub.add_parser("validate", help="check a store's schema, commit record and chunks")
    validate.add_argument("path", help="store path or URL")
    validate.add_argument("--quick", action="store_true", help="check chunks exist without reading them")
    validate.add_argument(
        "--repair",
        choices=("truncate", "drop"),
        help="remove the damage found: truncate = keep the episodes before the first damaged one (in "
        "place); drop = keep every undamaged episode (local stores: rewritten, the original kept aside)",
    )
    validate.set_defaults(func=_cmd_validate)

    from robocl.algos.bc import BCConfig
    from robocl.config import add_config_args
    from robocl.train import LoopConfig

    train = sub.add_parser("train", help="train a policy (robocl train METHOD --help)")
    methods = train.add_subparsers(dest="method", metavar="METHOD", required=True)
    bc = methods.add_parser("bc", help="chunked behaviour cloning on low-dimensional observations")
    bc.add_argument("--data", required=True, help="trajectory store to train on")
    bc.add_argument("--run-dir", required=True, help="where checkpoints, config and TensorBoard logs go")
    bc.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    bc.add_argument("--tags", help="train on episodes with all these comma-separated tags")
    bc.add_argument("--eval-env", help="env id evaluated every --eval-every updates and at the end")
    bc.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    add_config_args(bc, BCConfig)
    add_config_args(bc, LoopConfig)
    bc.set_defaults(func=_cmd_train_bc)

    from robocl.algos.symphony import OnlineLoopConfig, SymphonyConfig

    sym = methods.add_parser("symphony", help="Symphony online actor-critic on a gymnasium env")
    sym.add_argument("--run-dir", help="checkpoints, TensorBoard, eval.jsonl and the run's replay.zarr store")
    sym.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    add_config_args(sym, OnlineLoopConfig)
    add_config_args(sym, SymphonyConfig)
    sym.set_defaults(func=_cmd_train_symphony)

    from robocl.algos.co_rft import CORFTConfig

    corft = methods.add_parser("co-rft", help="CO-RFT: imitation, then chunked offline RL (Cal-QL + TD3+BC)")
    corft.add_argument("--data", required=True, help="trajectory store to train on")
    corft.add_argument("--run-dir", required=True, help="checkpoints + TensorBoard logs: DIR/il, DIR/rl")
    corft.add_argument("--init", help="pretrained backbone: a robocl checkpoint dir or a .safetensors file")
    corft.add_argument("--images", action="store_true", help="use every camera of the store")
    corft.add_argument("--il-updates", type=int, default=20_000, help="stage-1 updates; 0 skips stage 1")
    corft.add_argument("--rl-updates", type=int, default=20_000, help="stage-2 updates; 0 = imitation only")
    corft.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    corft.add_argument("--tags", help="train on episodes with all these comma-separated tags")
    corft.add_argument("--eval-env", help="env evaluated at the end (default: the store's env_id)")
    corft.add_argument(
        "--eval-episodes", type=int, default=20, help="episodes per stage and position set; 0 skips"
    )
    add_config_args(corft, CORFTConfig)
    add_config_args(corft, LoopConfig)
    corft.set_defaults(func=_cmd_train_co_rft, method="co-rft")

    pre = methods.add_parser(
        "vla-pretrain",
        help="pretrain the CO-RFT policy by imitation on a multi-task store (a generalist for --init)",
    )
    pre.add_argument("--data", required=True, help="multi-task store, e.g. datasets/generalist.toml")
    pre.add_argument("--run-dir", required=True, help="checkpoint DIR/il/checkpoints/last + TensorBoard")
    pre.add_argument("--init", help="start from this backbone instead of scratch")
    pre.add_argument("--images", action="store_true", help="use every camera of the store")
    pre.add_argument("--il-updates", type=int, default=50_000, help="imitation updates")
    pre.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    pre.add_argument("--tags", help="train on episodes with all these comma-separated tags")
    add_config_args(pre, CORFTConfig)
    add_config_args(pre, LoopConfig)
    pre.set_defaults(func=_cmd_train_co_rft, method="vla-pretrain")

    from robocl.algos.hypercrl import HyperCRLConfig

    hcrl = methods.add_parser("hypercrl", help="HyperCRL continual model-based RL (and its CL baselines)")
    hcrl.add_argument("--run-dir", required=True, help="checkpoints, store, metrics; a killed run resumes")
    add_config_args(hcrl, HyperCRLConfig)
    hcrl.set_defaults(func=_cmd_train_hypercrl)

    from robocl.collect import json_object

    ev = sub.add_parser("eval", help="roll out a policy and report success, cycle time and returns")
    ev.add_argument("--policy", required=True, help="checkpoint directory")
    ev.add_argument(
        "--env",
        required=True,
        help="gymnasium env id: robocl/..., any registered id, or module:Id for an env a module registers "
        "(your robot's: see README, 'Run a policy on your robot')",
    )
    ev.add_argument(
        "--env-kwargs",
        type=json_object,
        help='JSON object of env constructor arguments, e.g. \'{"port": "/dev/ttyACM0"}\'',
    )
    ev.add_argument("--episodes", type=int, default=50)
    ev.add_argument(
        "--positions",
        choices=("seen", "unseen"),
        default="seen",
        help="start positions, for envs that have them",
    )
    ev.add_argument("--num-envs", type=int, default=1, help="parallel worker envs")
    ev.add_argument("--video", action="store_true", help="write MP4s of the first 2 episodes")
    ev.add_argument(
        "--video-episodes",
        metavar="first:N|failures[:N]|successes[:N]",
        help="which episodes get MP4s (implies --video): the first N, or the first N (default all) failures "
        "or successes",
    )
    ev.add_argument("--record", help="also write every episode into this store (tag 'eval')")
    ev.add_argument("--seed", type=int, default=100_000, help="episode i starts from reset(seed + i)")
    ev.add_argument("--max-steps", type=int, help="episode length override")
    ev.add_argument("--out", help="output folder (default: <policy>/../eval/<name>_<env>_<positions>)")
    ev.add_argument(
        "--force",
        action="store_true",
        help="run the policy even where the env does not match the features, rate or env it learnt from",
    )
    ev.set_defaults(func=_cmd_eval)

    cmp_ = sub.add_parser("compare", help="compare runs: success, cycle time, learning curves (IQM + CIs)")
    cmp_.add_argument("runs", nargs="+", help="one folder per method (its seeds' runs below it)")
    cmp_.add_argument("--out", help="folder for the PNG plots")
    cmp_.set_defaults(func=_cmd_compare)

    from robocl import collect, convert_cli, edit, view

    collect.add_parser(sub)
    convert_cli.add_parsers(sub)
    edit.add_parser(sub)
    view.add_parser(sub)
    return parser


def user_errors() -> tuple[type[Exception], ...]:
    """What the command line reports as one line, without a traceback: bad input (files, stores,
    checkpoints, options), a store held by another writer, a diverged run, a dead env worker."""
    from robocl.eval.rollout import WorkerDiedError
    from robocl.store import StoreLockedError
    from robocl.train import TrainingDiverged

    return (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        KeyError,
        PermissionError,
        StoreLockedError,
        TrainingDiverged,
        WorkerDiedError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    # MuJoCo picks its OpenGL backend at import; EGL renders headless (no display on servers and CI).
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        print(f"robocl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
