"""Matter: any input type and size, padding, backgrounds of other sizes, composites, precision."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bgmatting import BgMattingError, Matter, MattingBase, MattingRefine
from bgmatting.pipeline import auto_backbone_scale
from bgmatting.results import MatteResult
from bgmatting.tensors import cover_resize, pad_to_multiple, parse_colour, to_tensor

from helpers import randomize_


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
    from bgmatting.workers import ModelWorkers

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


def plain_call(matter: Matter, src, bgr) -> dict[str, np.ndarray]:
    """What ``matter(src, bgr)`` returned before its conversions were made faster, written plainly."""
    def tensor(image):
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGBA" if image.mode == "RGBA" else "RGB"))
        if isinstance(image, np.ndarray):
            arr = image[..., None] if image.ndim == 2 else image
            if arr.dtype == np.uint8:
                arr = arr.astype(np.float32) / 255.0
            elif arr.dtype == np.uint16:
                arr = arr.astype(np.float32) / 65535.0
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None]
        else:
            t = image if image.ndim == 4 else image[None]
            t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if t.shape[1] == 4:
            t = t[:, :3]
        elif t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        return t.clamp(0.0, 1.0)

    out = matter.forward_tensors(tensor(src), tensor(bgr))
    arr = {k: v[0].permute(1, 2, 0).numpy() for k, v in out.items()}
    return {"pha": arr["pha"][..., 0], "fgr": np.ascontiguousarray(arr["fgr"]), "err": arr["err"][..., 0],
            "ref": arr["ref"][..., 0]}


def input_pairs(h: int = 37, w: int = 53) -> dict:
    rng = np.random.default_rng(7)
    u8 = lambda *c: rng.integers(0, 256, (h, w, *c), dtype=np.uint8)  # noqa: E731
    return {
        "uint8": (u8(3), u8(3)),
        "uint16": tuple(rng.integers(0, 65536, (h, w, 3), dtype=np.uint16) for _ in range(2)),
        "float64 outside [0, 1]": (rng.random((h, w, 3)) * 1.4 - 0.2, rng.random((h, w, 3))),
        "float32 not C-ordered": (np.asfortranarray(rng.random((h, w, 3), dtype=np.float32)),
                                  rng.random((w, h, 3), dtype=np.float32).transpose(1, 0, 2)),
        "PIL": (Image.fromarray(u8(3)), Image.fromarray(u8(3))),
        "rgba": (u8(4), u8(4)),
        "gray": (u8(), u8(1)),
        "uint8 tensor": (torch.from_numpy(u8(3)).permute(2, 0, 1).contiguous(),
                         torch.from_numpy(u8(3)).permute(2, 0, 1)[None]),
        "float tensor": (torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1,
                         torch.rand(1, 1, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(2))),
    }


# Before, these reached the network in other memory layouts than RGB images (with the batch or channel stride
# first); some backends' convolutions round by layout, so their results differed from the same image as RGB in the
# last bit. Now every image reaches it as an RGB image does.
OTHER_LAYOUT_BEFORE = ("rgba", "gray")


@pytest.mark.parametrize("backend", ["auto", "eager", "reference"])
@pytest.mark.parametrize("arch", ["refine", "base"])
def test_call_equals_the_plain_conversion_bit_for_bit(refine_model, arch, backend):
    model = refine_model if arch == "refine" else randomize_(MattingBase("mobilenetv2"))
    matter = Matter(model, device="cpu", backend=backend)
    pairs = input_pairs()
    for name, (src, bgr) in pairs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the alpha channel
            got, want = matter(src, bgr), plain_call(matter, src, bgr)
        exact = name not in OTHER_LAYOUT_BEFORE or matter.backend == "eager"
        for k, expected in want.items():
            array = getattr(got, k)
            assert array.dtype == np.float32 and array.flags.c_contiguous, (name, k)
            assert array.shape == expected.shape, (name, k)
            if exact:
                assert np.array_equal(array, expected), (name, k)
            else:
                assert np.abs(array - expected).max() <= 1e-6, (name, k)
    # RGBA and gray give exactly what the same image as RGB gives
    (rgba, bgr), (gray, gray_bgr) = pairs["rgba"], pairs["gray"]
    with pytest.warns(UserWarning, match="alpha"):
        a = matter(rgba, bgr)
    b = matter(np.ascontiguousarray(rgba[..., :3]), bgr[..., :3])
    c, d = matter(gray, gray_bgr), matter(np.repeat(gray[..., None], 3, axis=2), np.repeat(gray_bgr, 3, axis=2))
    for k in ("pha", "fgr", "err", "ref"):
        assert np.array_equal(getattr(a, k), getattr(b, k)) and np.array_equal(getattr(c, k), getattr(d, k)), k


def test_to_tensor_matches_the_plain_division_and_is_a_new_tensor():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    t = to_tensor(np.stack([values] * 3, axis=2))
    assert t.dtype == torch.float32 and torch.equal(t[0, 0], torch.from_numpy(values.astype(np.float32) / 255.0))
    wide = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    assert torch.equal(to_tensor(wide)[0, 2], torch.from_numpy(wide.astype(np.float32) / 65535.0))
    for image in (np.full((4, 5), 0.5, np.float32), np.full((4, 5, 3), 0.5, np.float32), torch.full((3, 4, 5), 0.5),
                  np.zeros((4, 5), np.uint8), torch.zeros(1, 1, 4, 5, dtype=torch.uint8)):
        t = to_tensor(image)
        assert t.shape == (1, 3, 4, 5)
        t.add_(0.25)  # writable, and not a view of the caller's image (nor a broadcast gray channel)
        assert float(np.asarray(image).max()) in (0.0, 0.5) and torch.allclose(t, t[:, :1])


def test_matte_result_converts_tensors_when_they_are_read():
    g = torch.Generator().manual_seed(0)
    out = {k: torch.rand(1, 3 if k == "fgr" else 1, 6, 7, generator=g) for k in ("pha", "fgr", "err", "ref")}
    result = MatteResult.from_tensors(out)
    assert result.pha.shape == (6, 7) and result.fgr.shape == (6, 7, 3) and result.fgr.flags.c_contiguous
    assert np.array_equal(result.fgr, out["fgr"][0].permute(1, 2, 0).numpy())
    assert np.array_equal(result.err, out["err"][0, 0].numpy()) and np.array_equal(result.ref, out["ref"][0, 0].numpy())
    result.pha[:2] = 0.0  # the same array each time it is read
    assert not result.pha[:2].any() and not result.composite()[:2].any()
    result.fgr = np.zeros((6, 7, 3), np.float32)  # fields stay assignable
    assert not result.composite("#000000").any()
    plain = MatteResult(pha=np.ones((2, 2), np.float32), fgr=np.ones((2, 2, 3), np.float32),
                        err=np.zeros((2, 2), np.float32), ref=np.zeros((2, 2), np.float32))
    assert plain.composite("#000000").min() == 1.0
    assert [f.name for f in dataclasses.fields(MatteResult)] == ["pha", "fgr", "err", "ref"]
    with pytest.raises(TypeError, match="missing"):
        MatteResult(pha=plain.pha)


def test_parse_colour_refuses_what_is_not_text():
    for bad in (123, None, [0, 255, 0], {"r": 0}, True):
        with pytest.raises(BgMattingError, match="colour is text"):
            parse_colour(bad)
    with pytest.raises(BgMattingError, match="not a colour") as e:
        parse_colour("#" + "f" * 10_000)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_a_backbone_scale_above_one_half_supersamples_the_frame(refine_model, tmp_path, backend):
    # the base network sees the frame at the scale asked for (here 1: its own size), the refiner refines as many of
    # the frame's pixels as asked, and the outputs come back at the frame's size: the enlarged frame's outputs shrunk
    from bgmatting.weights import save_weights

    path = save_weights(refine_model, tmp_path / "m.safetensors")
    matter = Matter(path, device="cpu", backend=backend, backbone_scale=1, refine_sample_pixels=16 * 30)
    assert matter.supersample == 2 and matter.backbone_scale == 1
    assert matter.model.backbone_scale == 0.5 and matter.model.refiner.sample_pixels == 16 * 120
    seen = []
    hook = matter.model.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[2:])))
    src, bgr = torch.rand(1, 3, 40, 56), torch.rand(1, 3, 40, 56)
    try:
        out = matter.forward_tensors(src, bgr)
    finally:
        hook.remove()
    if backend == "reference":  # the eager backend runs its own copy of the backbone
        assert seen == [(40, 56)]
    assert {k: tuple(v.shape) for k, v in out.items()} == {"pha": (1, 1, 40, 56), "fgr": (1, 3, 40, 56),
                                                           "err": (1, 1, 40, 56), "ref": (1, 1, 40, 56)}
    at_half = Matter(path, device="cpu", backend=backend, backbone_scale=0.5, refine_sample_pixels=16 * 120)
    big = at_half.forward_tensors(*(F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
                                    for t in (src, bgr)))
    torch.testing.assert_close(out["pha"], F.avg_pool2d(big["pha"], 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["fgr"], F.avg_pool2d(big["fgr"], 2), atol=1e-5, rtol=0)
    assert Matter(path, device="cpu", backbone_scale=0.75).supersample == 1.5
    assert Matter(path, device="cpu", backbone_scale=0.5).supersample == 1


def test_auto_backbone_scale_follows_the_frame_size():
    assert auto_backbone_scale(720, 1280, 0.5) == 0.5 and auto_backbone_scale(2160, 3840, 0.5) == 0.5
    assert auto_backbone_scale(540, 960, 0.5) == auto_backbone_scale(576, 768, 0.5) == 1  # doubled, not 3/4
    assert auto_backbone_scale(719, 1279, 0.5) == 1 and auto_backbone_scale(48, 64, 0.5) == 1  # never above 1
    assert auto_backbone_scale(1080, 1920, 0.25) == 0.25 and auto_backbone_scale(540, 960, 0.25) == 0.5
    assert auto_backbone_scale(360, 480, 0.25) == 1  # 480 px at 1/2 is still fewer than 1280 at 1/4


@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_an_auto_backbone_scale_is_chosen_per_frame_size(refine_model, tmp_path, backend, monkeypatch):
    import bgmatting.pipeline
    from bgmatting.weights import save_weights

    monkeypatch.setattr(bgmatting.pipeline, "AUTO_REFERENCE_SIDE", 128)  # small frames stand for SD and HD
    refine_model.backbone_scale = 0.5  # as the shipped weights
    path = save_weights(refine_model, tmp_path / "m.safetensors")
    auto = Matter(path, device="cpu", backend=backend, backbone_scale="auto", refine_sample_pixels=16 * 30)
    src, bgr = torch.rand(1, 3, 40, 64), torch.rand(1, 3, 40, 64)
    small, large = src[..., :, :32], torch.rand(1, 3, 80, 128)
    small_bgr, large_bgr = bgr[..., :, :32], torch.rand(1, 3, 80, 128)
    # 32 px wide: the scale doubled, at most to 1: the frame enlarged 2x, as backbone_scale=1 does
    out = out_small = auto.forward_tensors(small, small_bgr)
    assert (auto.backbone_scale, auto.supersample, auto.model.refiner.sample_pixels) == (1, 2, 16 * 120)
    engine = auto.runner
    one = Matter(path, device="cpu", backend=backend, backbone_scale=1, refine_sample_pixels=16 * 30)
    torch.testing.assert_close(out["pha"], one.forward_tensors(small, small_bgr)["pha"], atol=1e-5, rtol=0)
    # 128 px wide: the weights' own scale, 1/2, as without the option
    out = auto.forward_tensors(large, large_bgr)
    assert (auto.backbone_scale, auto.supersample, auto.model.refiner.sample_pixels) == (0.5, 1, 16 * 30)
    own = Matter(path, device="cpu", backend=backend, refine_sample_pixels=16 * 30)
    torch.testing.assert_close(out["pha"], own.forward_tensors(large, large_bgr)["pha"], atol=1e-5, rtol=0)
    # and back to the small frame's setting, with the engine built for it
    torch.testing.assert_close(auto.forward_tensors(small, small_bgr)["pha"], out_small["pha"], atol=0, rtol=0)
    assert (auto.backbone_scale, auto.supersample) == (1, 2) and auto.runner is engine


def test_the_network_itself_runs_at_one_half_at_most(refine_model):
    with pytest.raises(BgMattingError, match=r"backbone_scale must be in \(0, 1/2\]"):
        MattingRefine("mobilenetv2", backbone_scale=1)


def test_supersampling_refuses_a_frame_it_would_enlarge_past_the_limit(refine_model, tmp_path, monkeypatch):
    import bgmatting.pipeline
    from bgmatting.weights import save_weights

    monkeypatch.setattr(bgmatting.pipeline, "MAX_SUPERSAMPLED_PIXELS", 4 * 40 * 56)
    matter = Matter(save_weights(refine_model, tmp_path / "m.safetensors"), device="cpu", backbone_scale=1)
    assert matter.forward_tensors(torch.rand(1, 3, 40, 56), torch.rand(1, 3, 40, 56))["pha"].shape[2:] == (40, 56)
    with pytest.raises(BgMattingError, match=r"backbone scale 1 would enlarge this 56x44 frame to 0 megapixels, "
                                             r"over the 0 that the network takes; .* use 1/2"):
        matter.forward_tensors(torch.rand(1, 3, 44, 56), torch.rand(1, 3, 44, 56))
