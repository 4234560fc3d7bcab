"""Training options: one flat dataclass, loadable from TOML (or JSON), overridable by keywords or ``key=value``.

Every option is a field of :class:`TrainConfig`; ``None`` means "the stage's default" and is filled in by
:meth:`TrainConfig.resolved` (the learning rates, sizes and batch size of the paper's training code differ
between the base and the refine stage). A run writes its resolved config as ``config.toml`` next to its
checkpoints, and that file loads back with :meth:`TrainConfig.from_file`.

Example ``train.toml``::

    stage = "base"
    backbone = "mobilenetv2"
    data_root = "/work/corpus"       # <root>/train/{fgr,pha,backgrounds}, <root>/valid/...
    batch_size = 8
    steps = 20000
    out_dir = "runs/base"
    init = "mobilenet_v2-b0353104.pth"   # torchvision ImageNet weights (optional)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import BgMattingError
from ..models import BACKBONES, REFINE_MODES

STAGES = ("base", "refine")
# the probabilities of the training perturbations (fields of TrainConfig)
PERTURBATIONS = ("shadow_p", "noise_p", "colour_p", "misalign_p", "camouflage_p", "white_balance_p", "compress_p",
                 "motion_blur_p")
MATTE_KINDS = ("auto", "image", "video", "photo")
BACKGROUND_KINDS = ("auto", "image", "video")

# The paper's code (train_base.py / train_refine.py): Adam with one learning rate per part.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "base": {"lr_backbone": 1e-4, "lr_aspp": 5e-4, "lr_decoder": 5e-4, "lr_refiner": 0.0,
             "size": 512, "batch_size": 8},
    "refine": {"lr_backbone": 5e-5, "lr_aspp": 5e-5, "lr_decoder": 1e-4, "lr_refiner": 3e-4,
               "size": 2048, "batch_size": 4},
}


def _number_pair(v) -> bool:
    """Whether ``v`` is a ``[min, max]`` pair of numbers (bools are not numbers here)."""
    return (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))


@dataclass
class TrainConfig:
    """All options of a training run (see the module docstring for the file format).

    Stage and model:
        stage: ``"base"`` (``MattingBase`` at the base resolution, :func:`~bgmatting.train.losses.base_loss`) or
            ``"refine"`` (``MattingRefine`` trained jointly, :func:`~bgmatting.train.losses.refine_loss`).
        backbone: ``"mobilenetv2"``, ``"resnet50"`` or ``"resnet101"``.
        backbone_scale, refine_mode, refine_sample_pixels, refine_threshold, refine_kernel_size: the
            ``MattingRefine`` options (refine stage only; the paper trains in ``"sampling"`` mode).
        backbone_scales: refine stage: each step draws its backbone scale from this list (empty: always
            ``backbone_scale``, which the exported weights keep as their setting). Training at several scales
            keeps the model working on subjects of every size in the base network's pixels.

    Data (folders; every list may hold several roots, their samples are concatenated):
        data_root: a corpus laid out as ``<root>/{train,valid}/{fgr,pha,backgrounds}`` (what ``bgmatting data
            prepare`` writes); fills the four root lists below when they are empty.
        matte_roots: foreground + alpha data. ``matte_kind`` ``"image"`` (``root/fgr`` + ``root/pha``),
            ``"video"`` (VideoMatte240K: ``root/train/{fgr,pha}/<clip>/<frame>``), ``"photo"`` (RGBA images) or
            ``"auto"`` (detected per root from the layout, in that order).
        background_roots: background images (``background_kind`` ``"image"``, searched recursively) or clips
            (``"video"``: ``root/<clip>/<frame>.jpg`` or ``root/<clip>.mp4``); ``"auto"`` picks ``"video"`` when a
            root holds video files directly.
        valid_matte_roots, valid_background_roots: the held-out set (same kinds); empty → no validation.
        valid_samples: at most this many validation samples (the first ones, a fixed set).

    Sizes (pixels; ``None`` → stage default, base / refine):
        size: side of the augmented training samples (512 / 2048).
        crop_min, crop_max: each batch is cropped to ``H × W`` drawn independently from this range, in
            multiples of 4 (base) or ``4 / backbone_scale`` (refine); default ``size / 2`` to ``size``.
        valid_size: side of the validation samples (= ``size``).
        fgr_scale: ``[min, max]`` zoom of the foreground's random affine (``PairAugment``'s ``scale``); the paper's
            ``[0.4, 1.0]`` never shows small subjects, a lower ``min`` teaches people far from the camera too.
        extra_subject_p: probability that a second subject (another matte of the set, zoomed by
            ``extra_subject_scale`` and placed anywhere) is composited over the first: scenes with several
            people, most of them small (0: never).
        matte_repeat: ``[[folder, n], ...]``: each matte whose file lies under ``<matte root>/fgr/<folder>/`` is
            drawn ``n`` times per epoch instead of once, each time with its own augmentation (e.g.
            ``[["people", 4]]``: the real people of a ``bgmatting data prepare`` corpus, 22 of its 202 mattes,
            shown as often as the procedural subjects are). Image matte roots only; empty: every matte once.
        background_subject_p: probability that another matte (zoomed by ``extra_subject_scale``, placed anywhere) is
            pasted into the background itself, so that it is in the background shot too and its target alpha is 0:
            people and objects that belong to the scene, which a misaligned shot must not turn into foreground.
        extra_subject_misalign_p: probability that a sample carrying a second subject gets a misaligned
            background shot (default ``None``: ``misalign_p``, as any sample). Near 1, the small subjects come
            mostly with a moved camera: the model must tell a small person from the texture differences of a
            misaligned shot instead of reading every small difference as a person.

    Perturbations of the training pairs (:func:`bgmatting.data.perturb.make_pair`; validation always uses BGMv2's):
        shadow_p, noise_p, colour_p, misalign_p: per-sample probabilities (BGMv2's 0.3, 0.4, 0.8, 0.3).
        perspective: the misalignment's largest projective tilt (0: affine, as BGMv2).
        misalign_strength: multiplies the misalignment's ranges (rotation ±1.5°, shift ±1.5 %, scale ±2 %, shear
            ±1°): crops of ``size`` pixels moved by a fraction of their size move by fewer pixels than the HD
            frames the model runs on; 2 covers a 1920-pixel frame moved by 1 % when training at 640.
        shadow_strength: ``[min, max]`` fraction of the light the cast shadow blocks where it is densest
            (default ``[0.1, 0.4]``; shadows of real subjects in daylight reach 0.5 and more).
        camouflage_p: background tinted towards the subject's colours; white_balance_p: colour cast of the
            background shot; compress_p: JPEG compression of each image; motion_blur_p: the subject blurred
            along a line (targets blurred alike). All 0 by default.

    Optimisation:
        batch_size: samples per process and step (8 / 4); at least 2 (the ASPP pooling branch has BatchNorm).
        steps: optimiser steps in total.
        max_minutes: a wall-clock budget for this process's training (0: none). At the first logging step past
            it the run writes a checkpoint, validates and returns, as if ``steps`` were reached; ``resume=True``
            continues it later (with a fresh budget). For leased machines.
        lr_backbone, lr_aspp, lr_decoder, lr_refiner: Adam learning rates per part
            (base 1e-4, 5e-4, 5e-4; refine 5e-5, 5e-5, 1e-4, 3e-4).
        lr_schedule: ``"constant"`` (the default) or ``"cosine"``: every rate falls from its value at step 0 to 0
            at ``steps`` along half a cosine (a fine-tune that settles instead of wandering; set ``steps`` to the
            run's length). A function of the step, so resuming continues it.
        amp: mixed precision (float16 autocast + gradient scaling); used on CUDA only.

    Run:
        out_dir: checkpoints, ``config.toml``, ``metrics.jsonl`` and TensorBoard logs go here.
        init: weights to start from (torchvision ImageNet ResNet/MobileNetV2, torchvision DeepLabV3, a BGMv2 or
            bgmatting checkpoint, or MODNet's ``modnet.onnx``); see
            :func:`bgmatting.train.initial_weights.load_init`.
        base_checkpoint: refine stage: a trained base-stage checkpoint (weights matched by name).
        resume: continue from the latest checkpoint in ``out_dir`` (exactly: data order and randomness too).
        seed: the data order, augmentation and perturbations are functions of ``(seed, epoch/step)``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under ``torchrun`` each
            process takes ``cuda:LOCAL_RANK``.
        num_workers: DataLoader worker processes per training process.
        log_every, checkpoint_every, validate_every: in steps (0 disables periodic checkpoints/validation;
            the last step is always checkpointed).
        keep_checkpoints: how many step checkpoints to keep (older ones are deleted; 0 keeps all).
        tensorboard: also log to TensorBoard when ``torch.utils.tensorboard`` is importable.
    """

    stage: str = "base"
    backbone: str = "mobilenetv2"
    # data
    data_root: str | None = None
    matte_roots: list[str] = field(default_factory=list)
    matte_kind: str = "auto"
    background_roots: list[str] = field(default_factory=list)
    background_kind: str = "auto"
    valid_matte_roots: list[str] = field(default_factory=list)
    valid_background_roots: list[str] = field(default_factory=list)
    valid_samples: int = 64
    # sizes
    size: int | None = None
    crop_min: int | None = None
    crop_max: int | None = None
    valid_size: int | None = None
    fgr_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    extra_subject_p: float = 0.0
    extra_subject_scale: list[float] = field(default_factory=lambda: [0.1, 0.45])
    extra_subject_misalign_p: float | None = None
    background_subject_p: float = 0.0
    matte_repeat: list = field(default_factory=list)
    shadow_p: float = 0.3
    noise_p: float = 0.4
    colour_p: float = 0.8
    misalign_p: float = 0.3
    perspective: float = 0.0
    misalign_strength: float = 1.0
    shadow_strength: list[float] = field(default_factory=lambda: [0.1, 0.4])
    camouflage_p: float = 0.0
    white_balance_p: float = 0.0
    compress_p: float = 0.0
    motion_blur_p: float = 0.0
    # model (refine stage)
    backbone_scale: float = 0.25
    backbone_scales: list[float] = field(default_factory=list)
    refine_mode: str = "sampling"
    refine_sample_pixels: int = 80_000
    refine_threshold: float = 0.1
    refine_kernel_size: int = 3
    # optimisation
    batch_size: int | None = None
    steps: int = 100_000
    max_minutes: float = 0.0
    lr_backbone: float | None = None
    lr_aspp: float | None = None
    lr_decoder: float | None = None
    lr_refiner: float | None = None
    lr_schedule: str = "constant"
    amp: bool = True
    # run
    out_dir: str = "runs/bgmatting"
    init: str | None = None
    base_checkpoint: str | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    num_workers: int = 4
    log_every: int = 20
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    validate_every: int = 2000
    tensorboard: bool = True

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise :class:`BgMattingError` naming the known ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise BgMattingError(f"unknown training option(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(cls.field_names())}")
        cfg = cls(**{k: _coerce(k, v) for k, v in values.items()})
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """Read a ``.toml`` (or ``.json``) file of options; keyword ``overrides`` win over the file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise BgMattingError(f"cannot read training config '{p}': {e.strerror or e}") from None
        try:
            values = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise BgMattingError(f"training config '{p}' is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: "
                                 f"{e}") from None
        values.update(overrides)
        return cls.from_dict(values)

    def replace(self, **overrides) -> TrainConfig:
        """A copy with ``overrides`` applied (unknown names raise :class:`BgMattingError`)."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------------------------------ resolving

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` stage default filled in and ``data_root`` expanded, after checking
        every value (raises :class:`BgMattingError` with what to change)."""
        self._check_names()
        d = {k: _coerce(k, v) for k, v in self.to_dict().items()}
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if d[key] is None:
                d[key] = value
        if d["crop_max"] is None:
            d["crop_max"] = d["size"]
        if d["crop_min"] is None:
            d["crop_min"] = d["crop_max"] // 2
        if d["valid_size"] is None:
            d["valid_size"] = d["size"]
        if self.data_root:
            root = Path(self.data_root)
            if not root.is_dir():
                raise BgMattingError(f"data_root '{root}' is not a folder")
            if not d["matte_roots"]:
                d["matte_roots"] = [str(root / "train")]
                if self.matte_kind == "auto":
                    d["matte_kind"] = "image"
            if not d["background_roots"]:
                d["background_roots"] = [str(root / "train" / "backgrounds")]
            if not d["valid_matte_roots"] and (root / "valid" / "fgr").is_dir():
                d["valid_matte_roots"] = [str(root / "valid")]
            if not d["valid_background_roots"] and (root / "valid" / "backgrounds").is_dir():
                d["valid_background_roots"] = [str(root / "valid" / "backgrounds")]
        cfg = TrainConfig(**d)
        cfg._check_values()
        return cfg

    @property
    def crop_multiple(self) -> int:
        """Crop sides are multiples of this: 4 (base) or ``4 / backbone_scale`` (refine)."""
        if self.stage == "base":
            return 4
        return max(round(4 / s) for s in self.refine_scales())

    def refine_scales(self) -> list[float]:
        """The backbone scales the refine stage trains at (``backbone_scales`` or ``[backbone_scale]``)."""
        return list(self.backbone_scales) or [self.backbone_scale]

    def crop_sizes(self) -> list[tuple[int, int]]:
        """All ``(H, W)`` candidates of the per-batch random crop (of a resolved config)."""
        m = self.crop_multiple
        sides = list(range(_ceil_to(self.crop_min, m), self.crop_max + 1, m))
        return [(h, w) for h in sides for w in sides]

    def _check_names(self) -> None:
        if self.stage not in STAGES:
            raise BgMattingError(f"stage must be 'base' or 'refine', not {self.stage!r}")
        if self.backbone not in BACKBONES:
            raise BgMattingError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.matte_kind not in MATTE_KINDS:
            raise BgMattingError(f"matte_kind must be one of {', '.join(MATTE_KINDS)}, not {self.matte_kind!r}")
        if self.background_kind not in BACKGROUND_KINDS:
            raise BgMattingError(f"background_kind must be one of {', '.join(BACKGROUND_KINDS)}, "
                                 f"not {self.background_kind!r}")
        if self.refine_mode not in REFINE_MODES:
            raise BgMattingError(f"refine_mode must be one of {', '.join(REFINE_MODES)}, not {self.refine_mode!r}")

    def _check_values(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (v == 0 and not allow_zero):
                raise BgMattingError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, "
                                     f"not {v!r}")

        for name in ("steps", "size", "crop_min", "crop_max", "valid_size", "batch_size", "log_every",
                     "refine_sample_pixels"):
            positive(name)
        for name in ("num_workers", "checkpoint_every", "validate_every", "keep_checkpoints", "valid_samples"):
            positive(name, allow_zero=True)
        if self.batch_size < 2:
            raise BgMattingError("batch_size must be at least 2 per process: the ASPP's image-pooling branch has "
                                 "a BatchNorm over a 1x1 map, which needs 2 samples in training")
        if not 0 < self.backbone_scale <= 0.5:
            raise BgMattingError(f"backbone_scale must be in (0, 1/2], got {self.backbone_scale}")
        if self.stage == "refine" and abs(4 / self.backbone_scale - round(4 / self.backbone_scale)) > 1e-6:
            raise BgMattingError(f"backbone_scale must divide 4 evenly (1/4, 1/8, 1/2, ...), got {self.backbone_scale}")
        bs = self.backbone_scales
        if not isinstance(bs, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 0.5
                and abs(4 / v - round(4 / v)) < 1e-6 for v in bs):
            raise BgMattingError(f"backbone_scales must be a list of scales in (0, 1/2] that divide 4 evenly "
                                 f"(1/4, 1/8, 1/2, ...), not {bs!r}")
        if self.refine_kernel_size not in (1, 3):
            raise BgMattingError(f"refine_kernel_size must be 1 or 3, not {self.refine_kernel_size}")
        if self.crop_min > self.crop_max:
            raise BgMattingError(f"crop_min ({self.crop_min}) is larger than crop_max ({self.crop_max})")
        if self.crop_max > self.size:
            raise BgMattingError(f"crop_max ({self.crop_max}) is larger than the sample size ({self.size}); "
                                 "raise size or lower crop_max")
        m = self.crop_multiple
        if _ceil_to(self.crop_min, m) > self.crop_max:
            raise BgMattingError(f"no crop size between crop_min={self.crop_min} and crop_max={self.crop_max} is a "
                                 f"multiple of {m}; widen the range")
        if self.stage == "refine" and self.valid_size % m:
            raise BgMattingError(f"valid_size ({self.valid_size}) must be a multiple of {m} in the refine stage")
        for name in ("fgr_scale", "extra_subject_scale"):
            fs = getattr(self, name)
            if not _number_pair(fs) or not 0 < fs[0] <= fs[1]:
                raise BgMattingError(f"{name} must be [min, max] with 0 < min <= max, not {fs!r}")
        p = self.extra_subject_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise BgMattingError(f"extra_subject_p must be a probability in [0, 1], not {p!r}")
        rep = self.matte_repeat
        if not isinstance(rep, (list, tuple)) or not all(
                isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str) and r[0]
                and isinstance(r[1], int) and not isinstance(r[1], bool) and r[1] >= 1 for r in rep):
            raise BgMattingError(f"matte_repeat must be a list of [folder, times] pairs (times >= 1), like "
                                 f"[[\"people\", 4]], not {rep!r}")
        p = self.background_subject_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise BgMattingError(f"background_subject_p must be a probability in [0, 1], not {p!r}")
        p = self.extra_subject_misalign_p
        if p is not None and (not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1):
            raise BgMattingError(f"extra_subject_misalign_p must be a probability in [0, 1], not {p!r}")
        for name in PERTURBATIONS:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise BgMattingError(f"{name} must be a probability in [0, 1], not {v!r}")
        if not isinstance(self.perspective, (int, float)) or not 0 <= self.perspective <= 0.1:
            raise BgMattingError(f"perspective must be a number in [0, 0.1], not {self.perspective!r}")
        v = self.misalign_strength
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 10:
            raise BgMattingError(f"misalign_strength must be a number in [0, 10], not {v!r}")
        v = self.shadow_strength
        if not _number_pair(v) or not 0 <= v[0] <= v[1] <= 1:
            raise BgMattingError(f"shadow_strength must be [min, max] with 0 <= min <= max <= 1, not {v!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise BgMattingError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        for name in ("lr_backbone", "lr_aspp", "lr_decoder", "lr_refiner", "max_minutes"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
                raise BgMattingError(f"{name} must be a non-negative number, not {v!r}")
        if not self.matte_roots:
            raise BgMattingError("no training data: set data_root, or matte_roots and background_roots")
        if not self.background_roots:
            raise BgMattingError("no backgrounds: set background_roots (or data_root)")
        if self.stage == "base" and self.base_checkpoint:
            raise BgMattingError("base_checkpoint is for the refine stage; use init to start a base stage from weights")


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rates' multiplier for optimiser step ``step`` (1-based) of ``steps`` under ``schedule``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step - 1, steps) / steps))
    return 1.0


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


_LIST_FIELDS = ("matte_roots", "background_roots", "valid_matte_roots", "valid_background_roots")


def _coerce(name: str, value: Any) -> Any:
    """Light normalisation of values from files and flags: paths to ``str``, a single root to a list."""
    if name in _LIST_FIELDS:
        if value is None:
            return []
        if isinstance(value, (str, os.PathLike)):
            return [os.fspath(value)]
        return [os.fspath(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["steps=100", "init=w.pth", "matte_roots=['a', 'b']"]`` → a dict; values are read as TOML values
    (numbers, booleans, quoted strings, arrays), and anything that is not valid TOML is taken as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise BgMattingError(f"option {item!r} must look like name=value")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key] = value
    return out


def to_toml(values: dict[str, Any]) -> str:
    """A flat dict of str/int/float/bool/list values as TOML text (``None`` values are written as comments)."""
    lines = []
    for key, value in values.items():
        if value is None:
            lines.append(f"# {key} = (not set)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (str, os.PathLike)):
        return json.dumps(os.fspath(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
