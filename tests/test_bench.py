"""The benchmark module: resolutions, example inputs, and rows that compare each backend with the reference."""

import math

import pytest
import torch

from bgmatting import BgMattingError, MattingRefine
from bgmatting.bench import bench_model, example_pair, format_table, parse_resolution, run_bench

from helpers import randomize_


def test_parse_resolution():
    assert parse_resolution("hd") == (1080, 1920)
    assert parse_resolution("4K") == (2160, 3840)
    assert parse_resolution("1280x720") == (720, 1280)
    assert parse_resolution("7680x4320") == (4320, 7680)
    for bad in ("720p", "1281x720", "16x16", "100000x100000", "8192x8192"):
        with pytest.raises(BgMattingError):
            parse_resolution(bad)


def test_example_pair_is_the_shipped_photo_resized():
    src, bgr = example_pair((72, 96), batch=2)
    assert src.shape == bgr.shape == (2, 3, 72, 96)
    assert 0 <= float(src.min()) and float(src.max()) <= 1
    assert float((src - bgr).abs().mean()) > 0.01  # the subject is in src only


def test_bench_model_uses_the_papers_settings_and_worst_case_random_weights():
    model, size = bench_model(None, "mobilenetv2", "4k")
    assert size == (2160, 3840) and model.backbone_scale == 1 / 8 and model.refiner.sample_pixels == 320_000
    src, bgr = example_pair((64, 96))
    with torch.no_grad():
        err = model(src, bgr)[4]
    assert float(err.std()) > 0.02
    assert float(err.min()) > 0 and float(err.max()) < 1 and err.unique().numel() > err.numel() // 2
    with pytest.raises(BgMattingError, match="not both"):
        bench_model("mobilenetv2", "resnet50", "hd")


def test_bench_and_export_refuse_an_onnx_file_as_weights(tmp_path, capsys):
    from bgmatting.cli import main

    path = tmp_path / "bgm.onnx"
    path.write_bytes(b"not read")
    with pytest.raises(BgMattingError, match="bgmatting bench needs PyTorch weights .*'.*bgm.onnx'"):
        bench_model(str(path), None, "hd")
    assert main(["export", "--weights", str(path), "--format", "onnx", "-o", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err
    assert "bgmatting export needs PyTorch weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_run_bench_rows(monkeypatch):
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 40))
    calls = []

    def fake_reference(src, bgr):  # an "original" that is off by 0.5 in alpha and refines one more patch
        calls.append(src.shape)
        out = model(src, bgr)
        ref = out[5].clone()
        ref.view(-1)[(ref.view(-1) == 0).nonzero()[0]] = 1.0
        return ((out[0] + 0.5).clamp(0, 1), *out[1:5], ref)

    rows = run_bench(model, (64, 96), ["reference", "eager"], device=torch.device("cpu"), frames=2, warmup=1,
                     references={"original": fake_reference})
    assert [r.backend for r in rows] == ["original", "reference", "eager"]
    assert len(calls) == 3 and calls[0] == (1, 3, 64, 96)
    assert math.isnan(rows[0].max_diff) and rows[1].max_diff > 0.1  # compared with the first row
    assert rows[2].refined == 16 * 40 and rows[2].ms > 0 and rows[2].speedup > 0
    assert rows[1].patches_diff == rows[2].patches_diff == 1
    table = format_table(rows).splitlines()
    assert len(table) == 5 and "| original |" in table[2] and "(reference)" in table[2]


def test_run_bench_compares_with_a_given_alpha():
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 40))
    target = torch.zeros(1, 1, 64, 96)
    rows = run_bench(model, (64, 96), ["reference", "eager"], device=torch.device("cpu"), frames=1, warmup=0,
                     compare_with=target)
    src, bgr = example_pair((64, 96))
    with torch.no_grad():
        expected = float(model(src, bgr)[0].abs().max())
    assert [r.max_diff for r in rows] == pytest.approx([expected, expected], abs=1e-4)
    assert math.isnan(rows[0].speedup) and rows[1].speedup > 0


def test_runners_are_timed_in_interleaved_rotating_rounds():
    from bgmatting.bench import time_runners

    log = []

    def runner(name):
        def run(src, bgr):
            log.append(name)
            return (src,)
        return run

    src = torch.zeros(1, 3, 4, 4)
    timed = time_runners([runner("a"), runner("b"), runner("c")], src, src, "fp32", frames=3, warmup=1)
    assert log == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]  # warm-ups alone, then the rounds
    assert len(timed) == 3 and all(ms >= 0 and peak is None and out[0] is src for ms, peak, out in timed)


def test_memory_benchmark_measures_each_path_in_its_own_process():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "memory.py"
    out = subprocess.run([sys.executable, str(script), "--resolutions", "512x384", "--backbones", "mobilenetv2",
                          "--paths", "original,static"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| mobilenetv2")]
    assert [r[2].strip() for r in rows] == ["original", "static"]
    peaks = [float(r[3]) for r in rows]
    assert all(p > 1 for p in peaks) and rows[0][4].strip() == "1.00×"
    bad = subprocess.run([sys.executable, str(script), "--paths", "fast"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown path(s) fast" in bad.stderr
