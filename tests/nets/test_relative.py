"""Relative positions from feature names: which pairs, and their values."""

from __future__ import annotations

import math

import numpy as np
import torch

from robocl.nets.relative import (
    RelativePositions,
    log_scaled,
    position_columns,
    relative_position_pairs,
    scene_position_columns,
)


def test_pairs_from_names_cover_every_entity_pair_over_shared_axes():
    names = {
        "observation.state": ("joint1.pos", "tcp.x", "tcp.y", "tcp.z", "gripper.width"),
        "observation.object": ("block.x", "block.y", "block.z", "block.cos", "goal.x", "goal.y"),
        "observation.other": None,  # unnamed features give nothing
    }
    pairs = relative_position_pairs(names)
    assert pairs == [
        ("block-tcp.x", 1, 5), ("block-tcp.y", 2, 6), ("block-tcp.z", 3, 7),
        ("goal-tcp.x", 1, 9), ("goal-tcp.y", 2, 10),
        ("goal-block.x", 5, 9), ("goal-block.y", 6, 10),
    ]  # fmt: skip
    # gripper.width and block.cos are not positions; joint names (a real arm's dataset) give no pairs.
    assert relative_position_pairs({"observation.state": ("shoulder.pos", "elbow.pos")}) == []
    # Every entity's absolute position but the tool's (the first): block and goal.
    assert scene_position_columns(names) == [5, 6, 7, 9, 10]
    assert scene_position_columns({"observation.state": ("tcp.x", "tcp.y", "joint1.pos")}) == []


def test_differences_in_torch_and_numpy_agree():
    module = RelativePositions([("b-a.x", 0, 2), ("b-a.y", 1, 3)])
    state = torch.tensor([[[1.0, 2.0, 4.0, 8.0]]])  # (B, n_obs, D)
    torch.testing.assert_close(module(state), torch.tensor([[[3.0, 6.0]]]))
    np.testing.assert_array_equal(module.numpy(state.numpy()), [[[3.0, 6.0]]])


def test_log_scaled_is_linear_near_zero_logarithmic_beyond_and_one_at_the_reach():
    d = torch.tensor([0.0, 0.01, -0.01, 0.02, 0.1, 0.3, 1e-4])
    out = log_scaled(d, resolution=0.01)
    asinh10 = math.log(10 + math.sqrt(101))  # asinh(0.1 m / 0.01 m), by hand
    expected = [0.0, math.log(1 + math.sqrt(2)) / asinh10, -math.log(1 + math.sqrt(2)) / asinh10,
                math.log(2 + math.sqrt(5)) / asinh10, 1.0, math.log(30 + math.sqrt(901)) / asinh10,
                0.01 / asinh10]  # fmt: skip
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-4, atol=1e-6)
    assert 0.29 < out[1] < 0.30 and 0.48 < out[3] < 0.49 and 1.35 < out[5] < 1.37


def test_position_columns_are_every_entitys_axes_across_features():
    names = {
        "observation.state": ("joint1.pos", "tcp.x", "tcp.y", "tcp.z"),
        "observation.object": ("object.x", "object.y", "object.qw", "plate.x", "plate.y"),
        "observation.images.front": None,
    }
    assert position_columns(names) == [1, 2, 3, 4, 5, 7, 8]
    assert position_columns({"observation.object": ("object.qw", "plate.x")}) == []  # one axis: no position
