"""The per-camera conv encoder, its random-shift augmentation, its detector and the pinhole camera."""

from __future__ import annotations

import pytest
import torch

from robocl.nets.vision import ConvEncoder, PinholeCamera, random_shift
from robocl.store import CameraCalibration

# 1 m above the origin looking straight down; image columns along world +y, rows along world +x.
DOWN = CameraCalibration(
    intrinsics=(100.0, 100.0, 50.0, 40.0),
    position=(0.0, 0.0, 1.0),
    rotation=((0, 1, 0), (1, 0, 0), (0, 0, -1)),
)


def test_conv_encoder_shapes_eval_determinism_and_gradients():
    torch.manual_seed(0)
    enc = ConvEncoder(24, channels=(8, 16), aug_shift=2)
    frames = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    enc.eval()
    out = enc(frames)
    assert out.shape == (5, 24)
    torch.testing.assert_close(out, enc(frames))  # no augmentation in eval mode
    enc.train()
    enc(frames).sum().backward()
    assert enc.conv[0].weight.grad is not None and enc.conv[0].weight.grad.abs().sum() > 0


def test_random_shift_is_an_integer_translation_with_replicated_border():
    torch.manual_seed(3)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    y, moved = random_shift(x, 2)
    assert y.shape == x.shape and moved.shape == (2, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for b in range(2):  # every output is some 6x6 window of the padded image
        windows = [padded[b, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(y[b], w) for w in windows)
        # ``moved`` (columns, rows) says where the content went: away from the border, output pixel
        # (r + rows, c + columns) is input pixel (r, c).
        cols, rows = moved[b].long().tolist()
        assert y[b, 0, 2 + rows, 2 + cols] == x[b, 0, 2, 2]
    assert torch.equal(random_shift(x, 0)[0], x)


def test_the_pinhole_camera_projects_and_lifts_by_hand():
    """A point 10 cm along x and 20 cm along y, 1 m below the camera: column 50 + 100 * 0.2 = 70, row
    40 + 100 * 0.1 = 50; lifted back to its plane it is where it was."""
    camera = PinholeCamera(DOWN)
    point = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.0, 0.5]])
    torch.testing.assert_close(camera.project(point), torch.tensor([[70.0, 50.0], [50.0, 40.0]]))
    torch.testing.assert_close(camera.lift(torch.tensor([[70.0, 50.0]]), 0.0), point[:1])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the geometry stays float32 in a bf16 update
        assert torch.equal(camera.project(point), camera.project(point).float())
        torch.testing.assert_close(camera.project(point), torch.tensor([[70.0, 50.0], [50.0, 40.0]]))
        torch.testing.assert_close(camera.lift(torch.tensor([[70.0, 50.0]]), 0.0), point[:1])
    # A plane above the camera is behind it: the lift stays at the camera, finite.
    torch.testing.assert_close(
        camera.lift(torch.tensor([[70.0, 50.0]]), 2.0), torch.tensor([[0.0, 0.0, 1.0]])
    )


def test_calibrations_are_checked():
    with pytest.raises(ValueError, match="proper rotation"):
        CameraCalibration((100, 100, 50, 40), (0, 0, 1), ((1, 0, 0), (0, 1, 0), (0, 0, -1)))  # a reflection
    with pytest.raises(ValueError, match="focal lengths"):
        CameraCalibration((0, 100, 50, 40), (0, 0, 1), DOWN.rotation)
    with pytest.raises(ValueError, match=r"camera position must be \(3,\) finite"):
        CameraCalibration((100, 100, 50, 40), (0, float("nan"), 1), DOWN.rotation)
    assert CameraCalibration.from_dict(DOWN.to_dict()) == DOWN


def test_the_detector_reports_pixels_in_the_unshifted_frame(monkeypatch):
    """A detector that scores the bright cell finds a 4 x 4 white square at the same pixel with and without
    the random shift (shifts by whole stride-4 cells keep the map's grid, so the detector is then exactly
    equivariant: what the label needs), and the detector's gradient reaches the first conv layer."""
    enc = ConvEncoder(8, channels=(4, 4), aug_shift=4, detector=1)
    with torch.no_grad():  # a map that is the frame's mean brightness per cell, sharply scored
        for conv in (enc.conv[0], enc.conv[3]):
            conv.weight.fill_(1.0 / conv.weight[0].numel())
            conv.bias.zero_()
        enc.detector.weight.fill_(50.0)
    frames = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    frames[:, 14:18, 10:14] = 255
    found = enc.eval().encode(frames)[1]
    assert (found - torch.tensor([[[11.5, 15.5]]])).abs().max() < 2.0  # the square's centre, within a cell
    enc.train()
    for corner in ([4, 4], [0, 8], [8, 0]):  # random_shift's draw: the padded frame's top-left corner
        monkeypatch.setattr(torch, "randint", lambda *args, c=corner, **kwargs: torch.tensor([c]))
        torch.testing.assert_close(enc.encode(frames)[1], found)
    monkeypatch.undo()
    torch.manual_seed(0)
    fresh = ConvEncoder(8, channels=(4, 4), aug_shift=4, detector=1)
    fresh.encode(frames)[1][:, 0].sum().backward()
    assert fresh.conv[0].weight.grad.abs().sum() > 0
