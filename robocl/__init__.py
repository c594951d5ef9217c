"""robocl: robot learning with offline and continual RL on one zarr trajectory store."""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("robocl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_policy"]


def load_policy(path: str, device: str = "cpu") -> Any:
    """Restore any method's policy from a checkpoint directory for inference: only the networks and
    normalisers are built (no optimiser, replay buffer or trainer state), and no global RNG is touched.

    Returns an object with ``reset()`` and ``predict(obs) -> action`` (numpy in, numpy out).
    """
    from robocl.algos import get_algorithm
    from robocl.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return get_algorithm(ckpt.method).policy_from_checkpoint(ckpt, device)
