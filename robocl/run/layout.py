"""One run directory for every method:

    <run>/run.json                                   method, config, seed, env, store, stages, robocl version
    <run>/checkpoints/<stage>/last                   the stage's latest checkpoint (``last_good`` after a NaN)
    <run>/eval/<stage>/<step>/<task>/eval_info.json  the shared evaluator's report of one evaluation
    <run>/tb/<stage>/                                TensorBoard scalars of the stage
    <run>/data/                                      what an online or continual run collected (stores)

A stage is one call of the training loop: ``bc``, CO-RFT's ``il`` then ``rl``, Symphony's ``online``,
HyperCRL's ``task0`` ... ``taskN``. ``robocl compare`` reads ``run.json``: a run is one seed, its stages are
compared stage by stage, and evaluations are found by stage and step.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from robocl import __version__

RUN_FORMAT = 1
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(text: str) -> str:
    """A folder name from an env id or a task label: ``robocl/PickPlace-v0`` -> ``robocl_PickPlace-v0``."""
    return _SAFE.sub("_", text).strip("_") or "_"


class RunDir:
    """The folders and ``run.json`` of one run (one seed of one method)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    def checkpoint(self, stage: str, name: str = "last") -> Path:
        return self.path / "checkpoints" / stage / name

    def eval_dir(self, stage: str, step: int, task: str) -> Path:
        return self.path / "eval" / stage / f"{step:08d}" / safe_name(task)

    def tb(self, stage: str) -> Path:
        return self.path / "tb" / stage

    def data(self, name: str) -> Path:
        return self.path / "data" / name

    # ------------------------------------------------------------------ run.json
    def info(self) -> dict[str, Any]:
        """The run's ``run.json`` (empty when the run has none yet)."""
        if not self.info_path.exists():
            return {}
        try:
            info = json.loads(self.info_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.info_path} is not valid JSON: {exc}") from exc
        if not isinstance(info, dict) or info.get("format") != RUN_FORMAT or "method" not in info:
            raise ValueError(f"{self.info_path} is not a robocl run record (format {RUN_FORMAT})")
        return info

    def begin(
        self,
        method: str,
        config: Any,
        *,
        stage: str,
        seed: int,
        loop: Any = None,
        env: str | Sequence[str] | None = None,
        store: str | None = None,
    ) -> None:
        """Record that ``stage`` of this run starts (with its loop settings): the first stage writes
        ``run.json``, later ones add to it; ``env``/``store`` are kept once given. A run directory belongs to
        one method."""
        info = self.info()
        if info and info["method"] != method:
            raise FileExistsError(
                f"{self.path} holds a {info['method']} run; a {method} run needs its own run directory"
            )
        info = info or {
            "format": RUN_FORMAT,
            "robocl_version": __version__,
            "method": method,
            "config": _as_dict(config),
            "seed": int(seed),
            "env": None,
            "store": None,
            "stages": [],
            "loops": {},
        }
        if stage not in info["stages"]:
            info["stages"].append(stage)
        if loop is not None:
            info["loops"][stage] = _as_dict(loop)
        info["env"] = env if env is not None else info["env"]
        info["store"] = store if store is not None else info["store"]
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.info_path)  # a reader never sees half a record

    # ------------------------------------------------------------------ evaluations
    def evaluations(self, stage: str) -> Iterator[tuple[int, Path]]:
        """(step, eval_info.json) of every evaluation of ``stage``, by step then task."""
        root = self.path / "eval" / stage
        for step_dir in sorted(root.glob("[0-9]" * 8)):
            for info in sorted(step_dir.glob("*/eval_info.json")):
                yield int(step_dir.name), info


def _as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def find_runs(root: str | Path) -> list[RunDir]:
    """Every run below ``root`` (``root`` itself when it is one), sorted by path."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    return [RunDir(p.parent) for p in sorted(root.rglob("run.json"))]
