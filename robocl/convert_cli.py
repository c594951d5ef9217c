"""``robocl ingest`` and ``robocl export``: argparse wiring over :mod:`robocl.store.convert`.

    robocl ingest {lerobot,d4rl,minari,robomimic} SRC STORE [--fps F] [...]
    robocl export {lerobot,d4rl,minari,robomimic} STORE DEST [...]

Rerunning an interrupted ingest resumes it: episodes already committed from the same source are skipped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from robocl.store.convert import FORMATS, export, ingest

#: CLI option -> (the formats it applies to, the API keyword it sets); options left unset keep API defaults.
INGEST_OPTIONS = {
    "fps": (("d4rl", "minari", "robomimic"), "fps"),
    "repo_id": (("lerobot",), "repo_id"),
    "tolerance_s": (("lerobot",), "tolerance_s"),
    "env": (("d4rl",), "env"),
    "cast": (("lerobot", "d4rl", "minari", "robomimic"), "cast"),
    "success": (("lerobot", "d4rl", "minari", "robomimic"), "success"),
}
EXPORT_OPTIONS = {
    "images": (("lerobot",), "use_videos"),
    "vcodec": (("lerobot",), "vcodec"),
    "crf": (("lerobot",), "crf"),
    "dataset_id": (("minari",), "dataset_id"),
    "data_format": (("minari",), "data_format"),
}


def _options(args: argparse.Namespace, table: dict[str, tuple[tuple[str, ...], str]]) -> dict[str, Any]:
    """The format-specific keywords the user set; an option of another format is an error, not ignored."""
    opts: dict[str, Any] = {}
    for option, (formats, keyword) in table.items():
        value = getattr(args, option)
        if value is None or value is False:
            continue
        if args.format not in formats:
            raise ValueError(
                f"--{option.replace('_', '-')} applies to {', '.join(formats)}, not {args.format}"
            )
        opts[keyword] = not value if option == "images" else value
    return opts


def _casts(text: str) -> dict[str, str]:
    """``name=dtype,name=dtype`` -> {name: dtype}."""
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    if not pairs or any(not name or not sep or not dtype for name, sep, dtype in pairs):
        raise argparse.ArgumentTypeError(f"expected FEATURE=DTYPE[,FEATURE=DTYPE...], got {text!r}")
    return {name.strip(): dtype.strip() for name, _, dtype in pairs}


def _ingest(args: argparse.Namespace) -> int:
    opts = _options(args, INGEST_OPTIONS)
    try:
        store = ingest(args.format, args.src, args.store, progress=not args.quiet, **opts)
    except ImportError as exc:
        print(f"robocl ingest: error: {exc}", file=sys.stderr)
        return 2
    with store:
        print(f"{store.location}: {store.n_episodes} episodes, {store.n_steps} steps")
        unknown = int((~store.success_known).sum())
        if unknown:
            print(
                f"success unknown for {unknown} episodes: mark them with robocl edit {args.store} --episodes "
                "0-9,12 --success true|false (offline RL derives its rewards from it)"
            )
    return 0


def _export(args: argparse.Namespace) -> int:
    opts = _options(args, EXPORT_OPTIONS)
    try:
        dest = export(
            args.format, args.store, args.dest, progress=not args.quiet, overwrite=args.overwrite, **opts
        )
    except ImportError as exc:
        print(f"robocl export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {dest}")
    return 0


def configure_parser(p: argparse.ArgumentParser, command: str) -> None:
    """Add the options of ``robocl ingest`` or ``robocl export`` to its parser."""
    formats = sorted(FORMATS)
    if command == "ingest":
        _ingest_options(p, formats)
    else:
        _export_options(p, formats)


def _ingest_options(ingest_p: argparse.ArgumentParser, formats: list[str]) -> None:
    ingest_p.add_argument("format", choices=formats)
    ingest_p.add_argument("src", help="dataset: LeRobot root, .hdf5 file, Minari dataset path or id")
    ingest_p.add_argument("store", help="store path (created, or resumed if it exists)")
    ingest_p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="control rate for formats without one (default: recorded by robocl, else 10; robomimic 20)",
    )
    ingest_p.add_argument(
        "--repo-id", default=None, help="lerobot: dataset id for the source name (default: folder name)"
    )
    ingest_p.add_argument(
        "--tolerance-s", type=float, default=None, help="lerobot: video timestamp tolerance (1e-4 s)"
    )
    ingest_p.add_argument(
        "--env", default=None, help="d4rl: env name for reference scores (default: file name)"
    )
    ingest_p.add_argument(
        "--cast",
        type=_casts,
        default=None,
        help="store features in another dtype of the same kind, e.g. reward=float32,action=float32 "
        "(default: the source's dtypes, so round trips are exact)",
    )
    ingest_p.add_argument(
        "--success",
        default=None,
        metavar="last|all|none|column:NAME",
        help="episodes' success: last = what the dataset records (LeRobot: the last next.success; unknown "
        "without it), all = every episode succeeded, none = unknown, column:NAME = the last value of "
        "that per-step column (default: last)",
    )
    ingest_p.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest_p.set_defaults(func=_ingest)


def _export_options(export_p: argparse.ArgumentParser, formats: list[str]) -> None:
    export_p.add_argument("format", choices=formats)
    export_p.add_argument("store", help="store path or URL")
    export_p.add_argument("dest", help="LeRobot root, .hdf5 file, or Minari datasets root")
    export_p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    export_p.add_argument(
        "--images", action="store_true", help="lerobot: lossless PNG images instead of MP4 video"
    )
    export_p.add_argument("--vcodec", default=None, help="lerobot: video encoder (libsvtav1, else libx264)")
    export_p.add_argument(
        "--crf", type=int, default=None, help="lerobot: video quality, lower is better (30)"
    )
    export_p.add_argument(
        "--dataset-id", default=None, help="minari: dataset id (default: robocl/<store name>-v0)"
    )
    export_p.add_argument(
        "--data-format", default=None, choices=["hdf5", "arrow"], help="minari: data format (hdf5)"
    )
    export_p.add_argument("--quiet", action="store_true", help="no progress bar")
    export_p.set_defaults(func=_export)
