"""robocl: robot learning with offline and continual RL on one zarr trajectory store."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robocl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
