"""The per-camera conv encoder and its random-shift augmentation."""

from __future__ import annotations

import torch

from robocl.nets.vision import ConvEncoder, random_shift


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
    y = random_shift(x, 2)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for b in range(2):  # every output is some 6x6 window of the padded image
        windows = [padded[b, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(y[b], w) for w in windows)
    assert torch.equal(random_shift(x, 0), x)
