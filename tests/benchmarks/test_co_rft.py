"""The CO-RFT benchmark's merge of a run completed in parts."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import benchmarks.co_rft
import benchmarks.common
from benchmarks.co_rft import (
    TASKS,
    PositionOffset,
    _cell_config,
    _fingerprint,
    _latency,
    _position_columns,
    _readout_errors,
    _settings,
    _train,
    combine,
    main,
)
from robocl.algos.co_rft import CORFT, CORFTConfig
from robocl.run.loop import NonFiniteError, stage_seed, to_torch
from tests.algos.test_co_rft import TINY, camera_features, hand_store, square_store


def _part(seed: int, demos: list[int], successes: int, **changes: object) -> dict:
    cells = [
        {"demos": d, "seed": seed, "method": m, "positions": "seen", "successes": successes, "episodes": 10,
         "cycle_times": [4.0] * successes}
        for d in demos
        for m in ("il", "co-rft")
    ]  # fmt: skip
    return {
        "commit": "abc1234", "date": f"day {seed}", "machine": "m", "versions": {}, "seed": seed,
        "dirty": False,
        "seeds": [seed], "wall_s": 10.0, "env_id": "robocl/PickPlace-v0", "demo_settings": {"noise": 0.2},
        "demos_collected": {str(d): {"success_rate": 0.9, "cycle_time_mean": 4.2} for d in demos},
        "budget": {"demos": demos, "il_updates": 3}, "ms_per_update_median": {"il": 2.0 + seed},
        "ms_first_update_median": {"il": 3.0}, "ms_per_chunk_inference": {"il": 1.0}, "determinism": None,
        "summary": [{"method": "il"}, {"method": "co-rft"}],
        "records": [{"seed": seed, "demos": d, "fingerprints": {}} for d in demos],
        "cells": cells,
        **changes,
    }  # fmt: skip


def _write(tmp_path: Path, name: str, payload: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


def test_combine_pools_the_parts_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "results")
    a = _write(tmp_path, "a.json", _part(0, [30, 60], successes=4))
    b = _write(tmp_path, "b.json", _part(1, [60], successes=8))
    combine([a, b], "merged")
    merged = json.loads((tmp_path / "results" / "merged.json").read_text())
    il_60 = next(s for s in merged["summary"] if (s["demos"], s["method"]) == (60, "il"))
    assert (il_60["success_rate"], il_60["episodes"]) == (12 / 20, 20)
    assert [s["method"] for s in merged["summary"][:2]] == ["il", "co-rft"]
    assert merged["seeds"] == [0, 1] and merged["budget"]["demos"] == [30, 60]
    assert merged["ms_per_update_median"] == {"il": 2.5}
    assert [p["cells"] for p in merged["parts"]] == [[[0, 30], [0, 60]], [[1, 60]]]


def test_combine_pools_parts_that_ran_different_methods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part run with --only a subset (seeds 3-4 without the slow baselines): each method's rows pool the
    parts that ran it, and the variants and latencies of both parts are kept."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "results")
    full = _part(0, [60], successes=4)
    full["cells"].append({**full["cells"][0], "method": "iql", "successes": 1})
    full["summary"].append({"method": "iql"})
    full["budget"]["variants"] = {"co-rft": ["il", {}], "co-rft regression": ["il regression", {}]}
    full["ms_per_chunk_inference"] = {"il": 1.0, "iql": None}
    subset = _part(1, [60], successes=8, budget={"demos": [60], "il_updates": 3})
    subset["budget"]["variants"] = {"co-rft": ["il", {}]}
    subset["ms_per_chunk_inference"] = {"il": 1.5}
    combine([_write(tmp_path, "a.json", full), _write(tmp_path, "b.json", subset)], "merged")
    merged = json.loads((tmp_path / "results" / "merged.json").read_text())
    episodes = {s["method"]: s["episodes"] for s in merged["summary"]}
    assert episodes == {"il": 20, "co-rft": 20, "iql": 10}
    assert set(merged["budget"]["variants"]) == {"co-rft", "co-rft regression"}
    assert merged["ms_per_chunk_inference"] == {"il": 1.0, "iql": None}
    subset["budget"]["variants"] = {"co-rft": ["il", {"n_candidates": 4}]}
    with pytest.raises(SystemExit, match="runs variant 'co-rft' with other settings"):
        combine([_write(tmp_path, "a.json", full), _write(tmp_path, "b.json", subset)], "merged")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"commit": "def5678"}, "has commit"),
        ({"dirty": True}, "uncommitted changes"),
        ({"budget": {"demos": [60], "il_updates": 4}}, "different budget"),
        ({"records": [{"seed": 0, "demos": 60}]}, "repeats the (seed, demos) cells [(0, 60)]"),
    ],
)
def test_combine_refuses_parts_of_different_runs(tmp_path: Path, changes: dict, message: str) -> None:
    a = _write(tmp_path, "a.json", _part(0, [60], successes=4))
    b = _write(tmp_path, "b.json", _part(1, [60], successes=8, **changes))
    with pytest.raises(SystemExit, match=re.escape(message)):
        combine([a, b], "merged")


def test_a_tiny_run_is_deterministic_and_writes_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end at a toy budget: the benchmark runs against today's algorithm API, retrains its first
    IL policy to the same weights (the dropout stream is seeded per stage, as the loop does) and writes
    the JSON of every cell."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    argv = "--demos 2 --seeds 0 --il-updates 4 --rl-updates 2 --episodes 1 --check-determinism"
    only = ["--only", "il,il sigma 0.5,il +extra,co-rft,co-rft distill", "--set", "n_obs=1;flow_steps=3"]
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split(), *only])
    main()
    result = json.loads((tmp_path / "co_rft_pick_place.json").read_text())
    assert result["determinism"]["identical"]
    # ... and the policy it retrains is the cell's own (same config, budget and precision): 4 updates < 200.
    assert result["determinism"]["fingerprints"][0] == result["records"][0]["fingerprints"]["il"]
    assert result["budget"]["config_overrides"] == {"n_obs": 1, "flow_steps": 3}
    assert {(s["method"], s["positions"]) for s in result["summary"]} == {
        (m, p)
        for m in ("il", "il sigma 0.5", "il +extra", "co-rft", "co-rft distill")
        for p in ("seen", "unseen")
    }
    assert set(result["records"][0]["fingerprints"]) >= {"il", "co-rft", "co-rft distill"}
    clean = {
        "non_finite_tensors": {"learner": [], "evaluated copy": []},
        "chunks_finite": True,
        "first_non_finite_module": None,
    }
    assert result["records"][0]["finite"] == {"il": clean}
    # The last updates of each run are FLOP-counted instead of timed: the distilled actor's update also runs
    # the flow's K steps and the one-step actor, so it does more arithmetic than best-of-N's.
    gflop = result["gflop_per_update"]
    assert set(gflop) == {"il", "co-rft", "co-rft distill"}
    assert gflop["il"] > 0 and 0 < gflop["co-rft"] < gflop["co-rft distill"]
    assert {"cpu", "cpu_vector_isa", "torch_cpu_capability", "kernel_settings"} <= set(result)
    assert "co-rft distill" in capsys.readouterr().out


def test_il_dir_keeps_the_imitation_learner_and_a_later_run_starts_stage_two_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--il-dir: the first run trains and saves each cell's IL learner, the second loads it (same weights,
    the same stage 2 and episodes, no IL update timed), also once saved without a field added since (read
    at its default); a cell with other settings is refused."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    argv = "--demos 2 --seeds 0 --il-updates 4 --rl-updates 2 --episodes 1 --only il,co-rft"
    keep = ["--il-dir", str(tmp_path / "il"), "--set", "flow_steps=3"]
    saved = tmp_path / "il" / "pick-place_2demos_seed0_il"
    results = []
    for name in ("trained", "loaded"):
        monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split(), *keep, "--name", name])
        main()
        results.append(json.loads((tmp_path / f"{name}.json").read_text()))
        if name == "trained":  # the loaded run reads it as a learner saved before the field existed
            header = json.loads((saved / "config.json").read_text())
            del header["config"]["bon_mode_margin"]
            (saved / "config.json").write_text(json.dumps(header))
    trained, loaded = (r["records"][0] for r in results)
    assert trained["il_loaded_from"] == {} and loaded["il_loaded_from"] == {"il": str(saved)}
    assert loaded["fingerprints"] == trained["fingerprints"]  # weights and episodes, IL and stage 2
    assert [c["successes"] for c in results[0]["cells"]] == [c["successes"] for c in results[1]["cells"]]
    assert "il" in results[0]["ms_per_update_median"] and "il" not in results[1]["ms_per_update_median"]
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split(), "--il-dir", str(tmp_path / "il")])
    with pytest.raises(
        SystemExit, match=r"holds another learner than this cell's: its config differs at 'flow_steps'"
    ):
        main()


def test_a_diverged_variant_is_reported_and_the_others_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)

    def diverge(self: CORFT, batch: dict) -> dict:
        raise NonFiniteError("stage-2 critic loss is nan")

    monkeypatch.setattr(CORFT, "_rl_update", diverge)
    argv = "--demos 2 --seeds 0 --il-updates 4 --rl-updates 2 --episodes 1 --only il,co-rft --set n_obs=1"
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split()])
    main()
    result = json.loads((tmp_path / "co_rft_pick_place.json").read_text())
    assert result["records"][0]["diverged"] == {"co-rft": "update 1 of 2: stage-2 critic loss is nan"}
    assert {s["method"] for s in result["summary"]} == {"il"}
    assert "diverged (no cells): seed 0, 2 demos, co-rft: update 1 of 2" in capsys.readouterr().out


@pytest.mark.parametrize(("weight", "bad_tensors"), [(float("nan"), ["head.net.0.weight"]), (3e38, [])])
def test_a_non_finite_imitation_policy_is_named_in_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weight: float, bad_tensors: list[str]
) -> None:
    """A NaN weight, and a finite one whose products overflow (every tensor finite, the chunks not): the
    record names the tensor where there is one, and the first module whose output went non-finite."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    trained = benchmarks.co_rft._corft

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        algo = trained(*args, **kwargs)
        with torch.no_grad():
            algo.policy_net.head.net[0].weight[0] = weight
        return algo

    monkeypatch.setattr(benchmarks.co_rft, "_corft", poisoned)
    argv = "--demos 2 --seeds 0 --il-updates 4 --episodes 1 --only il --set n_obs=1"
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split()])
    main()
    finite = json.loads((tmp_path / "co_rft_pick_place.json").read_text())["records"][0]["finite"]["il"]
    assert finite == {
        "non_finite_tensors": {"learner": bad_tensors, "evaluated copy": bad_tensors},
        "chunks_finite": False,
        "first_non_finite_module": "head.net.0",
    }


