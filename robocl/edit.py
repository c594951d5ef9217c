"""``robocl edit``: mark committed episodes successful or failed, and tag them, through the commit path.

    robocl edit STORE --episodes 0-9,12 --success true --tags train,seen

Real-robot recordings often say nothing about success (LeRobot's recorder has no success column), and the
offline RL methods need it to derive rewards. The edit is checked whole before anything is written, is
crash-safe, and is logged in the store's history (``robocl info`` lists it);
:meth:`robocl.store.TrajectoryStore.edit_episodes` is the same edit from Python.
"""

from __future__ import annotations

import argparse
from typing import Any

from robocl.store.integrity import describe_episodes

SUCCESS_VALUES = {"true": True, "false": False, "unknown": "unknown"}


def parse_episodes(text: str, n_episodes: int) -> list[int]:
    """``"0-9,12"`` (inclusive ranges) or ``"all"`` -> episode indices; names the part it cannot read."""
    if text.strip() == "all":
        return list(range(n_episodes))
    chosen: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--episodes: cannot read {part!r}; expected e.g. 0-9,12 or all") from None
        if first > last:
            raise ValueError(f"--episodes: range {part!r} runs backwards")
        chosen += range(first, last + 1)
    return chosen


def describe_edit(entry: dict[str, Any]) -> str:
    """One history entry as text: 'episodes 0-9, 12: success true, +train, -seen'."""
    chosen = [i for lo, hi in entry["episodes"] for i in range(lo, hi)]
    changes = [] if entry["success"] is None else [f"success {str(entry['success']).lower()}"]
    changes += [f"+{t}" for t in entry["add_tags"]] + [f"-{t}" for t in entry["remove_tags"]]
    note = f" ({entry['note']})" if entry["note"] else ""
    return f"{describe_episodes(chosen)}: {', '.join(changes)}{note}"


def _tags(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from robocl.store import TrajectoryStore

    with TrajectoryStore.open(args.store, "a") as store:
        entry = store.edit_episodes(
            parse_episodes(args.episodes, store.n_episodes),
            success=None if args.success is None else SUCCESS_VALUES[args.success],
            add_tags=_tags(args.tags),
            remove_tags=_tags(args.untag),
            note=args.note,
        )
        summary = store.summary()
    print(f"{args.store}: {describe_edit(entry)} (commit {entry['commit_id']})")
    rate = summary["success_rate"]
    print(
        f"success now known for {summary['n_success_known']} of {summary['n_episodes']} episodes"
        + ("" if rate is None else f", {rate:.1%} of them successful")
    )
    return 0


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The options of ``robocl edit`` (``func=run``)."""
    p.add_argument("store", help="store path or URL")
    p.add_argument("--episodes", required=True, help="episodes to edit: 0-9,12 (inclusive ranges) or all")
    p.add_argument(
        "--success", choices=sorted(SUCCESS_VALUES), help="mark them successful, failed, or unknown"
    )
    p.add_argument("--tags", help="comma-separated tags to add, e.g. train,seen")
    p.add_argument("--untag", help="comma-separated tags to remove")
    p.add_argument("--note", default="", help="a note kept with the edit in the store's history")
    p.set_defaults(func=run)
