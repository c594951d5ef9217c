"""MP4 videos of episodes, written with PyAV (H.264, yuv420p, one frame per control step): every camera side
by side, scaled up, over a caption with the instruction, the step, its reward and success. ``robocl eval
--video`` and ``robocl view`` draw the same frames (:func:`episode_frames`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

#: Frames are scaled up by a whole factor to at least this height, so that the caption's text is legible
#: beside 96x96 cameras.
MIN_HEIGHT = 240
CAPTION_LINE = 18  # pixels per caption line


def side_by_side(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Cameras of one step next to each other, padded to a common height (H, sum W, 3)."""
    height = max(f.shape[0] for f in frames)
    padded = [np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) for f in frames]
    return np.concatenate(padded, axis=1)


def episode_frames(
    steps: Mapping[str, np.ndarray],
    final_obs: Mapping[str, np.ndarray],
    cameras: Sequence[str],
    *,
    task: str | None,
    success: np.ndarray | None,
) -> list[np.ndarray]:
    """One captioned frame per step (the observation the action was chosen from) and one for the final
    observation. ``success``: per-step flags, None where nothing records them."""
    rewards = steps.get("reward")
    n = len(steps[cameras[0]])
    frames = []
    for t in range(n + 1):
        images = [steps[c][t] if t < n else final_obs[c] for c in cameras]
        status = [f"step {t + 1}/{n}" if t < n else "after the last action"]
        if rewards is not None and t < n:
            status.append(f"reward {float(rewards[t]):+.2f}")
        if success is not None and t < n:
            status.append(f"success {'yes' if success[t] else 'no'}")
        frames.append(caption(side_by_side([_rgb(i) for i in images]), [task or "", "   ".join(status)]))
    return frames


def caption(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``frame`` scaled up by a whole factor to at least :data:`MIN_HEIGHT` pixels, over a black strip with
    one line of text per entry of ``lines``."""
    from PIL import Image, ImageDraw, ImageFont

    scale = max(1, -(-MIN_HEIGHT // frame.shape[0]))
    big = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    canvas = Image.new("RGB", (big.shape[1], big.shape[0] + CAPTION_LINE * len(lines) + 4))
    canvas.paste(Image.fromarray(big), (0, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=CAPTION_LINE - 4)
    for i, line in enumerate(lines):
        draw.text((4, big.shape[0] + 2 + i * CAPTION_LINE), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def _rgb(image: np.ndarray) -> np.ndarray:
    """A camera frame as (H, W, 3) uint8: depth maps become grey levels scaled to their own range."""
    if image.ndim == 3 and image.shape[-1] == 3:
        return image
    depth = np.asarray(image, np.float64).reshape(image.shape[:2])
    span = np.ptp(depth) or 1.0
    grey = ((depth - depth.min()) / span * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Encode (H, W, 3) uint8 frames; odd sizes are padded to even (yuv420p needs even dimensions)."""
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2
    rate = Fraction(fps).limit_denominator(1000)
    import av  # here, not at the top: PyAV loads FFmpeg, which only writing a video needs

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
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
