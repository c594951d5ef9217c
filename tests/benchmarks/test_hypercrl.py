"""The HyperCRL benchmark's combine: comparison parts run as separate jobs, merged into one table."""

import json

import pytest

from benchmarks import hypercrl


def _run(average: float, error: float) -> dict:
    return {
        "average": average,
        "forgetting": [1.0],
        "forgetting_ratio": [0.5],
        "after_task_matrix": [[2.0, 0.0], [1.0, 4.0]],
        "model_error_matrix": [[error, 0.0], [error, error]],
        "model_error_forgetting": [0.0],
        "memory_bytes": {"model": 1e6, "data": 2e6},
        "wall_s": 10.0,
    }


def _part(path, seed: int, average: float, budget=None) -> None:
    part = {
        "commit": f"c{seed}",
        "family": "door",
        "budget": budget or {"grad_steps": 1500},
        "seeds": [seed],
        "runs": {"single": [_run(0.0, 0.1)], "hypercrl": [_run(average, 0.1 * seed)]},
        "table": "",
    }
    path.write_text(json.dumps(part))


def test_combine_pools_the_seeds_of_every_part(tmp_path):
    _part(tmp_path / "a.json", 1, average=2.0)
    _part(tmp_path / "b.json", 2, average=4.0)
    merged = hypercrl.combine([tmp_path / "a.json", tmp_path / "b.json"])
    assert merged["seeds"] == [1, 2] and merged["commit"] == "c1, c2"
    assert [r["average"] for r in merged["runs"]["hypercrl"]] == [2.0, 4.0]
    row = next(line for line in merged["table"].splitlines() if line.startswith("| hypercrl"))
    assert "| 3 +- 1 |" in row  # the mean +- std of the final average reward over both seeds
    assert "0.15 +- 0.05" in row  # the final model error (0.1 and 0.2)


def test_combine_refuses_parts_of_another_budget_or_a_repeated_seed(tmp_path):
    _part(tmp_path / "a.json", 1, average=2.0)
    _part(tmp_path / "b.json", 2, average=4.0, budget={"grad_steps": 400})
    with pytest.raises(SystemExit, match=r"b\.json ran another family, budget or methods"):
        hypercrl.combine([tmp_path / "a.json", tmp_path / "b.json"])
    _part(tmp_path / "c.json", 1, average=4.0)
    with pytest.raises(SystemExit, match="a seed appears in two parts"):
        hypercrl.combine([tmp_path / "a.json", tmp_path / "c.json"])
