"""Matter: any input type and size, padding, backgrounds of other sizes, composites, precision."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bgmatting import BgMattingError, MattingBase, MattingRefine, Matter
from bgmatting.pipeline import cover_resize, pad_to_multiple, parse_colour, to_tensor
from conftest import randomize_


@pytest.fixture(scope="module")
def refine_model():
    return randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 30))


@pytest.mark.parametrize("size", [(37, 53), (64, 48), (5, 9)])
def test_any_size_equals_model_on_replicate_padded_input(refine_model, size):
    g = torch.Generator().manual_seed(size[0])
    src, bgr = torch.rand(1, 3, *size, generator=g), torch.rand(1, 3, *size, generator=g)
    result = Matter(refine_model, device="cpu")(src, bgr)
    H, W = -(-size[0] // 4) * 4, -(-size[1] // 4) * 4
    pad = (0, W - size[1], 0, H - size[0])
    with torch.no_grad():
        pha, fgr, *_ = refine_model(F.pad(src, pad, mode="replicate"), F.pad(bgr, pad, mode="replicate"))
    assert result.pha.shape == size and result.fgr.shape == (*size, 3)
    assert result.err.shape == size and result.ref.shape == size
    assert np.abs(result.pha - pha[0, 0, : size[0], : size[1]].numpy()).max() <= 1e-6
    assert np.abs(result.fgr - fgr[0, :, : size[0], : size[1]].permute(1, 2, 0).numpy()).max() <= 1e-6
    assert set(np.unique(result.ref)) <= {0.0, 1.0}


def test_input_types_agree(refine_model):
    rng = np.random.default_rng(0)
    src8 = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    bgr8 = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    matter = Matter(refine_model, device="cpu")
    ref = matter(src8, bgr8).pha
    variants = [
        (src8.astype(np.float32) / 255, bgr8.astype(np.float32) / 255),
        (src8.astype(np.uint16) * 257, bgr8.astype(np.uint16) * 257),
        (Image.fromarray(src8), Image.fromarray(bgr8)),
        (torch.from_numpy(src8).permute(2, 0, 1), torch.from_numpy(bgr8).permute(2, 0, 1)[None]),
    ]
    for s, b in variants:
        assert np.abs(matter(s, b).pha - ref).max() <= 1e-5
    with pytest.warns(UserWarning, match="alpha channel"):
        rgba = np.concatenate([src8, np.zeros((24, 32, 1), np.uint8)], axis=2)
        assert np.abs(matter(rgba, bgr8).pha - ref).max() <= 1e-6
    gray = matter(src8[..., 0], bgr8[..., 0])
    assert gray.pha.shape == (24, 32)


def test_to_tensor_errors():
    with pytest.raises(BgMattingError, match="channels"):
        to_tensor(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(BgMattingError, match="dtype"):
        to_tensor(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(BgMattingError, match="numpy array, PIL image or torch tensor"):
        to_tensor("image.png")


def test_background_of_other_size(refine_model):
    matter = Matter(refine_model, device="cpu")
    src = np.random.default_rng(1).random((24, 32, 3)).astype(np.float32)
    big = np.asarray(Image.fromarray((src * 255).astype(np.uint8)).resize((64, 48)), dtype=np.float32) / 255
    with pytest.warns(UserWarning, match="resized"):
        assert matter(src, big).pha.shape == (24, 32)
    with pytest.raises(BgMattingError, match="same view"):
        matter(src, np.zeros((32, 32, 3), np.float32))


def test_composites(refine_model):
    result = Matter(refine_model, device="cpu")(np.full((8, 8, 3), 0.5, np.float32), np.zeros((8, 8, 3), np.float32))
    rgba = result.composite()
    assert rgba.shape == (8, 8, 4) and np.array_equal(rgba[..., 3], result.pha)
    result.pha[:2] = 0.0  # fully transparent rows: no colour; the others keep the foreground's
    rgba = result.composite()
    assert not rgba[:2, :, :3].any() and np.array_equal(rgba[2:, :, :3], result.fgr[2:] * (result.pha[2:, :, None] > 0))
    assert result.fgr[:2].any()
    green = result.composite("#00ff00")
    expected = result.pha[..., None] * result.fgr + (1 - result.pha[..., None]) * np.array([0, 1, 0], np.float32)
    assert np.allclose(green, expected, atol=1e-6)
    over = result.composite(np.ones((16, 16, 3), np.uint8) * 255)
    assert np.allclose(over, result.pha[..., None] * result.fgr + (1 - result.pha[..., None]), atol=1e-6)
    assert result.mask(0.5).dtype == bool and np.array_equal(result.mask(0.5), result.pha >= 0.5)


def test_parse_colour():
    assert parse_colour("#00FF00") == (0.0, 1.0, 0.0)
    assert parse_colour("#fff") == (1.0, 1.0, 1.0)
    assert parse_colour("0, 0, 255") == (0.0, 0.0, 1.0)
    for bad in ("green-ish", "#12345", "300,0,0"):
        with pytest.raises(BgMattingError, match="not a colour"):
            parse_colour(bad)


def test_cover_resize_and_padding():
    x = torch.arange(12.0).reshape(1, 1, 3, 4) / 12
    assert cover_resize(x, (6, 4)).shape == (1, 1, 6, 4)
    p = pad_to_multiple(torch.arange(6.0).reshape(1, 1, 2, 3))
    assert p.shape == (1, 1, 4, 4) and p[0, 0, 3, 3] == 5 and p[0, 0, 0, 3] == 2


def test_base_model_and_precision(refine_model):
    base = randomize_(MattingBase("mobilenetv2"))
    result = Matter(base, device="cpu")(np.random.rand(10, 14, 3), np.random.rand(10, 14, 3))
    assert result.pha.shape == (10, 14) and not result.ref.any()
    src, bgr = np.random.rand(32, 32, 3).astype(np.float32), np.random.rand(32, 32, 3).astype(np.float32)
    fp32 = Matter(refine_model, device="cpu")(src, bgr).pha
    bf16 = Matter(refine_model, device="cpu", precision="bf16")(src, bgr).pha
    assert np.abs(fp32 - bf16).mean() < 0.05
    with pytest.raises(BgMattingError, match="fp16 needs a CUDA GPU"):
        Matter(refine_model, device="cpu", precision="fp16")
    with pytest.raises(BgMattingError, match="precision"):
        Matter(refine_model, device="cpu", precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(BgMattingError, match="no CUDA GPU"):
            Matter(refine_model, device="cuda")


@pytest.mark.parametrize("arch", ["refine", "base"])
def test_forward_tensors_makes_only_the_outputs_asked_for(refine_model, arch):
    model = refine_model if arch == "refine" else randomize_(MattingBase("mobilenetv2"))
    matter = Matter(model, device="cpu", backend="eager")
    gen = torch.Generator().manual_seed(3)
    src, bgr = torch.rand(2, 3, 30, 42, generator=gen), torch.rand(2, 3, 30, 42, generator=gen)
    full = matter.forward_tensors(src, bgr)
    assert list(full) == ["pha", "fgr", "err", "ref"]
    for outputs in (("pha",), ("fgr", "pha"), ("ref",), ("err", "fgr")):
        part = matter.forward_tensors(src, bgr, outputs=outputs)
        assert set(part) == set(outputs)
        for k, v in part.items():
            assert v.shape == full[k].shape and torch.equal(v, full[k]), k
    with pytest.raises(BgMattingError, match="unknown output.*com"):
        matter.forward_tensors(src, bgr, outputs=("pha", "com"))


def test_model_workers_give_the_threads_back_even_if_the_model_fails_to_build(refine_model, monkeypatch):
    from bgmatting.pipeline import ModelWorkers

    before = torch.get_num_threads()
    matter = Matter(refine_model, device="cpu")
    monkeypatch.setattr(Matter, "runner", property(lambda self: (_ for _ in ()).throw(BgMattingError("no runner"))))
    with pytest.raises(BgMattingError, match="no runner"):
        with ModelWorkers(2, matter, torch.device("cpu")):
            pass
    assert torch.get_num_threads() == before
    with ModelWorkers(3, object(), torch.device("cpu")) as calls:  # results in submission order
        got = [r for i in range(7) for r in calls.submit(lambda i: i * i, i)] + calls.drain()
    assert got == [i * i for i in range(7)] and torch.get_num_threads() == before
