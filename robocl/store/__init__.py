"""robocl's trajectory store: one zarr v3 format for simulated rollouts and real-robot demonstrations."""

from robocl.store.format import Episode, TrajectoryStore
from robocl.store.locks import StoreLockedError
from robocl.store.replay import OnlineReplay
from robocl.store.sampler import WindowSampler
from robocl.store.schema import CameraCalibration, EpisodeMeta, Feature
from robocl.store.view import StoreView
from robocl.store.writer import EpisodeWriter

__all__ = [
    "CameraCalibration",
    "Episode",
    "EpisodeMeta",
    "EpisodeWriter",
    "Feature",
    "OnlineReplay",
    "StoreLockedError",
    "StoreView",
    "TrajectoryStore",
    "WindowSampler",
]
