"""DGMRec, the model registry, the recommender base class and the shared building blocks."""
from .base import Recommender
from .registry import register

__all__ = ["Recommender", "register"]
