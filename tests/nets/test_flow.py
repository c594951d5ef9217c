"""The flow-matching chunk head: its loss by hand, deterministic seeded sampling, and two modes kept apart."""

from __future__ import annotations

import pytest
import torch

from robocl.nets.flow import FlowHead, OneStepActor, flow_matching_loss
from robocl.nets.mlp import MLP


def test_flow_matching_loss_by_hand():
    # One row, h = 2 steps, d = 2: target velocity A - x0; step 2 is padding and does not count.
    target = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    noise = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    velocity = torch.tensor([[[2.0, -1.0], [9.0, 9.0]]])
    loss = flow_matching_loss(velocity, target, noise, torch.tensor([[False, True]]))
    # Step 1: v - (A - x0) = (2, -1) - (1, -1) = (1, 0): mean square 0.5.
    assert loss.item() == pytest.approx(0.5)
    both = flow_matching_loss(velocity, target, noise, torch.tensor([[False, False]]))
    assert both.item() == pytest.approx((0.5 + (8.5**2 + 8.5**2) / 2) / 2)


def test_head_loss_uses_the_rectified_flow_path():
    """FlowHead.loss draws x0 and t from torch's RNG and regresses v(o, (1-t) x0 + t A, t) on A - x0."""
    torch.manual_seed(0)
    head = FlowHead(3, 2, 2, (16,))
    feat, target = torch.randn(4, 3), torch.rand(4, 2, 2) * 2 - 1
    is_pad = torch.zeros(4, 2, dtype=torch.bool)
    torch.manual_seed(5)
    loss = head.loss(feat, target, is_pad)
    torch.manual_seed(5)
    noise, t = torch.randn_like(target), torch.rand(4)
    x_t = (1 - t)[:, None, None] * noise + t[:, None, None] * target
    want = flow_matching_loss(head.velocity(feat, x_t, t), target, noise, is_pad)
    assert loss.item() == pytest.approx(want.item())


def test_euler_sampling_by_hand_and_clipped():
    head = FlowHead(1, 1, 1, (4,), n_steps=4)
    # A constant velocity v = 0.6 moves x0 = 0.1 to 0.7; from 0.8 it leaves [-1, 1] and is clipped.
    torch.nn.init.zeros_(head.net[-1].weight)
    torch.nn.init.constant_(head.net[-1].bias, 0.6)
    out = head.sample(torch.zeros(2, 1), torch.tensor([[[0.1]], [[0.8]]]))
    torch.testing.assert_close(out, torch.tensor([[[0.7]], [[1.0]]]))


def test_flow_fits_two_modes_where_regression_averages_them():
    """Half the demonstrations go left (-0.8), half right (+0.8) from the same observation."""
    torch.manual_seed(0)
    feat = torch.zeros(256, 1)
    flow, regression = FlowHead(1, 1, 1, (64, 64)), MLP(1, (64, 64), 1)
    opt = torch.optim.Adam([*flow.parameters(), *regression.parameters()], lr=3e-3)
    is_pad = torch.zeros(256, 1, dtype=torch.bool)
    for _ in range(600):
        target = torch.where(torch.rand(256, 1, 1) < 0.5, -0.8, 0.8)
        loss = flow.loss(feat, target, is_pad) + ((regression(feat) - target.view(-1, 1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        samples = flow.sample(feat, torch.randn(256, 1, 1, generator=torch.Generator().manual_seed(1)))
        mean = regression(feat[:1]).item()
    left, right = (samples < -0.5).float().mean().item(), (samples > 0.5).float().mean().item()
    assert left > 0.35 and right > 0.35 and left + right > 0.9, (left, right)  # both modes, little between
    assert abs(mean) < 0.2  # the regression head predicts the average, which neither mode does


def test_one_step_actor_maps_noise_to_a_chunk():
    actor = OneStepActor(3, 4, 2, (8,))
    out = actor(torch.randn(5, 3), torch.randn(5, 4, 2))
    assert out.shape == (5, 4, 2)
