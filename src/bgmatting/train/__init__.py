"""Training: the paper's losses, a plain resumable (torchrun-ready) trainer, and initialisation weights."""

from .config import TrainConfig
from .trainer import export_weights, train

__all__ = ["TrainConfig", "export_weights", "train"]
