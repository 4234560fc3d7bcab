"""Training: the paper's losses, a plain resumable (torchrun-ready) trainer, and initialisation weights."""

from .checkpoints import export_weights
from .config import TrainConfig
from .trainer import train

__all__ = ["TrainConfig", "export_weights", "train"]
