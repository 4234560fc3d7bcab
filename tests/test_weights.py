"""Weight files: original .pth and TorchScript checkpoints, our safetensors, and clear errors for bad files."""

import os
import pickle
import zipfile

import pytest
import torch

from bgmatting import BgMattingError, MattingBase, MattingRefine, list_models, load_model, save_weights, zoo
from bgmatting.weights import ModelInfo, detect_config, read_state_dict, register_model

from helpers import needs, optional, randomize_

ORACLE = "BackgroundMattingV2.model"  # the parity oracle: the original implementation, PyPI backgroundmattingv2==1.0
oracle = optional(ORACLE)
needs_oracle = needs(ORACLE, reason="parity oracle backgroundmattingv2==1.0 missing")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.mark.parametrize("arch,backbone,kernel", [("MattingRefine", "resnet50", 3), ("MattingRefine", "resnet101", 1),
                                                  ("MattingRefine", "mobilenetv2", 3),
                                                  ("MattingBase", "mobilenetv2", 3)])
@needs_oracle
def test_original_pth_loads_with_detected_architecture(tmp_path, arch, backbone, kernel):
    if arch == "MattingRefine":
        theirs = randomize_(oracle.MattingRefine(backbone, refine_kernel_size=kernel))
    else:
        theirs = randomize_(oracle.MattingBase(backbone))
    path = tmp_path / "original.pth"
    torch.save(theirs.state_dict(), path)
    model = load_model(path)
    assert type(model).__name__ == arch and model.backbone_name == backbone
    assert detect_config(theirs.state_dict())["backbone"] == backbone
    if arch == "MattingRefine":
        assert model.refiner.kernel_size == kernel
    assert _same_weights(model, theirs)
    assert not model.training


@needs_oracle
def test_original_torchscript_export_loads_without_running_code(tmp_path):
    theirs = randomize_(oracle.MattingRefine("mobilenetv2", refine_mode="full"))

    class Wrapper(torch.nn.Module):  # the original export wraps the model as `self.model`
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, src, bgr):
            return self.model(src, bgr)

    x = torch.rand(1, 3, 32, 32)
    path = tmp_path / "torchscript_mobilenetv2_fp32.pth"
    with pytest.warns(Warning):
        traced = torch.jit.trace(Wrapper(theirs), (x, x), check_trace=False)
    traced.save(str(path))
    model = load_model(path)
    assert isinstance(model, MattingRefine) and _same_weights(model, theirs)
    # a TorchScript file that refers to anything but tensors and module attributes is refused
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        data_name = next(n for n in names if n.endswith("/data.pkl"))
        evil = tmp_path / "evil.pth"
        with zipfile.ZipFile(evil, "w") as out:
            for n in names:
                out.writestr(n, pickle.dumps(os.system) if n == data_name else z.read(n))
    with pytest.raises(BgMattingError, match="refusing to load"):
        load_model(evil)


@needs_oracle
def test_fp16_torchscript_export_loads_as_fp32(tmp_path):
    theirs = randomize_(oracle.MattingBase("mobilenetv2")).half()
    path = tmp_path / "ts16.pth"
    with pytest.warns(FutureWarning):
        torch.jit.script(_Holder(theirs)).save(str(path))
    model = load_model(path)
    assert next(model.parameters()).dtype == torch.float32
    assert _same_weights(model, theirs)


