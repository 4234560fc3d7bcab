"""Choices and limits that the Python API and the command line share, kept free of heavy imports so that
``bgmatting --help`` and argument errors answer at once (PyTorch and torchvision take seconds to import)."""

BACKENDS = ("auto", "reference", "eager", "onnxruntime", "graph")
"""How the network runs: see :func:`bgmatting.backends.resolve_backend`."""

BACKBONES = ("resnet50", "resnet101", "mobilenetv2")
"""The base network's encoders (:class:`bgmatting.models.MattingBase`'s ``backbone``)."""

REFINE_MODES = ("sampling", "thresholding", "full")
"""How the refiner picks the patches it re-predicts (:class:`bgmatting.models.MattingRefine`'s ``refine_mode``);
sampling, the default, first."""

PRECISIONS = ("fp32", "fp16", "bf16")
"""The precisions the network runs in (``precision=``, ``--precision``); fp16 needs a CUDA GPU."""

EXPORT_PRECISIONS = ("fp32", "fp16")
"""The precisions an exported file can be written in (``bgmatting export --precision``)."""

OUTPUT_KINDS = ("com", "pha", "fgr", "err", "ref", "mask")
"""What a matte can be written as: composite, alpha, foreground, error map, refined-patch map, binary mask."""

VIDEO_OUTPUT_KINDS = tuple(k for k in OUTPUT_KINDS if k != "mask")
"""The outputs of :func:`bgmatting.video.convert_video` (every kind but ``mask``)."""

MAX_WORKERS = 64
"""The most model calls at once (``--workers``, ``workers=``): threads beyond the cores gain nothing."""

MAX_BATCH = 256
"""The most frames per model call (``--batch``, ``batch=``): they are all in memory at once."""

MAX_PLATE_FRAMES = 10_000
"""The most frames a clean plate is estimated from (``plate --frames``, ``video --plate-frames``, ``max_frames=``):
they are all held in memory."""
