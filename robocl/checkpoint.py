"""Checkpoint directories, shaped like LeRobot's pretrained-policy folders.

    <ckpt>/config.json          {"format": 1, "robocl_version", "method", "config", "spec", "step", "seed"}
    <ckpt>/model.safetensors    every tensor inference needs: network weights and normalisation statistics
    <ckpt>/trainer.pt           optimiser, step, RNG and sampler state for resume (absent in exports)

A checkpoint is written into ``<ckpt>.tmp`` and renamed into place, so a run killed while saving leaves the
previous checkpoint whole. ``trainer.pt`` holds plain tensors, numbers and strings only, so it loads with
``torch.load(weights_only=True)``: no pickled objects from strangers are ever executed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robocl import __version__

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: missing, truncated, or from another robocl."""


@dataclass
class Checkpoint:
    path: Path
    method: str
    config: dict[str, Any]
    spec: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    step: int
    seed: int

    def trainer_state(self) -> dict[str, Any]:
        path = self.path / "trainer.pt"
        if not path.exists():
            raise CheckpointError(f"{path} is missing: this checkpoint holds a policy only and cannot resume")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise CheckpointError(
                f"{path} is unreadable (truncated or not a robocl trainer state): {exc}"
            ) from exc


def save_checkpoint(
    path: str | Path,
    *,
    method: str,
    config: Mapping[str, Any],
    spec: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    step: int,
    seed: int,
    trainer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (tmp dir + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    header = {
        "format": CHECKPOINT_FORMAT,
        "robocl_version": __version__,
        "method": method,
        "config": dict(config),
        "spec": dict(spec),
        "step": int(step),
        "seed": int(seed),
    }
    (tmp / "config.json").write_text(json.dumps(header, indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
    if trainer_state is not None:
        torch.save(dict(trainer_state), tmp / "trainer.pt")
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read config.json and the tensors; raises :class:`CheckpointError` naming the problem."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path} is not a robocl checkpoint: {config_path.name} is missing")
    try:
        header = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON (truncated?): {exc}") from exc
    if header.get("format") != CHECKPOINT_FORMAT or "method" not in header:
        raise CheckpointError(f"{config_path}: not a robocl checkpoint of format {CHECKPOINT_FORMAT}")
    if header.get("robocl_version") != __version__:
        raise CheckpointError(
            f"{path} was written by robocl {header.get('robocl_version')}; this is robocl {__version__}. "
            "Load it with that version, or retrain."
        )
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is unreadable (truncated or corrupt): {exc}") from exc
    return Checkpoint(
        path=path,
        method=header["method"],
        config=header["config"],
        spec=header["spec"],
        tensors=tensors,
        step=header["step"],
        seed=header["seed"],
    )


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) generator states, for bit-exact resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
