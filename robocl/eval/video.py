"""MP4 videos of evaluation episodes, written with PyAV (H.264, yuv420p, one frame per control step)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def side_by_side(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Cameras of one step next to each other, padded to a common height (H, sum W, 3)."""
    height = max(f.shape[0] for f in frames)
    padded = [np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) for f in frames]
    return np.concatenate(padded, axis=1)


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Encode (H, W, 3) uint8 frames; odd sizes are padded to even (yuv420p needs even dimensions)."""
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for frame in frames:
            image = np.pad(np.asarray(frame, dtype=np.uint8), ((0, H - h), (0, W - w), (0, 0)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def count_frames(path: str | Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
