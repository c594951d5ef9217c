"""What every benchmark JSON records about the machine beside its numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import KERNEL_SETTINGS, RUN_INFO_KEYS, _cpu_vector_isa, run_info

CPUINFO = "processor\t: {n}\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 {extra}\n\n"


@pytest.mark.parametrize(
    ("extra", "isa"),
    [("avx avx2 avx512f avx512bw", "avx512"), ("avx avx2 fma", "avx2"), ("avx", "avx"), ("", None)],
)
def test_cpu_vector_isa_is_the_widest_flag(tmp_path: Path, extra: str, isa: str | None) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(n=0, extra=extra) + CPUINFO.format(n=1, extra=extra))
    assert _cpu_vector_isa(cpuinfo) == isa


def test_cpu_vector_isa_without_cpuinfo_is_unknown(tmp_path: Path) -> None:
    assert _cpu_vector_isa(tmp_path / "absent") is None


def test_run_info_records_the_kernel_settings_that_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KERNEL_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    assert run_info(0)["kernel_settings"] == {}
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert run_info(0)["kernel_settings"] == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def test_run_info_keys_name_what_run_info_writes() -> None:
    """The CO-RFT benchmark's merge copies RUN_INFO_KEYS from a run's first part: a key run_info gains
    must be listed there too, or merged files lose it."""
    assert tuple(run_info(0)) == RUN_INFO_KEYS
