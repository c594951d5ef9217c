"""Network building blocks shared by the methods."""

from robocl.nets.mlp import MLP
from robocl.nets.normalize import Normalizer

__all__ = ["MLP", "Normalizer"]
