"""Camera frames as LeRobot datasets hold them: MP4 files of several episodes, or PNG bytes in parquet.

Encoding follows LeRobot's recorder (``lerobot/datasets/video_utils.py``): PyAV, yuv420p, a keyframe every
2 frames, crf 30, libsvtav1 at preset 12, falling back to libx264 where this PyAV build lacks SVT-AV1.
Frame k of a file gets pts k in a 1/fps time base, so its time is exactly k / fps whatever timescale the
MP4 muxer picks. Decoding reads frames at requested times, moving forward through a file across calls (an
ingest visits episodes in file order) and seeking only to go back or to jump far ahead.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from robocl.store.convert.common import ConversionError

DEFAULT_VCODEC = "libsvtav1"
FALLBACK_VCODEC = "libx264"
DEFAULT_CRF = 30
DEFAULT_GOP = 2
SVTAV1_PRESET = "12"  # LeRobot's default; SVT-AV1 4.x maps it to its fastest preset
#: Decoding forward is cheaper than a seek (which restarts at the previous keyframe) for short gaps.
SEEK_AHEAD_S = 2.0


def pick_vcodec(requested: str = DEFAULT_VCODEC) -> str:
    """The requested encoder, or libx264 when the requested one is AV1 and this PyAV lacks it."""
    import av

    try:
        av.codec.Codec(requested, "w")
        return requested
    except ValueError:  # av.codec.codec.UnknownCodecError
        if requested != DEFAULT_VCODEC:
            raise ValueError(f"video encoder {requested!r} is not available in this PyAV build") from None
        return FALLBACK_VCODEC


class VideoWriter:
    """One MP4 file holding episodes back to back; frame k of the file is shown at k / fps seconds."""

    def __init__(
        self,
        path: Path,
        *,
        fps: int,
        height: int,
        width: int,
        vcodec: str,
        crf: int = DEFAULT_CRF,
        gop: int = DEFAULT_GOP,
    ) -> None:
        import av

        # SVT-AV1 prints a banner per encoder to stderr unless told otherwise (1 = errors only).
        os.environ.setdefault("SVT_LOG", "1")
        if vcodec in ("libx264", "h264") and (height % 2 or width % 2):
            raise ValueError(
                f"{vcodec} needs even frame sizes for yuv420p, got {height}x{width}; use libsvtav1 or images"
            )
        options = {"g": str(gop), "crf": str(crf)}
        if vcodec == "libsvtav1":
            options["preset"] = SVTAV1_PRESET
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream(vcodec, rate=fps, options=options)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = Fraction(1, fps)
        self.n_frames = 0
        self.nbytes = 0

    def add(self, frames: np.ndarray) -> None:
        """Append (T, H, W, 3) uint8 frames."""
        import av

        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self.n_frames
            self._mux(self._stream.encode(vf))
            self.n_frames += 1

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self.nbytes += packet.size
            self._container.mux(packet)

    def close(self) -> None:
        self._mux(self._stream.encode(None))
        self._container.close()


class VideoReader:
    """Frames at given times from MP4 files (one camera), within ``tolerance_s`` like LeRobot's loader."""

    def __init__(self, tolerance_s: float = 1e-4) -> None:
        from av.video.reformatter import VideoReformatter

        self.tolerance_s = tolerance_s
        # One converter for all frames: ``to_ndarray(format=...)`` sets up a new one per frame, which
        # measured 10x slower than the decoding itself on 96x96 frames.
        self._reformatter = VideoReformatter()
        self._path: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._decoder: Any = None
        self._frame: Any = None  # the current decoded frame and its time in seconds
        self._time = -np.inf
        self._rgb: np.ndarray | None = None

    def frames(self, path: Path, times: np.ndarray, what: str) -> np.ndarray:
        """(len(times), H, W, 3) uint8: for each time, the frame shown then; ``what`` names the field."""
        if path != self._path:
            self._open(path, what)
        tol = self.tolerance_s
        out: list[np.ndarray] = []
        for i, t in enumerate(np.asarray(times, dtype=np.float64)):
            if self._frame is None or t < self._time - tol or t > self._time + SEEK_AHEAD_S:
                self._seek(t, what)
            while self._time < t - tol:
                if not self._advance():
                    raise ConversionError(
                        path,
                        what,
                        f"the video ends at {self._time:.4f} s but step {i} needs a frame at {t:.4f} s "
                        "(from_timestamp + timestamp): the video is shorter than its timestamps",
                    )
            if abs(self._time - t) > tol:
                raise ConversionError(
                    path,
                    what,
                    f"no frame within {tol} s of {t:.6f} s (step {i}); nearest is {self._time:.6f} s",
                )
            if self._rgb is None:
                self._rgb = self._reformatter.reformat(self._frame, format="rgb24").to_ndarray()
            out.append(self._rgb)
        return np.stack(out) if out else np.empty((0, 0, 0, 3), np.uint8)

    def _open(self, path: Path, what: str) -> None:
        import av

        self.close()
        try:
            self._container = av.open(str(path))
            self._stream = self._container.streams.video[0]
        except (OSError, IndexError, av.error.FFmpegError) as exc:
            self.close()
            raise ConversionError(path, what, f"cannot read the video ({exc})") from exc
        self._path = path

    def _seek(self, t: float, what: str) -> None:
        import av

        tb = self._stream.time_base
        try:
            self._container.seek(max(int(t / tb), 0), stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as exc:
            raise ConversionError(self._path or "", what, f"cannot seek to {t:.4f} s ({exc})") from exc
        self._decoder = self._container.decode(self._stream)
        self._frame, self._time = None, -np.inf
        self._advance()

    def _advance(self) -> bool:
        import av

        try:
            frame = next(self._decoder)
        except StopIteration:
            return False
        except av.error.FFmpegError as exc:
            raise ConversionError(self._path or "", "video", f"corrupt video data ({exc})") from exc
        self._frame, self._rgb = frame, None
        self._time = float(frame.pts * frame.time_base) if frame.pts is not None else float(frame.time)
        return True

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._path = self._container = self._stream = self._decoder = self._frame = None
        self._time = -np.inf


def encode_png(frame: np.ndarray) -> bytes:
    """Lossless PNG bytes of one (H, W, 3) uint8 frame (what LeRobot's ``image`` features hold)."""
    import av

    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height = frame.shape[1], frame.shape[0]
    codec.pix_fmt = "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
    packets += codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def decode_image(data: bytes, path: Path | str, what: str) -> np.ndarray:
    """(H, W, 3) uint8 from PNG or JPEG bytes."""
    import av

    name = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "mjpeg" if data[:2] == b"\xff\xd8" else None
    if name is None:
        raise ConversionError(path, what, "image bytes are neither PNG nor JPEG")
    try:
        codec = av.CodecContext.create(name, "r")
        frames = codec.decode(av.Packet(data))
        frames += codec.decode(None)
    except av.error.FFmpegError as exc:
        raise ConversionError(path, what, f"corrupt {name} image ({exc})") from exc
    if not frames:
        raise ConversionError(path, what, f"corrupt {name} image (no frame decoded)")
    return frames[0].to_ndarray(format="rgb24")
