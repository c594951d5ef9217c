"""Checkpoint directories, shaped like LeRobot's pretrained-policy folders.

    <ckpt>/config.json          {"format": 2, "robocl_version", "method", "config", "spec", "step", "seed",
                                 "sha256": {file name: SHA-256 of model.safetensors and trainer.pt}}
                                (store-trained methods' "spec" has "world": the env id, robot, fps,
                                 the features' names, shapes and dtypes and the action range they learnt
                                 from, which robocl eval checks an env against)
    <ckpt>/model.safetensors    every tensor inference needs: network weights and normalisation statistics
    <ckpt>/trainer.pt           optimiser, step, RNG and sampler state for resume (absent in exports)

Saving writes ``<ckpt>.tmp`` (tensor files first, ``config.json`` with their checksums last, each fsynced),
then renames ``<ckpt>`` to ``<ckpt>.old``, ``<ckpt>.tmp`` to ``<ckpt>`` and deletes ``<ckpt>.old``. A copy
with a ``config.json`` whose checksums match its files is complete, so the recovery rule is: if ``<ckpt>`` is
missing (a kill between the renames), the newest complete copy of ``.tmp`` and ``.old`` is renamed into its
place, with a warning saying so. Loading verifies the checksums, so flipped bytes in a tensor file are an
error, never silently different weights. ``trainer.pt`` holds plain tensors, numbers and strings only, so
it loads with ``torch.load(weights_only=True)``: no pickled objects from strangers are ever executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robocl import __version__

CHECKPOINT_FORMAT = 2  # 2 added the files' SHA-256 to config.json
#: Format 1 checkpoints (written before checksums) still load and resume, unverified: runs in progress when
#: robocl gained checksums must not be lost.
READABLE_FORMATS = (1, 2)


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

    sha256: dict[str, str] | None  # None: a format 1 checkpoint, which recorded no checksums

    def trainer_state(self) -> dict[str, Any]:
        path = self.path / "trainer.pt"
        if not path.exists():
            raise CheckpointError(f"{path} is missing: this checkpoint holds a policy only and cannot resume")
        _verify(path, self.sha256)
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
    """Write a checkpoint directory atomically and durably (see the module docstring)."""
    path = Path(path)
    resolve_checkpoint(path)  # a copy an interrupted save left must not be deleted below as a stale .tmp
    tmp, old = _sibling(path, "tmp"), _sibling(path, "old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
    if trainer_state is not None:
        torch.save(dict(trainer_state), tmp / "trainer.pt")
    header = {
        "format": CHECKPOINT_FORMAT,
        "robocl_version": __version__,
        "method": method,
        "config": dict(config),
        "spec": dict(spec),
        "step": int(step),
        "seed": int(seed),
        "sha256": {f.name: _fsync_and_hash(f) for f in sorted(tmp.iterdir())},
    }
    # config.json last: its presence, with checksums that match, is what makes a copy complete.
    (tmp / "config.json").write_text(json.dumps(header, indent=2) + "\n")
    _fsync_and_hash(tmp / "config.json")
    _fsync_dir(tmp)
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        tmp.rename(path)
        _fsync_dir(path.parent)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    _fsync_dir(path.parent)
    return path


def resolve_checkpoint(path: str | Path) -> Path | None:
    """``path`` if it holds a checkpoint; else, after a save interrupted between its renames, the newest
    complete copy (``.tmp`` or ``.old``) moved into its place, with a warning; None if there is none."""
    path = Path(path)
    if path.exists():
        return path
    copies = []
    for copy in (_sibling(path, "tmp"), _sibling(path, "old")):
        try:
            copies.append((_verify_all(copy)["step"], copy))
        except CheckpointError:  # absent, or cut short by the interruption
            continue
    if not copies:
        return None
    step, best = max(copies)
    warnings.warn(
        f"checkpoint {path} is missing (a save was interrupted); using {best.name}, the newest complete "
        f"copy (step {step})",
        RuntimeWarning,
        stacklevel=2,
    )
    try:
        best.rename(path)
    except OSError:  # a read-only location: load the copy where it is
        return best
    return path


def load_checkpoint(path: str | Path, *, method: str | None = None) -> Checkpoint:
    """Read config.json and the tensors, checksums verified; ``method``: the method that must have written
    it (a resume). Raises :class:`CheckpointError` naming the problem."""
    given = Path(path)
    found = resolve_checkpoint(given)
    if found is None:
        raise CheckpointError(f"{given} is not a robocl checkpoint: config.json is missing")
    header = _read_header(found)
    if method is not None and header["method"] != method:
        raise CheckpointError(
            f"{found} holds a {header['method']} checkpoint, not {method}: resume it with "
            f"robocl train {header['method']}, or start this run in a new run dir"
        )
    weights = found / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing")
    _verify(weights, header["sha256"])
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is unreadable (truncated or corrupt): {exc}") from exc
    return Checkpoint(
        path=found,
        method=header["method"],
        config=header["config"],
        spec=header["spec"],
        tensors=tensors,
        step=header["step"],
        seed=header["seed"],
        sha256=header["sha256"],
    )


def recorded_world(path: str | Path) -> dict[str, Any]:
    """The data a checkpoint's policy learnt from (``spec.world``: env, robot, rate, features, action),
    without loading its tensors; {} for checkpoints that record none."""
    found = resolve_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path} is not a robocl checkpoint: config.json is missing")
    return dict(_read_header(found)["spec"].get("world") or {})


def _read_header(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path} is not a robocl checkpoint: {config_path.name} is missing")
    try:
        header = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON (truncated?): {exc}") from exc
    if not isinstance(header, dict) or header.get("format") not in READABLE_FORMATS or "method" not in header:
        found = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(
            f"{config_path}: not a robocl checkpoint of format {' or '.join(map(str, READABLE_FORMATS))} "
            f"(format {found}); load it with the robocl that wrote it, or retrain"
        )
    header.setdefault("sha256", None)
    if header.get("robocl_version") != __version__:
        raise CheckpointError(
            f"{path} was written by robocl {header.get('robocl_version')}; this is robocl {__version__}. "
            "Load it with that version, or retrain."
        )
    return header


def _verify(file: Path, sha256: Mapping[str, str] | None) -> None:
    if sha256 is None:  # format 1: nothing was recorded to check against
        return
    expected = sha256.get(file.name)
    if expected is None:
        raise CheckpointError(f"{file}: config.json records no checksum for it")
    if _sha256(file) != expected:
        raise CheckpointError(
            f"{file} fails its SHA-256 checksum: its bytes changed after it was saved (disk or copy damage)"
        )


def _verify_all(path: Path) -> dict[str, Any]:
    """The header of a complete checkpoint copy: every file it lists is there and matches its checksum."""
    header = _read_header(path)
    for name in header["sha256"] or ["model.safetensors"]:
        if not (path / name).exists():
            raise CheckpointError(f"{path / name} is missing")
        _verify(path / name, header["sha256"])
    return header


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _fsync_and_hash(file: Path) -> str:
    """Flush a written file to disk, and return its SHA-256."""
    with open(file, "rb+") as f:
        os.fsync(f.fileno())
    return _sha256(file)


def _fsync_dir(path: Path) -> None:
    """Make renames and new entries in a directory durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.name}.{suffix}")


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
