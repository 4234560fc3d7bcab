"""What our weight files and exports say about the model they hold (light: no torch import)."""

FORMAT_TAG = "bgmatting"
"""The ``format`` value of our safetensors metadata, ONNX ``metadata_props`` and TorchScript extra file."""

REFINE_OPTIONS = ("backbone_scale", "refine_mode", "refine_sample_pixels", "refine_threshold",
                  "refine_prevent_oversampling")
"""The options of a ``MattingRefine`` that a file records and a caller may override."""

INPUT_NAMES = ("src", "bgr")
OUTPUT_NAMES = {"MattingBase": ("pha", "fgr", "err", "hid"),
                "MattingRefine": ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm")}
"""The networks' inputs and outputs, in order, by architecture (also the names in exported graphs)."""
