"""The BGMv2 networks: pure ``nn.Module``s, no file or device handling."""

from .backbones import BACKBONES, MobileNetV2Encoder, ResNetEncoder, make_backbone
from .decoder import Decoder
from .matting import MattingBase, MattingRefine
from .refiner import REFINE_MODES, Refiner

__all__ = ["BACKBONES", "REFINE_MODES", "Decoder", "MattingBase", "MattingRefine", "MobileNetV2Encoder",
           "Refiner", "ResNetEncoder", "make_backbone"]
