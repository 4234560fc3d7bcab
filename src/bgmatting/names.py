"""Names of choices that the Python API and the command line share, kept free of heavy imports so that
``bgmatting --help`` and argument errors answer at once (PyTorch and torchvision take seconds to import)."""

BACKENDS = ("auto", "reference", "eager", "onnxruntime", "graph")
"""How the network runs: see :func:`bgmatting.backends.resolve_backend`."""

MAX_WORKERS = 64
"""The most model calls at once (``--workers``, ``workers=``): threads beyond the cores gain nothing."""

MAX_BATCH = 256
"""The most frames per model call (``--batch``, ``batch=``): they are all in memory at once."""

MAX_PLATE_FRAMES = 10_000
"""The most frames a clean plate is estimated from (``plate --frames``, ``video --plate-frames``, ``max_frames=``):
they are all held in memory."""
