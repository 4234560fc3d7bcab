"""TorchScript and ONNX export: dynamic sizes, every refine mode, the TopK-free graph, OnnxModel and the CLI."""

import re
import sys
import warnings

import pytest
import torch

from bgmatting import (
    BgMattingError,
    MattingBase,
    MattingRefine,
    load_model,
    save_weights,
)
from bgmatting.cli import main
from bgmatting.export import (
    OnnxModel,
    example_pair,
    export_onnx,
    export_torchscript,
    exportable,
)
from bgmatting.weights import model_config

from helpers import needs, optional, randomize_

onnx = optional("onnx")
needs_onnx = needs("onnx", "onnxruntime")  # export_onnx writes with onnx and checks with onnxruntime

SIZE = (64, 96)  # the example size the exports are traced and checked at (and at 96x64, batch 2)
OTHER = (3, 80, 128)  # batch, height, width of the extra comparison below: neither of the above
SAMPLE_PIXELS = 16 * 40  # 40 patches: fewer than the 384 to 640 patches of the sizes above
MODES = ["base", "sampling", "thresholding", "full"]


def make_model(mode: str, kernel: int = 3, **options) -> torch.nn.Module:
    if mode == "base":
        return randomize_(MattingBase("mobilenetv2"))
    return randomize_(MattingRefine("mobilenetv2", backbone_scale=0.5, refine_mode=mode,
                                    refine_sample_pixels=SAMPLE_PIXELS, refine_kernel_size=kernel, **options))


@pytest.fixture(scope="module")
def models():
    return {mode: make_model(mode) for mode in MODES}


def assert_matches(model, run, batch_h_w=OTHER, seed=7, tol=1e-4):
    b, h, w = batch_h_w
    src, bgr = example_pair((h, w), b, seed)
    with torch.no_grad():
        want = model(src, bgr)
    got = run(src, bgr)
    assert len(got) == len(want)
    for g, e in zip(got, want):
        assert g.shape == e.shape
        assert (g.float() - e).abs().max() <= tol
    if isinstance(model, MattingRefine) and model.refiner.mode != "full":
        assert 0 < want[-1].sum() < want[-1].numel()  # some patches refined, not all: a real test of the selection


