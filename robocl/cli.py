"""The ``robocl`` command: a thin layer over the public API, one subcommand per capability."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from robocl import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from robocl.store import TrajectoryStore

    with TrajectoryStore.open(args.path, "r") as store:
        info = store.summary()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    size = info["bytes_stored"]
    print(f"store        {info['location']}  (format {info['format_version']}, {info['fps']:g} fps)")
    print(f"episodes     {info['n_episodes']}   steps {info['n_steps']}")
    rate = info["success_rate"]
    print(f"success rate {'-' if rate is None else f'{rate:.1%}'}")
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
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from robocl.store.validate import validate_store

    report = validate_store(args.path, read_chunks=not args.quick)
    print(report.as_text())
    return 0 if report.ok else 1


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
    validate.add_argument("--quick", action="store_true", help="skip reading every chunk")
    validate.set_defaults(func=_cmd_validate)

    import importlib.util

    if importlib.util.find_spec("robocl.collect"):  # TEMP until collect lands
        from robocl import collect

        collect.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, PermissionError) as exc:
        print(f"robocl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
