"""Names of choices that the Python API and the command line share, kept free of heavy imports so that
``bgmatting --help`` and argument errors answer at once (PyTorch and torchvision take seconds to import)."""

BACKENDS = ("auto", "reference", "eager", "onnxruntime", "graph")
"""How the network runs: see :func:`bgmatting.backends.resolve_backend`."""