@pytest.mark.parametrize(("amp", "bf16"), [("auto", False), ("bf16", True), ("off", False)])
def test_amp_sets_the_precision_imitation_trains_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: str, bf16: bool
) -> None:
    """On a CPU, auto trains in float32 (bf16 autocast is the GPU's default); bf16 trains under it there
    too, so a GPU-only failure can be told from one of bf16 itself. The JSON says which ran."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    seen, il_update = [], CORFT._il_update

    def recording(self: CORFT, batch: dict) -> dict:
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return il_update(self, batch)

    monkeypatch.setattr(CORFT, "_il_update", recording)
    argv = f"--demos 2 --seeds 0 --il-updates 2 --episodes 1 --only il --set n_obs=1 --amp {amp}"
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split()])
    main()
    assert [enabled for enabled, _ in seen] == [bf16, bf16]  # both imitation updates
    if bf16:
        assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert json.loads((tmp_path / "co_rft_pick_place.json").read_text())["budget"]["bf16_autocast"] is bf16


def test_the_readout_error_is_the_mean_absolute_error_in_cm_per_named_position(tmp_path: Path) -> None:
    """A readout that says the standardised 0 everywhere reads back the store's mean: its error is the mean
    |mean - truth| of each position column over the windows scored (the same, from the seeded sampler)."""
    store = square_store(tmp_path)
    cfg = CORFTConfig(
        image_keys=("observation.images.front",), aux_state_keys=("observation.object",), horizon=2,
        vision_channels=(8, 8), **TINY,
    )  # fmt: skip
    algo = CORFT.from_store(cfg, store)
    policy = algo.policy()
    with torch.no_grad():
        policy.net.aux_readout.weight.zero_()
        policy.net.aux_readout.bias.zero_()
    errors = _readout_errors(policy, algo, {"seen": store}, n_windows=64)
    truth = np.asarray(algo.il_sampler(store).sample(64)["obs"]["observation.object"])[:, -1]
    mean = policy.net.normalizer.unnormalize("observation.object", torch.zeros(3)).numpy()
    assert list(errors) == ["seen", "seen, first frame"]
    assert list(errors["seen"]) == ["object.x", "object.y"]  # the positions, not the quaternion's qw
    np.testing.assert_allclose(
        list(errors["seen"].values()), 100 * np.abs(truth - mean).mean(0)[:2], atol=0.006
    )
    # Scored again at each episode's first step only.
    first = np.asarray(store.steps("observation.object"))[store.episodes["start"], :2]
    np.testing.assert_allclose(
        list(errors["seen, first frame"].values()), 100 * np.abs(first - mean[:2]).mean(0), atol=0.006
    )


def test_the_image_cell_at_a_frame_size_scores_its_readout_on_new_expert_episodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--image-size renders the demonstrations and the evaluations at the size asked for (the policy's
    frames; the JSON's budget says which); with aux_state_keys the readout is scored per position set, and
    with detect_entity the detector too."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    argv = (
        "--images --cameras front --image-size 32 --demos 2 --seeds 0 --il-updates 2 --episodes 1 --only il"
    )
    argv += ' --set n_obs=1 --set vision_channels=[8,8] --set aux_state_keys=["observation.object"]'
    argv += ' --set detect_entity="object"'
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split()])
    main()
    result = json.loads((tmp_path / "co_rft_pick_place_images.json").read_text())
    assert result["budget"]["image_size"] == 32
    assert result["budget"]["config_overrides"]["n_obs"] == 1  # every --set counts, not the last alone
    assert {cell["method"] for cell in result["cells"]} == {"il"}
    (record,) = result["records"]
    position = ["object.x", "object.y", "object.z", "plate.x", "plate.y"]  # the plate's z never varies
    position += ["detected object.x", "detected object.y"]  # the detector's, on the plane it lifts to
    sets = ["seen", "seen, first frame", "unseen", "unseen, first frame"]
    assert {k: list(v) for k, v in record["readout_cm"].items()} == {k: position for k in sets}
    assert all(np.isfinite(list(v.values())).all() for v in record["readout_cm"].values())
    assert "readout error object.x (cm)" in capsys.readouterr().out


def test_bf16_imitation_updates_each_see_the_weights_before_them(tmp_path: Path) -> None:
    """Under --amp bf16 the benchmark's imitation equals robocl's loop, one autocast region per update; one
    region around the whole run (as the benchmark once opened) keeps each weight's first bf16 cast, so every
    later forward ran on the first update's weights, and a long image run acted with NaN chunks."""
    store = hand_store(tmp_path)
    cfg = CORFTConfig(n_obs=1, horizon=2, il_lr=0.05, il_warmup=0, seed=0)  # steps large enough for bf16
    args = argparse.Namespace(il_updates=4, batch_size=4, device="cpu", flop_window=0, bf16=True)
    benchmark = _fingerprint(benchmarks.co_rft._corft(store, cfg, args, [], None).state_dict()["model"])

    def by_hand(region_per_update: bool) -> str:
        algo = CORFT.from_store(dataclasses.replace(cfg, il_schedule_updates=4), store)
        sampler = algo.il_sampler(store)
        torch.manual_seed(stage_seed(0, "il"))
        # (Any outer autocast context, even a disabled one, keeps the casts until it closes.)
        with contextlib.nullcontext() if region_per_update else torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(4):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    algo.update(to_torch(sampler.sample(4), "cpu"))
        return _fingerprint(algo.state_dict()["model"])

    assert benchmark == by_hand(region_per_update=True) != by_hand(region_per_update=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [("n_obz=1", "'n_obz' is not a CORFTConfig field"), ("seed=3", "'seed' is set by the benchmark")],
)
def test_set_names_the_field_it_cannot_take(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        _settings(text)


def test_cameras_choose_what_the_image_policy_reads() -> None:
    store = SimpleNamespace(features=camera_features(8))
    args = argparse.Namespace(set={}, images=True, cameras=("wrist",))
    assert _cell_config(store, TASKS["pick-place"], 0, args)["image_keys"] == ("observation.images.wrist",)
    args.cameras = ()  # the default: every camera of the store
    both = ("observation.images.front", "observation.images.wrist")
    assert _cell_config(store, TASKS["pick-place"], 0, args)["image_keys"] == both


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--set language_model=enc", "--set language_model: the state-only policy reads no instruction"),
        ("--cameras wrist", "--cameras: the state-only policy reads no camera; add --images"),
        ("--images --cameras front,side", "--cameras: unknown ['side']; the tasks render ('front', 'wrist')"),
        ("--images --object-offset 2", "--object-offset moves the object state the state policy reads"),
        ("--object-offset 2,0", "--object-offset (2.0, 0.0): sigmas must be > 0 cm"),
        ("--image-size 128", "--image-size: the state-only policy reads no camera; add --images"),
        ("--threads 0", "--threads 0: must be >= 1"),
        ("--offset-entity plate", "--offset-entity plate: moves nothing without --object-offset"),
    ],
)
def test_the_parser_names_what_it_cannot_take(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: str, message: str
) -> None:
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split()])
    with pytest.raises(SystemExit):
        main()
    assert message in capsys.readouterr().err


