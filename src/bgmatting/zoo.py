"""The model zoo's registry: names, weight files and what they are, without importing PyTorch.

``bgmatting models`` lists it at once; :func:`bgmatting.load_model` (in :mod:`bgmatting.weights`) loads an entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "mobilenetv2"


@dataclass(frozen=True)
class ModelInfo:
    """A named model of the zoo.

    Attributes:
        name: registry name, e.g. ``"mobilenetv2"``.
        file: the safetensors file name inside the package's ``assets`` folder.
        architecture: ``"MattingRefine"`` or ``"MattingBase"``.
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"mobilenetv2"``.
        description: one line on what it is and what it was trained on.
        defaults: constructor options the weights were made for (``backbone_scale``, ``refine_mode``, ...); the
            file's own header, when it has one, is what :func:`bgmatting.load_model` uses.
    """

    name: str
    file: str
    architecture: str
    backbone: str
    description: str
    defaults: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(str(resources.files("bgmatting") / "assets" / self.file))

    @property
    def available(self) -> bool:
        """Whether the weights file ships with this installation."""
        return self.path.is_file()


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> ModelInfo:
    """Add ``info`` to the zoo (replacing an entry of the same name)."""
    _REGISTRY[info.name] = info
    return info


def find_model(name: str) -> ModelInfo | None:
    """The zoo entry called ``name``, or ``None``."""
    return _REGISTRY.get(name)


def list_models(available_only: bool = False) -> list[ModelInfo]:
    """The registered models, default first; ``available_only`` keeps those whose weights are installed."""
    infos = sorted(_REGISTRY.values(), key=lambda i: (i.name != DEFAULT_MODEL, i.name))
    return [i for i in infos if i.available or not available_only]


register_model(ModelInfo(
    name="mobilenetv2", file="bgmatting_mobilenetv2.safetensors", architecture="MattingRefine",
    backbone="mobilenetv2",
    description="MattingRefine, MobileNetV2, provisional: trained on 2 CPU cores on the offline corpus (see README)",
    defaults={"backbone_scale": 0.5, "refine_mode": "sampling", "refine_sample_pixels": 40_000},
))
register_model(ModelInfo(
    name="resnet50", file="bgmatting_resnet50.safetensors", architecture="MattingRefine", backbone="resnet50",
    description="MattingRefine, ResNet-50, trained by bgmatting on its offline corpus (see DATA.md)",
    defaults={"backbone_scale": 0.25, "refine_mode": "sampling", "refine_sample_pixels": 80_000},
))
