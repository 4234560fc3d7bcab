"""Fixtures shared by the test modules (plain helper functions are in helpers.py)."""

import os
from pathlib import Path

import pytest
import torch

from helpers import make_corpus, randomize_

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Exported engines and downloads of the tests go to a folder of their own, not the user's cache."""
    old = os.environ.get("BGMATTING_CACHE")
    os.environ["BGMATTING_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("BGMATTING_CACHE", None)
    else:
        os.environ["BGMATTING_CACHE"] = old


@pytest.fixture
def decodes(monkeypatch):
    """Records every decode of image pixels (``ImageFile.load``) and stops it, so no big image is ever allocated."""
    from PIL import ImageFile

    calls = []

    def load(self):
        calls.append(self.size)
        raise OSError("decoding stopped by the test")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """A small randomly initialised MobileNetV2 ``MattingRefine`` saved as safetensors (for the command line)."""
    from bgmatting import MattingRefine, save_weights

    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(save_weights(randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320)), path))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny training corpus (:func:`helpers.make_corpus`), one per test module."""
    return make_corpus(tmp_path_factory.mktemp("corpus"))