# --------------------------------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("mode", MODES)
@needs_onnx
def test_onnx_export_matches_pytorch_at_other_sizes(tmp_path, models, mode):
    model = models[mode]
    path = tmp_path / "m.onnx"
    report = export_onnx(model, path, example_size=SIZE)
    assert path.is_file() and not list(tmp_path.glob(".*"))  # no temporary file left
    assert [c.shape for c in report.checks] == [(1, 3, 64, 96), (2, 3, 96, 64)]
    assert report.max_diffs["pha"] <= 1e-4
    assert "alpha: max" in report.format_table()
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["src", "bgr"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"] and dims[1].dim_value == 3
    runner = OnnxModel(path, intra_op_threads=1)
    assert runner.output_names == (("pha", "fgr", "err", "hid") if mode == "base" else
                                   ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"))
    assert runner.config == model_config(model)
    assert_matches(model, runner)
    if mode == "sampling":
        assert "TopK" in {n.op_type for n in proto.graph.node}


@needs_onnx
def test_topk_free_onnx_has_no_topk_and_matches_topk(tmp_path, models):
    model = models["sampling"]
    path = tmp_path / "trt.onnx"
    report = export_onnx(model, path, example_size=SIZE, topk_free=True, opset=18)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "TopK" not in ops and "NonZero" in ops
    assert report.topk_free and "TopK-free" in report.format_table()
    runner = OnnxModel(path, intra_op_threads=1)
    assert runner.metadata["topk_free"] == "true"
    assert_matches(model, runner)
    assert_matches(model, runner, (1, 32, 32))  # 64 patches, 34 with an error > 0: fewer than k = 40


@needs_onnx
def test_topk_free_ties_are_reported_not_failed(tmp_path):
    # fewer patches with an error > 0 (85 to 137) than k = 300 and no prevent_oversampling: the zeros tie at the
    # k-th value; PyTorch's top-k refines some of them, the TopK-free graph all of them
    model = make_model("sampling", refine_prevent_oversampling=False)
    model.refiner.sample_pixels = 16 * 300
    report = export_onnx(model, tmp_path / "ties.onnx", example_size=SIZE, topk_free=True)
    assert sum(c.reselected for c in report.checks) > 0
    assert "at the selection boundary (ties)" in report.format_table()


@pytest.mark.parametrize("export", [pytest.param(export_onnx, marks=needs_onnx), export_torchscript])
def test_export_with_no_patch_to_refine(tmp_path, export):
    model = make_model("thresholding", refine_threshold=1.0)  # the error never exceeds 1: an empty patch batch
    report = export(model, tmp_path / "none", example_size=SIZE)
    assert report.checks and report.max_diffs["ref_sm"] == 0
    with torch.no_grad():
        assert model(*example_pair(SIZE))[-1].sum() == 0


@needs_onnx
def test_fp16_onnx_export(tmp_path, models):
    model = models["thresholding"]
    path = tmp_path / "half.onnx"
    report = export_onnx(model, path, example_size=SIZE, precision="fp16")
    assert report.criterion == "mean" and report.checks
    runner = OnnxModel(path, intra_op_threads=1)
    assert runner.precision == "fp16"
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    src, bgr = example_pair((64, 64), 2)
    pha = runner(src, bgr)[0]  # float32 inputs are cast to the file's float16
    assert pha.dtype == torch.float16 and pha.shape == (2, 1, 64, 64)
    with torch.no_grad():
        assert (pha.float() - model(src, bgr)[0]).abs().mean() < 5e-3


@needs_onnx
def test_failed_check_writes_nothing(tmp_path, models, monkeypatch):
    from bgmatting import export

    def broken(model, **kwargs):
        out = exportable(model, **kwargs)
        with torch.no_grad():
            out.decoder.conv4.bias[0] += 0.01  # alpha off by 0.01 where it is not clamped
        return out

    monkeypatch.setattr(export, "exportable", broken)
    with pytest.raises(BgMattingError, match="export check failed: alpha"):
        export_onnx(models["base"], tmp_path / "m.onnx", example_size=SIZE)
    with pytest.raises(BgMattingError, match="export check failed: alpha"):
        export_torchscript(models["base"], tmp_path / "m.pt", example_size=SIZE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 16}, "opset must be an integer from 17 to 20"),
    ({"precision": "bf16"}, "precision must be one of fp32, fp16"),
    ({"example_size": (62, 96)}, "divisible by 4"),
    ({"example_size": (16, 16)}, "at least 32x32"),
])
def test_bad_export_options(tmp_path, models, kwargs, message):
    with pytest.raises(BgMattingError, match=message):
        export_onnx(models["sampling"], tmp_path / "m.onnx", **kwargs)
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(BgMattingError, match="only MattingBase and MattingRefine"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.onnx")


@needs_onnx
def test_onnx_model_errors(tmp_path, models, monkeypatch):
    from onnx import TensorProto, helper

    with pytest.raises(BgMattingError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(BgMattingError, match="is not a readable ONNX model"):
        OnnxModel(text)
    graph = helper.make_graph([helper.make_node("Identity", ["src"], ["pha"])], "other",
                              [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(other))
    with pytest.raises(BgMattingError, match="not one exported by bgmatting"):
        OnnxModel(other)
    path = tmp_path / "base.onnx"
    export_onnx(models["full"], path, example_size=SIZE, validate=False)
    with pytest.raises(BgMattingError, match="provider.*NoSuchExecutionProvider.*not available"):
        OnnxModel(path, providers=["NoSuchExecutionProvider"])
    runner = OnnxModel(path, intra_op_threads=1)
    with pytest.raises(BgMattingError, match="divisible by 4"):
        runner(torch.rand(1, 3, 62, 64), torch.rand(1, 3, 62, 64))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(BgMattingError, match=r"OnnxModel needs the 'onnxruntime' package, a dependency of "
                                             r"bgmatting that is missing here: pip install onnxruntime$"):
        OnnxModel(path)
    with pytest.raises(BgMattingError, match="checking an ONNX export needs the 'onnxruntime' package"):
        export_onnx(models["full"], tmp_path / "again.onnx", example_size=SIZE)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(BgMattingError, match=r"ONNX export needs the 'onnx' package, a dependency of bgmatting "
                                             r"that is missing here: pip install onnx$"):
        export_onnx(models["full"], tmp_path / "again.onnx", example_size=SIZE, validate=False)
    assert not (tmp_path / "again.onnx").exists()


# --------------------------------------------------------------------------------------------- TorchScript

@pytest.mark.parametrize("mode", MODES)
def test_torchscript_export_matches_pytorch_and_loads_as_weights(tmp_path, models, mode):
    model = models[mode]
    path = tmp_path / "m.pt"
    report = export_torchscript(model, path, example_size=SIZE)
    assert [c.shape for c in report.checks] == [(1, 3, 64, 96), (2, 3, 96, 64)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        scripted = torch.jit.load(str(path))
    with torch.no_grad():
        assert_matches(model, lambda s, b: scripted(s, b), tol=0)
    # bgmatting.load_model reads the archive's tensors and its options (as data), with nothing passed again
    loaded = load_model(path)
    assert type(loaded) is type(model) and model_config(loaded) == model_config(model)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    if mode != "base":
        assert load_model(path, refine_mode="full").refiner.mode == "full"  # overrides still win


def test_torchscript_trace_has_no_device_constants_of_ours(models):
    for mode in ("sampling", "full"):
        src, bgr = example_pair((64, 64))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(exportable(models[mode]), (src, bgr), check_trace=False)
        graph = str(traced.inlined_graph).splitlines()
        ours = [line for line in graph if "Device = prim::Constant" in line and "bgmatting" in line]
        assert ours == []  # so that a CPU trace runs on a GPU too


# --------------------------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    model = randomize_(MattingRefine("mobilenetv2", backbone_scale=0.5, refine_sample_pixels=SAMPLE_PIXELS))
    return save_weights(model, path)


@needs_onnx
def test_cli_export(tmp_path, weights, capsys):
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", "--format", "onnx", "--weights", str(weights), "--refine-mode", "thresholding",
                 "--refine-threshold", "0.2", "--example-size", "64x96", "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"wrote {out}: ONNX opset 17, fp32" in table and "refine_threshold=0.2" in table
    assert "1x3x64x96" in table and "2x3x96x64" in table and "alpha: max |difference|" in table
    runner = OnnxModel(out, intra_op_threads=1)
    assert runner.config["refine_mode"] == "thresholding" and runner.config["refine_threshold"] == 0.2


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "--opset", "11"], "bgmatting: error: ONNX opset must be an integer from 17 to 20"),
    (["--format", "torchscript", "--topk-free"], "bgmatting: error: topk_free is only for ONNX export"),
    (["--format", "onnx", "--refine-mode", "guess"], "bgmatting: error: export: argument --refine-mode"),
    (["--format", "onnx", "--example-size", "64by96"], "bgmatting: error: export: argument --example-size"),
    (["--format", "onnx", "-o", "WEIGHTS"], "bgmatting: error: output '.*' would overwrite the weights file"),
])
def test_cli_export_errors(tmp_path, weights, capsys, args, message):
    args = [str(weights) if a == "WEIGHTS" else a for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "m.onnx")]
    if "--example-size" not in args:
        args += ["--example-size", "64x96"]
    before = weights.read_bytes()
    assert main(["export", "--weights", str(weights), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.match(message, err)
    assert weights.read_bytes() == before and not (tmp_path / "m.onnx").exists()


@needs_onnx
def test_matter_runs_an_exported_onnx_file(tmp_path, models):
    from bgmatting import Matter

    model = models["sampling"]
    path = tmp_path / "m.onnx"
    export_onnx(model, path, example_size=SIZE)
    matter = Matter(path, device="cpu")
    assert matter.backend == "onnxruntime" and matter.is_refine
    src, bgr = example_pair((70, 90), 1, seed=3)  # not a multiple of 4: Matter pads
    got = matter.forward_tensors(src, bgr)
    want = Matter(model, device="cpu", backend="reference").forward_tensors(src, bgr)
    for k in ("pha", "fgr", "err", "ref"):
        assert float((got[k] - want[k]).abs().max()) <= 1e-4, k
    with pytest.raises(BgMattingError, match="fixed"):
        Matter(path, device="cpu", refine_mode="full")
    loaded = load_model(path)  # the same file through load_model: called like the PyTorch model
    assert isinstance(loaded, OnnxModel) and loaded.config["refine_mode"] == "sampling"
    src4, bgr4 = example_pair((64, 96), 2, seed=4)
    with torch.no_grad():
        for a, b in zip(loaded(src4, bgr4), model(src4, bgr4)):
            assert a.shape == b.shape and float((a.float() - b.float()).abs().max()) <= 1e-4
    with pytest.raises(BgMattingError, match="fixed.*refine_mode given"):
        load_model(path, refine_mode="full")
    with pytest.raises(BgMattingError, match="onnxruntime backend"):
        Matter(path, device="cpu", backend="eager")
    with pytest.raises(BgMattingError, match="exported in fp32"):
        Matter(path, device="cpu", precision="bf16")


@needs_onnx
def test_matte_runs_an_exported_onnx_file_at_its_own_scale(tmp_path, models, capsys):
    # matte's default backbone scale ("auto") leaves an ONNX file's fixed options alone; asked for, it is refused
    from PIL import Image

    path = tmp_path / "m.onnx"
    export_onnx(models["sampling"], path, example_size=SIZE)
    for name, seed in (("s", 5), ("b", 6)):
        Image.fromarray((example_pair((36, 52), 1, seed=seed)[0][0].permute(1, 2, 0).numpy() * 255).astype("uint8")
                        ).save(tmp_path / f"{name}.png")
    common = [str(tmp_path / "s.png"), "--bgr", str(tmp_path / "b.png"), "--weights", str(path), "--outputs", "pha",
              "--no-bgr-check", "--device", "cpu", "-q"]
    assert main(["matte", *common, "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "pha" / "s.png").is_file()
    assert main(["matte", *common, "-o", str(tmp_path / "o2"), "--backbone-scale", "auto"]) == 2
    assert "fixed" in capsys.readouterr().err and not (tmp_path / "o2" / "pha" / "s.png").exists()