class _Holder(torch.nn.Module):
    """A scriptable module that only holds weights (fp16 convs cannot be traced on the CPU)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_safetensors_roundtrip_keeps_config_and_outputs(tmp_path):
    model = randomize_(MattingRefine("mobilenetv2", backbone_scale=1 / 8, refine_mode="thresholding",
                                     refine_threshold=0.2, refine_kernel_size=1))
    path = save_weights(model, tmp_path / "m.safetensors", description="test")
    loaded = load_model(path)
    assert loaded.backbone_scale == 1 / 8 and loaded.refiner.mode == "thresholding"
    assert loaded.refiner.threshold == 0.2 and loaded.refiner.kernel_size == 1
    assert _same_weights(loaded, model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x, x), loaded(x, x)))
    overridden = load_model(path, refine_mode="full", backbone_scale=0.25)
    assert overridden.refiner.mode == "full" and overridden.backbone_scale == 0.25
    half = load_model(save_weights(model, tmp_path / "h.safetensors", dtype=torch.float16))
    assert next(half.parameters()).dtype == torch.float32
    assert os.path.getsize(tmp_path / "h.safetensors") < 0.6 * os.path.getsize(path)


def test_ddp_and_nested_checkpoints(tmp_path):
    model = randomize_(MattingBase("mobilenetv2"))
    torch.save({"model_state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "step": 3},
               tmp_path / "ckpt.pth")
    assert _same_weights(load_model(tmp_path / "ckpt.pth"), model)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(BgMattingError, match="does not exist"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(BgMattingError, match="not a weights file"):
        load_model(tmp_path / "text.pth")
    (tmp_path / "trunc.safetensors").write_bytes((200).to_bytes(8, "little") + b'{"a": ')
    with pytest.raises(BgMattingError, match="safetensors"):
        load_model(tmp_path / "trunc.safetensors")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(BgMattingError, match="not a Background Matting V2 model"):
        load_model(tmp_path / "other.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled_module.pth")  # needs code to load: refused
    with pytest.raises(BgMattingError, match="refusing to load it"):
        load_model(tmp_path / "pickled_module.pth")
    with pytest.raises(BgMattingError, match="neither a file nor a model name"):
        load_model("no_such_model")
    with pytest.raises(BgMattingError, match="unknown model option"):
        load_model(tmp_path / "other.pth", refine_kernel=3)


def test_mismatched_weights_name_the_offending_keys(tmp_path):
    sd = randomize_(MattingRefine("resnet50")).state_dict()
    del sd["refiner.bn3.running_var"]
    sd["refiner.extra"] = torch.zeros(1)
    sd["decoder.conv4.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(BgMattingError) as info:
        load_model(tmp_path / "broken.pth")
    msg = str(info.value)
    assert "refiner.bn3.running_var" in msg and "refiner.extra" in msg and "decoder.conv4.bias (5,) vs (37,)" in msg


def test_base_weights_refuse_refiner_options(tmp_path):
    torch.save(MattingBase("mobilenetv2").state_dict(), tmp_path / "base.pth")
    with pytest.raises(BgMattingError, match="MattingBase"):
        load_model(tmp_path / "base.pth", refine_mode="full")
    with pytest.raises(BgMattingError, match="refine mode"):
        torch.save(MattingRefine("mobilenetv2").state_dict(), tmp_path / "r.pth")
        load_model(tmp_path / "r.pth", refine_mode="everything")


def test_registry(tmp_path, monkeypatch):
    names = [m.name for m in list_models()]
    assert names[0] == "mobilenetv2" and "resnet50" in names
    model = randomize_(MattingRefine("mobilenetv2"))
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))
    info = register_model(ModelInfo("unit-test", "unit-test.safetensors", "MattingRefine", "mobilenetv2", "test"))
    monkeypatch.setattr(ModelInfo, "path", property(lambda self: tmp_path / self.file))
    assert not info.available and info not in list_models(available_only=True)
    with pytest.raises(BgMattingError, match="not included"):
        load_model("unit-test")
    save_weights(model, tmp_path / "unit-test.safetensors")
    assert info.available and _same_weights(load_model("unit-test"), model)
    state, meta = read_state_dict(tmp_path / "unit-test.safetensors")
    assert meta["architecture"] == "MattingRefine" and meta["backbone"] == "mobilenetv2"


@pytest.mark.parametrize("config, message", [
    ("[1, 2]", "not a JSON object"),
    ('"text"', "not a JSON object"),
    ('{"refine_sample_pixels": "abc"}', "refine_sample_pixels must be an integer"),
    ('{"refine_sample_pixels": true}', "refine_sample_pixels must be an integer"),
    ('{"refine_threshold": "0.5"}', "refine_threshold must be a number"),
    ('{"backbone_scale": null}', "backbone_scale must be a number"),
    ('{"backbone_scale": 2}', "backbone_scale must be a number"),
    ('{"refine_mode": ["full"]}', "refine mode must be one of"),
    ('{"refine_prevent_oversampling": "no"}', "refine_prevent_oversampling must be true or false"),
])
def test_crafted_safetensors_headers_get_a_clear_error(tmp_path, config, message):
    from safetensors.torch import load_file, save_file

    good = save_weights(MattingRefine("mobilenetv2"), tmp_path / "good.safetensors")
    _, meta = read_state_dict(good)
    path = tmp_path / "crafted.safetensors"
    save_file(load_file(str(good)), str(path), metadata={**meta, "config": config})
    with pytest.raises(BgMattingError, match=message):
        load_model(path)


def test_cli_refuses_a_crafted_header_in_one_line(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    good = save_weights(MattingRefine("mobilenetv2"), tmp_path / "good.safetensors")
    _, meta = read_state_dict(good)
    path = tmp_path / "crafted.safetensors"
    save_file(load_file(str(good)), str(path), metadata={**meta, "config": "[1, 2]"})
    src = tmp_path / "src.png"
    from PIL import Image
    Image.new("RGB", (64, 48), (120, 30, 30)).save(src)
    Image.new("RGB", (64, 48), (30, 120, 30)).save(tmp_path / "bgr.png")
    run = subprocess.run([sys.executable, "-m", "bgmatting", "matte", str(src), "--bgr", str(tmp_path / "bgr.png"),
                          "-o", str(tmp_path / "out"), "--weights", str(path), "--no-bgr-check"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0 and "not a JSON object" in run.stderr


class _RunsCode:
    """Pickles as a call of ``os.mkdir(path)``: what a malicious checkpoint does with ``os.system``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_pth_that_would_run_code_is_refused_in_one_complete_line(tmp_path):
    marker = tmp_path / "the-code-ran"
    torch.save({"conv.weight": torch.zeros(1), "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(BgMattingError) as caught:
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()
    assert str(caught.value) == (f"'{tmp_path / 'evil.pth'}' is not a plain weights file: it holds Python objects that "
                                 f"would run code when loaded (it asks for {os.mkdir.__module__}.mkdir); refusing to "
                                 "load it (a .pth state_dict or a .safetensors file holds only tensors)")
    # a pickle refused for another reason: torch's own words, one sentence, on the same line
    (tmp_path / "odd.pth").write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01\x8c\x00.")
    with pytest.raises(BgMattingError, match=r"is not a plain weights file: PyTorch's safe loader stopped at: "
                                             r"Unsupported operand \d+; refusing to load it \(.*\)$") as caught:
        load_model(tmp_path / "odd.pth")
    assert "\n" not in str(caught.value)
