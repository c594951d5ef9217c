"""What every benchmark records beside its numbers: commit, machine, versions, seed; and a markdown table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# Environment variables that pin the CPU kernels torch, MKL and oneDNN use (recorded when set).
KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


# The keys run_info writes, in its order (a merge of a run's parts copies them from the first part).
RUN_INFO_KEYS = (
    "commit", "date", "machine", "cpu", "cpu_vector_isa", "torch_cpu_capability", "kernel_settings",
    "versions", "seed",
)  # fmt: skip


def run_info(seed: int) -> dict[str, Any]:
    try:
        commit = subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"],
            text=True,
            cwd=Path(__file__).parent,
            stderr=subprocess.DEVNULL,
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import numpy
    import torch
    import zarr

    return {
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        # The CPU and the kernels torch picked for it: the same code and seeds can train to different
        # weights on another CPU (a seed-0 cell of the CO-RFT benchmark did), so a rerun compares these too.
        "cpu": _cpu_model(),
        "cpu_vector_isa": _cpu_vector_isa(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # Settings that pin kernels below what the CPU offers. ATEN_CPU_CAPABILITY alone moves only torch's
        # own kernels, not MKL's matmuls: on an AVX512 machine it still trained other CO-RFT weights than an
        # AVX2 machine did at the same commit and seed, so a JSON says which of these were set.
        "kernel_settings": {k: os.environ[k] for k in KERNEL_SETTINGS if k in os.environ},
        "versions": {
            "numpy": numpy.__version__,
            "zarr": zarr.__version__,
            "torch": torch.__version__,
            "mujoco": _version("mujoco"),
        },
        "seed": seed,
    }


def _cpuinfo(field: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (Linux), None where there is none."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    return next((line.partition(":")[2].strip() for line in lines if line.startswith(field)), None)


def _cpu_vector_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The widest x86 vector instruction set the CPU reports ("avx512", "avx2", "avx"), None if unknown."""
    flags = set((_cpuinfo("flags", cpuinfo) or "").split())
    return next(
        (isa for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx")) if flag in flags),
        None,
    )


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:  # not measured in this row
            return ""
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