class _Recorder:
    """A policy that keeps what it was shown."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def predict(self, obs: dict) -> np.ndarray:
        self.seen.append(obs["observation.object"])
        return np.zeros(2)


def test_object_offset_moves_the_named_columns_by_one_draw_per_episode() -> None:
    inner, state = _Recorder(), np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    wrapped = PositionOffset(inner, sigma=0.02, columns=[3, 1, 4], seed=7)
    draws = np.random.default_rng(7).normal(0.0, 0.02, (2, 3))
    for episode in range(2):
        wrapped.reset()
        for _ in range(2):
            wrapped.predict({"observation.object": state, "task": ["pick"]})
        for shown in inner.seen[-2:]:
            np.testing.assert_allclose(
                shown[:, [3, 1, 4]] - state[:, [3, 1, 4]], np.tile(draws[episode], (4, 1)), atol=1e-5, rtol=0
            )  # float32 states
            np.testing.assert_array_equal(shown[:, [0, 2, 5]], state[:, [0, 2, 5]])  # the rest untouched
    assert inner.resets == 2
    np.testing.assert_array_equal(state, np.arange(4 * 6).reshape(4, 6))  # the rollout's own copy kept


def test_object_offset_adds_a_row_per_sigma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each state policy is evaluated again per sigma, under its own label; the budget records the sigmas."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    argv = "--demos 2 --seeds 0 --il-updates 4 --episodes 1 --only il --object-offset 3 --name offset"
    monkeypatch.setattr(sys, "argv", ["co_rft", *argv.split(), "--set", "n_obs=1;flow_steps=3"])
    main()
    result = json.loads((tmp_path / "offset.json").read_text())
    assert [(s["method"], s["positions"]) for s in result["summary"]] == [
        (m, p) for m in ("il", "il object +-3 cm") for p in ("seen", "unseen")
    ]
    assert result["budget"]["object_offset_cm"] == [3.0]
    assert set(result["ms_per_chunk_inference"]) == {"il"}


def test_offset_entity_moves_the_named_thing_and_names_one_the_store_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--offset-entity plate: the rows say what was moved; the columns are the plate's, in x, y, z order."""
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    argv = "--demos 2 --seeds 0 --il-updates 4 --episodes 1 --only il --object-offset 3 --offset-entity plate"
    monkeypatch.setattr(
        sys, "argv", ["co_rft", *argv.split(), "--name", "plate", "--set", "n_obs=1;flow_steps=3"]
    )
    main()
    result = json.loads((tmp_path / "plate.json").read_text())
    assert [s["method"] for s in result["summary"]] == ["il", "il", "il plate +-3 cm", "il plate +-3 cm"]
    assert result["budget"]["offset_entity"] == "plate"
    names = ["object.x", "object.y", "object.z", "plate.x", "plate.y", "plate.z", "goal.x", "goal.y"]
    store = SimpleNamespace(features={"observation.object": SimpleNamespace(names=names)})
    assert _position_columns(store, "plate") == [3, 4, 5]
    assert _position_columns(store, "goal") == [6, 7]  # a point on the table: no height
    with pytest.raises(
        ValueError, match=re.escape("--offset-entity 'door': the store's observation.object names no door.x")
    ):
        _position_columns(store, "door")


