"""The trainer: config files, a base and a refine run on tiny data, exact resuming, export, and torchrun
(2 CPU processes)."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bgmatting.data.perturb import composite
from bgmatting.errors import BgMattingError
from bgmatting.train import trainer as trainer_module
from bgmatting.train.checkpoints import average_weights, export_weights, latest_checkpoint, load_checkpoint
from bgmatting.train.config import TrainConfig, parse_overrides, to_toml
from bgmatting.train.distributed import Dist, unwrap
from bgmatting.train.loaders import build_loaders
from bgmatting.train.steps import make_inputs
from bgmatting.train.trainer import train
from bgmatting.weights import load_model, read_state_dict

from helpers import read_metrics, tiny

# ------------------------------------------------------------------------------------------------ config

def test_config_stage_defaults():
    base = TrainConfig(matte_roots=["m"], background_roots=["b"]).resolved()
    assert (base.lr_backbone, base.lr_aspp, base.lr_decoder) == (1e-4, 5e-4, 5e-4)
    assert (base.size, base.crop_min, base.crop_max, base.batch_size) == (512, 256, 512, 8)
    ref = TrainConfig(stage="refine", matte_roots=["m"], background_roots=["b"]).resolved()
    assert (ref.lr_backbone, ref.lr_aspp, ref.lr_decoder, ref.lr_refiner) == (5e-5, 5e-5, 1e-4, 3e-4)
    assert (ref.size, ref.crop_min, ref.crop_max) == (2048, 1024, 2048)
    assert ref.crop_multiple == 16 and all(h % 16 == 0 and w % 16 == 0 for h, w in ref.crop_sizes())
    assert TrainConfig(matte_roots=["m"], background_roots=["b"], lr_aspp=1e-3).resolved().lr_aspp == 1e-3


def test_config_file_roundtrip_and_overrides(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path / "run", init="weights.pth").resolved()
    path = tmp_path / "train.toml"
    path.write_text(to_toml(cfg.to_dict()))
    assert TrainConfig.from_file(path) == cfg
    assert TrainConfig.from_file(path, steps=7).steps == 7
    json_path = tmp_path / "train.json"
    json_path.write_text(json.dumps({"stage": "refine", "matte_roots": "a"}))
    assert TrainConfig.from_file(json_path).matte_roots == ["a"]
    assert parse_overrides(["steps=5", "init=w.pth", "amp=false", "matte_roots=['a', 'b']", "lr-aspp=1e-3"]) == {
        "steps": 5, "init": "w.pth", "amp": False, "matte_roots": ["a", "b"], "lr_aspp": 1e-3}


@pytest.mark.parametrize("bad, message", [
    ({"stepz": 3}, "unknown training option"),
    ({"stage": "middle"}, "stage"),
    ({"batch_size": 1}, "at least 2"),
    ({"crop_max": 64}, "larger than the sample size"),
    ({"base_checkpoint": "x.pt"}, "refine stage"),
    ({"stage": "refine", "backbone_scale": 0.3}, "divide 4"),
    ({"data_root": None}, "no training data"),
    ({"fgr_scale": [0.5, 0.2]}, "fgr_scale"),
    ({"fgr_scale": 0.3}, "fgr_scale"),
    ({"misalign_p": 1.5}, "misalign_p"),
    ({"compress_p": "often"}, "compress_p"),
    ({"perspective": 0.5}, "perspective"),
    ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine"),
    ({"misalign_strength": -1}, "misalign_strength"),
    ({"misalign_strength": "strong"}, "misalign_strength"),
    ({"shadow_strength": [0.5, 0.2]}, "shadow_strength"),
    ({"shadow_strength": 0.5}, "shadow_strength"),
    ({"shadow_strength": [0.1, 1.5]}, "shadow_strength"),
    ({"extra_subject_p": 2}, "extra_subject_p"),
    ({"extra_subject_misalign_p": -0.1}, "extra_subject_misalign_p"),
    ({"background_subject_p": 1.5}, "background_subject_p"),
    ({"matte_repeat": [["people"]]}, "matte_repeat"),
    ({"matte_repeat": [["people", 0]]}, "matte_repeat"),
    ({"matte_repeat": {"people": 4}}, "matte_repeat"),
    ({"extra_subject_scale": [0.3]}, "extra_subject_scale"),
    ({"stage": "refine", "backbone_scales": [0.25, 0.3]}, "backbone_scales"),
    ({"stage": "refine", "backbone_scales": [0]}, "backbone_scales"),
])
def test_config_errors(corpus, tmp_path, bad, message):
    with pytest.raises(BgMattingError, match=message):
        TrainConfig.from_dict({**tiny(corpus, tmp_path).to_dict(), **bad}).resolved()


# ------------------------------------------------------------------------------------------------ runs

def test_base_run_outputs_and_export(corpus, tmp_path):
    out = tmp_path / "run"
    ckpt = train(tiny(corpus, out, validate_every=2, tensorboard=True))
    assert ckpt == out / "checkpoint-00000002.pt" and ckpt.is_file()
    assert TrainConfig.from_file(out / "config.toml").steps == 2
    metrics = read_metrics(out)
    assert sorted(metrics) == [1, 2] and all(np.isfinite(m["total"]) for m in metrics.values())
    valid = read_metrics(out, "valid")[2]
    assert valid["samples"] == 2 and {"loss_total", "sad", "mse"} <= set(valid)
    state = load_checkpoint(out)
    assert state["step"] == 2 and state["model_config"]["architecture"] == "MattingBase"
    assert not list(out.glob(".*tmp*")), "no temporary files are left behind"

    shipped = export_weights(ckpt, tmp_path / "base.safetensors")
    tensors, meta = read_state_dict(shipped)
    assert tensors["backbone.features.0.0.weight"].dtype == torch.float16 and meta["architecture"] == "MattingBase"
    model = load_model(shipped)
    assert torch.allclose(model.state_dict()["decoder.conv4.weight"], state["model"]["decoder.conv4.weight"],
                          atol=1e-3)

    with pytest.raises(BgMattingError, match="resume=True"):
        train(tiny(corpus, out))


@pytest.mark.slow
def test_export_weights_averages_checkpoints(corpus, tmp_path):
    from bgmatting.cli import main

    out = tmp_path / "run"
    train(tiny(corpus, out, steps=3, checkpoint_every=1, keep_checkpoints=0))
    states = {s: load_checkpoint(out / f"checkpoint-{s:08d}.pt")["model"] for s in (1, 2, 3)}
    path = tmp_path / "mean.safetensors"
    assert main(["export-weights", str(out), "-o", str(path), "--dtype", "fp32", "--average-from", "2"]) == 0
    tensors, meta = read_state_dict(path)
    key = "decoder.conv4.weight"
    assert not torch.equal(states[2][key], states[3][key])
    assert torch.allclose(tensors[key], (states[2][key] + states[3][key]) / 2, atol=1e-7)
    assert "mean of steps 2, 3" in meta["description"]
    with pytest.raises(BgMattingError, match="no checkpoint .* between steps 5 and 3"):
        export_weights(out, tmp_path / "none.safetensors", average_from=5)


def test_a_cosine_schedule_lowers_every_rate_to_near_zero_by_the_last_step(corpus, tmp_path):
    out = tmp_path / "cos"
    train(tiny(corpus, out, steps=4, stage="refine", backbone_scale=0.5, lr_schedule="cosine"))
    rows = read_metrics(out)
    base = {"backbone": 5e-5, "aspp": 5e-5, "decoder": 1e-4, "refiner": 3e-4}
    for step in (1, 2, 3, 4):
        factor = 0.5 * (1 + math.cos(math.pi * (step - 1) / 4))
        for part, lr in base.items():
            assert rows[step][f"lr_{part}"] == pytest.approx(lr * factor), (step, part)
    assert rows[4]["lr_refiner"] < 0.15 * 3e-4 < rows[1]["lr_refiner"]
    out = tmp_path / "const"
    train(tiny(corpus, out, steps=2))
    assert {r["lr_decoder"] for r in read_metrics(out).values()} == {5e-4}


@pytest.mark.slow
def test_resume_continues_exactly(corpus, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(tiny(corpus, straight, steps=4))

    crashed = tmp_path / "crashed"
    real_step, calls = trainer_module.train_step, []

    def crash_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed after the checkpoint of step 2
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(corpus, crashed, steps=4, checkpoint_every=2))
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    assert latest_checkpoint(crashed).name == "checkpoint-00000002.pt"

    final = train(tiny(corpus, crashed, steps=4, checkpoint_every=2, resume=True))
    a, b = read_metrics(straight), read_metrics(crashed)
    for step in (3, 4):
        assert a[step]["total"] == b[step]["total"], f"loss at step {step}"
        assert (a[step]["height"], a[step]["width"]) == (b[step]["height"], b[step]["width"])
    wa, wb = load_checkpoint(straight)["model"], load_checkpoint(final)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_time_budget_stops_with_a_checkpoint_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    clock = itertools.count(0, 30)  # every reading of the clock is 30 s after the last
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(clock)))
    out = tmp_path / "run"
    # budget 1.5 minutes: the clock passes it by the 2nd logging step (log_every=2), i.e. at step 4 of 10
    ckpt = train(tiny(corpus, out, steps=10, log_every=2, max_minutes=1.5, validate_every=100))
    assert ckpt == out / "checkpoint-00000004.pt" and ckpt.is_file()
    assert load_checkpoint(ckpt)["step"] == 4 and sorted(read_metrics(out)) == [2, 4]
    assert "valid" in {json.loads(x)["split"] for x in (out / "metrics.jsonl").read_text().splitlines()}
    assert "time budget of 1.5 minutes is spent" in capsys.readouterr().err
    final = train(tiny(corpus, out, steps=6, log_every=2, max_minutes=100, resume=True))
    assert final == out / "checkpoint-00000006.pt" and sorted(read_metrics(out)) == [2, 4, 6]


def test_fgr_scale_shrinks_the_subjects(corpus):
    def mean_alpha(fgr_scale):
        cfg = tiny(corpus, corpus / "unused", fgr_scale=fgr_scale, batch_size=6).resolved()
        loader = build_loaders(cfg, Dist(), torch.device("cpu"))[0]
        return float(next(iter(loader))["pha"].mean())

    full, small = mean_alpha([1.0, 1.0]), mean_alpha([0.25, 0.25])
    assert 0 < small < 0.3 * full  # a quarter of the size: about a sixteenth of the area


def test_extra_subjects_add_alpha(corpus):
    def mean_alpha(p):
        cfg = tiny(corpus, corpus / "unused", extra_subject_p=p, batch_size=6).resolved()
        torch.manual_seed(0)
        loader = build_loaders(cfg, Dist(), torch.device("cpu"))[0]
        return float(next(iter(loader))["pha"].mean())

    assert mean_alpha(1.0) > mean_alpha(0.0) > 0


def test_matte_repeat_draws_a_folder_s_mattes_more_often(corpus, tmp_path):
    cfg = tiny(corpus, corpus / "unused").resolved()
    plain = build_loaders(cfg, Dist(), torch.device("cpu"))[0].dataset
    more = build_loaders(cfg.replace(matte_repeat=[["toy", 3]]), Dist(), torch.device("cpu"))[0].dataset
    assert len(plain) == 6 and len(more) == 18  # the tiny corpus's six mattes all lie under fgr/toy/
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg.replace(matte_repeat=[["toy", 3]]).to_dict()))
    assert TrainConfig.from_file(path).matte_repeat == [["toy", 3]]  # written and read back
    with pytest.raises(BgMattingError, match="fgr/people/"):
        build_loaders(cfg.replace(matte_repeat=[["people", 2]]), Dist(), torch.device("cpu"))


def test_samples_with_a_second_subject_get_their_own_misalignment_rate(corpus):
    cfg = tiny(corpus, corpus / "unused", extra_subject_p=0.5, batch_size=6).resolved()
    torch.manual_seed(3)
    batch = next(iter(build_loaders(cfg, Dist(), torch.device("cpu"))[0]))
    flagged = batch["extra"] > 0
    assert 0 < int(flagged.sum()) < 6  # the loader says which samples carry a second subject
    none = {name: 0.0 for name in ("shadow_p", "noise_p", "colour_p", "misalign_p")}
    _, shot, _, _ = make_inputs(batch, 1, torch.device("cpu"), None, cfg.replace(**none, extra_subject_misalign_p=1.0))
    moved = (shot - batch["bgr"]).abs().flatten(1).amax(1) > 0
    assert torch.equal(moved, flagged)  # exactly the samples with a second subject were misaligned
    _, shot, _, _ = make_inputs(batch, 1, torch.device("cpu"), None, cfg.replace(**none))
    assert torch.equal(shot, batch["bgr"])  # unset: misalign_p (0) for every sample


@pytest.mark.slow
def test_refine_stage_trains_at_each_backbone_scale(corpus, tmp_path, monkeypatch):
    seen = []
    real = trainer_module.train_step

    def spy(model, *args):
        seen.append(unwrap(model).backbone_scale)
        return real(model, *args)

    monkeypatch.setattr(trainer_module, "train_step", spy)
    ckpt = train(tiny(corpus, tmp_path / "r", stage="refine", size=64, steps=8, refine_sample_pixels=256,
                      backbone_scale=0.5, backbone_scales=[0.25, 0.5]))
    assert set(seen) == {0.25, 0.5}
    assert load_checkpoint(ckpt)["model_config"]["backbone_scale"] == 0.5  # the configured scale is what ships
    rows = read_metrics(tmp_path / "r")
    assert all(r["height"] % 16 == 0 and r["width"] % 16 == 0 for r in rows.values())  # 4 / (1/4)


def test_training_perturbations_reach_the_pairs(corpus):
    cfg = tiny(corpus, corpus / "unused", batch_size=4).resolved()
    batch = next(iter(build_loaders(cfg, Dist(), torch.device("cpu"))[0]))
    none = {name: 0.0 for name in ("shadow_p", "noise_p", "colour_p", "misalign_p")}
    src, bgr, fgr, pha = make_inputs(batch, 1, torch.device("cpu"), None, cfg.replace(**none))
    assert torch.equal(bgr, batch["bgr"]) and torch.equal(pha, batch["pha"])
    src, bgr, fgr, pha = make_inputs(batch, 1, torch.device("cpu"), None,
                                     cfg.replace(**none, compress_p=1.0, motion_blur_p=1.0))
    assert not torch.equal(bgr, batch["bgr"])  # compressed shot
    assert not torch.equal(pha, batch["pha"]) and abs(float(pha.sum() - batch["pha"].sum())) < 1  # blurred targets
    # misalign_strength reaches the shot: 0 leaves it in place, 2 moves it further than 1 (same draws)
    moved = {k: make_inputs(batch, 1, torch.device("cpu"), None,
                            cfg.replace(**none | {"misalign_p": 1.0}, misalign_strength=k))[1] for k in (0.0, 1.0, 2.0)}
    torch.testing.assert_close(moved[0.0], batch["bgr"], atol=1e-5, rtol=0)
    assert (moved[2.0] - batch["bgr"]).abs().mean() > 1.2 * (moved[1.0] - batch["bgr"]).abs().mean()
    # shadow_strength reaches the source: the same shadows, denser
    shaded = {k: make_inputs(batch, 1, torch.device("cpu"), None,
                             cfg.replace(**none | {"shadow_p": 1.0}, shadow_strength=[k, k]))[0]
              for k in (0.0, 0.2, 0.5)}
    clean = composite(batch["fgr"], batch["pha"], batch["bgr"])
    torch.testing.assert_close(shaded[0.0], clean, atol=1e-5, rtol=0)
    assert (clean - shaded[0.5]).mean() > 2 * (clean - shaded[0.2]).mean() > 0
    # validation (cfg None) keeps BGMv2's perturbations whatever the training config says
    a = make_inputs(batch, 1, torch.device("cpu"), None)
    b = make_inputs(batch, 1, torch.device("cpu"), None, cfg)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("bad", [-1, float("inf"), "soon"])
def test_time_budget_must_be_a_non_negative_number(corpus, tmp_path, bad):
    with pytest.raises(BgMattingError, match="max_minutes"):
        tiny(corpus, tmp_path, max_minutes=bad).resolved()


@pytest.mark.slow
def test_refine_stage_from_base_checkpoint(corpus, tmp_path):
    base = train(tiny(corpus, tmp_path / "base", steps=1))
    ckpt = train(tiny(corpus, tmp_path / "refine", stage="refine", size=64, steps=2, refine_sample_pixels=256,
                      base_checkpoint=str(base), validate_every=2))
    state = load_checkpoint(ckpt)
    assert state["model_config"]["architecture"] == "MattingRefine"
    assert state["model_config"]["refine_sample_pixels"] == 256
    rows = read_metrics(tmp_path / "refine")
    assert {"pha", "pha_sm", "err_sm", "lr_refiner"} <= set(rows[1])
    assert all(r["height"] % 16 == 0 and r["width"] % 16 == 0 for r in rows.values())
    assert "sad" in read_metrics(tmp_path / "refine", "valid")[2]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(corpus, tmp_path):
    out = tmp_path / "ddp"
    config = tmp_path / "ddp.toml"
    config.write_text(to_toml(tiny(corpus, out, steps=3, checkpoint_every=2).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bgmatting.train.trainer", str(config)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoint-00000003.pt").is_file() and (out / "checkpoint-00000002.pt").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3], "only rank 0 logs"
    assert load_checkpoint(out)["step"] == 3


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_shipped_training_configs_are_valid(name, corpus):
    path = CONFIGS / name
    cfg = TrainConfig.from_file(path, data_root=str(corpus)).resolved()  # raises on any unknown or bad option
    assert cfg.stage in ("base", "refine")


def test_average_weights_is_the_mean_of_the_files(tmp_path):
    from bgmatting.cli import main
    from bgmatting.models import MattingBase, MattingRefine
    from bgmatting.weights import save_weights

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = MattingRefine("mobilenetv2", backbone_scale=0.5)
        for m in model.modules():  # BatchNorm statistics other than their initial values, so they count too
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        paths.append(save_weights(model, tmp_path / f"w{seed}.safetensors"))
    states = [read_state_dict(p)[0] for p in paths]
    assert main(["average-weights", *map(str, paths), "-o", str(tmp_path / "mean.safetensors"), "--dtype", "fp32"]) == 0
    mean = load_model(tmp_path / "mean.safetensors")
    assert mean.backbone_scale == 0.5  # the model options come along
    for k, v in mean.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, sum(st[k] for st in states) / 3, rtol=0, atol=1e-6)
    save_weights(MattingBase("resnet50"), tmp_path / "other.safetensors")
    with pytest.raises(BgMattingError, match="different models"):
        average_weights([paths[0], tmp_path / "other.safetensors"], tmp_path / "bad.safetensors")
    with pytest.raises(BgMattingError, match="at least two"):
        average_weights(paths[:1], tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
