"""Feature schema of a trajectory store and the checks every appended step goes through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

FeatureKind = Literal["state", "action", "reward", "flag", "rgb", "depth", "language"]

#: Kinds that describe what the robot observes; these get a stored final observation per episode.
OBSERVATION_KINDS = frozenset({"state", "rgb", "depth", "language"})
#: Kinds stored as images: one frame per zarr chunk, sampled through the frame cache.
IMAGE_KINDS = frozenset({"rgb", "depth"})
ALLOWED_DTYPES = frozenset(
    {"bool", "uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}
)


@dataclass(frozen=True)
class CameraCalibration:
    """A fixed camera's pinhole model at the stored frame size, in OpenCV's conventions (what a real rig's
    calibration gives: ``cv2.calibrateCamera`` intrinsics, hand-eye extrinsics).

    intrinsics: (fx, fy, cx, cy) in pixels; pixel (u, v) = (column, row), (0, 0) the top-left pixel's centre.
    position: the optical centre in the world (robot base) frame, metres.
    rotation: the world-from-camera rotation (3 rows); the camera frame is x right, y down, z along the
        optical axis, so a world point X is seen at camera coordinates ``rotation^T (X - position)``.
    """

    intrinsics: tuple[float, float, float, float]
    position: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]

    def __post_init__(self) -> None:
        keys = ("intrinsics", "position", "rotation")
        arrays = {k: np.asarray(getattr(self, k), dtype=float) for k in keys}
        for key, shape in (("intrinsics", (4,)), ("position", (3,)), ("rotation", (3, 3))):
            if arrays[key].shape != shape or not np.isfinite(arrays[key]).all():
                raise ValueError(f"camera {key} must be {shape} finite numbers, got {getattr(self, key)!r}")
        if arrays["intrinsics"][0] <= 0 or arrays["intrinsics"][1] <= 0:
            raise ValueError(f"camera focal lengths must be > 0, got intrinsics {self.intrinsics}")
        rot = arrays["rotation"]
        # A calibration's rotation is orthonormal to a few 1e-4; 1e-3 catches transposes and typos.
        if np.abs(rot @ rot.T - np.eye(3)).max() > 1e-3 or np.linalg.det(rot) < 0:
            raise ValueError(f"camera rotation must be a proper rotation matrix, got {self.rotation}")
        object.__setattr__(self, "intrinsics", tuple(arrays["intrinsics"].tolist()))
        object.__setattr__(self, "position", tuple(arrays["position"].tolist()))
        object.__setattr__(self, "rotation", tuple(tuple(row) for row in rot.tolist()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "intrinsics": list(self.intrinsics),
            "position": list(self.position),
            "rotation": [list(row) for row in self.rotation],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CameraCalibration:
        return cls(intrinsics=d["intrinsics"], position=d["position"], rotation=d["rotation"])


@dataclass(frozen=True)
class Feature:
    """One per-step array of a store.

    kind: what the feature is. ``state``/``action``/``reward``/``flag`` are low-dimensional (held in RAM by
        the samplers), ``rgb`` is (H, W, 3) uint8, ``depth`` is (H, W) or (H, W, 1), ``language`` is one
        instruction string per step, stored as an index into the store's task table.
    dtype: numpy dtype name. ``language`` features are always int32 indices.
    shape: per-step shape, () for scalars.
    names: optional names of the last axis (e.g. joint names), as in LeRobot's info.json.
    camera: a fixed camera's calibration (image features only; its ``to_dict`` form is converted), for
        policies that locate things in its frames (CO-RFT's ``detect_entity``).
    """

    kind: FeatureKind
    dtype: str = "float32"
    shape: tuple[int, ...] = ()
    names: tuple[str, ...] | None = None
    camera: CameraCalibration | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if self.kind not in FeatureKind.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"unknown feature kind {self.kind!r}; expected one of {FeatureKind.__args__}")  # type: ignore[attr-defined]
        if self.kind == "language":
            object.__setattr__(self, "dtype", "int32")
            if self.shape != ():
                raise ValueError(f"language features hold one instruction per step; got shape {self.shape}")
        if str(np.dtype(self.dtype)) not in ALLOWED_DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}; expected one of {sorted(ALLOWED_DTYPES)}")
        object.__setattr__(self, "dtype", str(np.dtype(self.dtype)))
        if any(s <= 0 for s in self.shape):
            raise ValueError(f"feature shape must be positive, got {self.shape}")
        if self.kind == "rgb" and (len(self.shape) != 3 or self.shape[2] != 3 or self.dtype != "uint8"):
            raise ValueError(f"rgb features are (H, W, 3) uint8; got shape {self.shape} dtype {self.dtype}")
        if self.kind == "depth" and len(self.shape) not in (2, 3):
            raise ValueError(f"depth features are (H, W) or (H, W, 1); got shape {self.shape}")
        if self.names is not None and (not self.shape or len(self.names) != self.shape[-1]):
            raise ValueError(f"{len(self.names)} names given for a feature of shape {self.shape}")
        if isinstance(self.camera, Mapping):
            object.__setattr__(self, "camera", CameraCalibration.from_dict(self.camera))
        if self.camera is not None and self.kind not in IMAGE_KINDS:
            raise ValueError(f"a camera calibration belongs to an image feature, not a {self.kind!r} one")

    @property
    def is_observation(self) -> bool:
        return self.kind in OBSERVATION_KINDS

    @property
    def is_image(self) -> bool:
        return self.kind in IMAGE_KINDS

    @property
    def step_nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "names": list(self.names) if self.names is not None else None,
            # Only when set: stores without calibrations keep the header older readers wrote.
            **({"camera": self.camera.to_dict()} if self.camera is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Feature:
        names, camera = d.get("names"), d.get("camera")  # camera absent in stores written before it
        return cls(
            kind=d["kind"],
            dtype=d["dtype"],
            shape=tuple(d["shape"]),
            names=tuple(names) if names else None,
            camera=camera,  # a dict: made a CameraCalibration (and checked) as the feature is built
        )


@dataclass
class EpisodeMeta:
    """Per-episode facts recorded beside the steps (one row of the episode table)."""

    task: str | None = None
    success: bool | None = False  # None: unknown (a recording that does not say; ``robocl edit`` sets it)
    terminated: bool = False
    truncated: bool = False
    source: str = ""
    source_episode: int = -1  # index of the episode in the dataset it was ingested from; -1 if none
    tags: Sequence[str] = field(default_factory=tuple)
    episode_return: float | None = None  # computed from the reward feature when the store has one

    def checked(self, where: str) -> EpisodeMeta:
        """This record with its tags as a tuple; raises TypeError/ValueError naming the first bad field.

        Types are checked, not coerced: ``tags="train"`` would otherwise become five one-letter tags,
        ``success="no"`` True and ``source_episode=1.5`` 1.
        """
        for name in ("success", "terminated", "truncated"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_) and not (name == "success" and value is None):
                raise TypeError(f"{where}: {name} must be a bool, got {value!r}")
        for name in ("task", "source"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (name == "task" and value is None):
                raise TypeError(f"{where}: {name} must be a string, got {value!r}")
        if isinstance(self.source_episode, bool) or not isinstance(self.source_episode, int | np.integer):
            raise TypeError(f"{where}: source_episode must be an integer, got {self.source_episode!r}")
        ret = self.episode_return
        if ret is not None and (isinstance(ret, bool) or not isinstance(ret, int | float | np.number)):
            raise TypeError(f"{where}: episode_return must be a number, got {self.episode_return!r}")
        if isinstance(self.tags, str | bytes) or not isinstance(self.tags, Sequence | set | frozenset):
            raise TypeError(f"{where}: tags must be a sequence of strings like ('train',), got {self.tags!r}")
        for tag in self.tags:
            if not isinstance(tag, str) or not tag or "," in tag:
                raise ValueError(f"{where}: tag {tag!r} must be a non-empty string without commas")
        return EpisodeMeta(
            task=self.task,
            success=None if self.success is None else bool(self.success),
            terminated=bool(self.terminated),
            truncated=bool(self.truncated),
            source=self.source,
            source_episode=int(self.source_episode),
            tags=tuple(self.tags),
            episode_return=self.episode_return,
        )


def coerce_steps(
    features: Mapping[str, Feature],
    steps: Mapping[str, Any],
    *,
    where: str,
    required: bool = True,
    batched: bool = True,
) -> dict[str, np.ndarray]:
    """Check a dict of arrays against the schema and return them cast to the feature dtypes.

    ``where`` names the episode (and step) in error messages. With ``batched`` the arrays carry a leading
    time axis that must agree across features. Language features take strings and are returned as they came;
    the store maps them to task indices. Nothing is written here, so a failure leaves the store untouched.
    """
    missing = [k for k in features if k not in steps] if required else []
    extra = [k for k in steps if k not in features]
    if missing:
        raise ValueError(f"{where}: missing feature(s) {missing}; the store's features are {list(features)}")
    if extra:
        raise ValueError(f"{where}: unknown feature(s) {extra}; the store's features are {list(features)}")
    out: dict[str, np.ndarray] = {}
    length: int | None = None
    for key, value in steps.items():
        feat = features[key]
        if feat.kind == "language":
            arr = np.asarray(value, dtype=object)
            if batched and arr.ndim != 1:
                raise ValueError(
                    f"{where}: feature {key!r} (language) needs a sequence with one string per step, got "
                    f"{value!r:.80}"
                )
            if arr.ndim != int(batched) or not all(isinstance(s, str) for s in arr.reshape(-1)):
                raise ValueError(f"{where}: feature {key!r} (language) needs one string per step")
        else:
            arr = _cast(np.asarray(value), feat, key, where)
            expected = ((arr.shape[0],) if batched and arr.ndim > 0 else ()) + feat.shape
            if arr.shape != expected or (batched and arr.ndim == 0):
                want = ("(T, " + ", ".join(map(str, feat.shape)) + ")") if batched else str(feat.shape)
                raise ValueError(f"{where}: feature {key!r} has shape {arr.shape}, expected {want}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = np.argwhere(~np.isfinite(arr))[0]
                at = f" at step {int(bad[0])}" if batched else ""
                raise ValueError(f"{where}: feature {key!r} contains NaN or Inf{at}")
        if batched:
            if len(arr) == 0:
                raise ValueError(f"{where}: feature {key!r} has no steps; an episode needs at least one")
            if length is not None and len(arr) != length:
                raise ValueError(
                    f"{where}: feature {key!r} has {len(arr)} steps but other features have {length}"
                )
            length = len(arr)
        out[key] = arr
    return out


def _cast(arr: np.ndarray, feat: Feature, key: str, where: str) -> np.ndarray:
    target = np.dtype(feat.dtype)
    if arr.dtype == target:
        return arr
    # Same-kind casts (float64 -> float32, int64 -> int32) are what users mean; a float image or a float
    # action for an integer feature is a bug we refuse rather than silently truncate.
    ok = np.can_cast(arr.dtype, target, casting="same_kind") and not (
        target.kind == "b" and arr.dtype.kind != "b"
    )
    if arr.dtype.kind in "iu" and target.kind in "iu" and arr.size:
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise ValueError(f"{where}: feature {key!r} has values outside the range of {target}")
    if not ok:
        raise ValueError(f"{where}: feature {key!r} has dtype {arr.dtype}, expected {target}")
    return arr.astype(target)