def test_counting_flops_leaves_the_updates_unchanged() -> None:
    """The counted updates run the same arithmetic as timed ones: equal weights after, and a count."""
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)]
    nets[1].load_state_dict(nets[0].state_dict())
    batches = torch.randn(6, 8, 4)

    def trainer(net: torch.nn.Linear) -> Any:
        opt = torch.optim.Adam(net.parameters(), lr=0.1)

        def update(batch: torch.Tensor) -> None:
            opt.zero_grad()
            net(batch).square().mean().backward()
            opt.step()

        return update

    counted_times: list[list[float]] = []
    flops: list[float] = []
    _train(trainer(nets[0]), iter(batches).__next__, 6, [])
    _train(trainer(nets[1]), iter(batches).__next__, 6, counted_times, flops=flops)
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True))
    assert len(counted_times[0]) == 3  # half of a short run is counted, not timed
    assert flops == [2 * 8 * 4 * 4 * 2]  # addmm forward + the weight's gradient mm (inputs need none)


def test_a_policy_without_chunks_has_no_chunk_latency_and_the_json_stays_valid():
    """IQL acts one action at a time: its latency is null in the JSON (NaN is not JSON), blank in tables."""
    latency = {"iql": _latency(object(), store=None)}
    assert latency == {"iql": None}
    assert json.loads(json.dumps(latency, allow_nan=False)) == latency
    assert benchmarks.common.markdown_table(["policy", "ms"], [["iql", None]]).endswith("| iql |  |")


def test_latency_is_timed_on_one_thread_and_the_run_keeps_its_threads() -> None:
    """--threads speeds up training; the latency floor is per chunk on one thread, so it is timed so."""

    class Policy:
        obs_keys, threads_seen = ("observation.state",), []
        net = SimpleNamespace(config=SimpleNamespace(n_obs=2))

        def predict_chunk(self, obs: dict) -> None:
            assert obs["observation.state"].shape == (1, 2, 3)
            self.threads_seen.append(torch.get_num_threads())

    store = SimpleNamespace(steps=lambda key: np.zeros((5, 3), np.float32))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        policy = Policy()
        assert _latency(policy, store, repeats=3) >= 0
        assert policy.threads_seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
