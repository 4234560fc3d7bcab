"""The refiner's composition step: the Triton kernel against the PyTorch route, run by Triton's interpreter."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bgmatting.models.optimised.compose import compose, triton, triton_usable

CHECK = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from bgmatting.models.optimised.compose import compose_torch, compose_triton

    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for B, h, w, H, W, n, static, dtype in [(2, 9, 7, 36, 28, 20, False, torch.float32),
                                            (1, 5, 6, 20, 24, 12, True, torch.float32),
                                            (1, 17, 13, 36, 28, 0, False, torch.float32),
                                            (2, 9, 7, 36, 28, 15, True, torch.float16)]:
        coarse = (torch.rand(B, 4, h, w, generator=g) * 1.6 - 0.3).to(dtype)
        src = torch.rand(B, 3, H, W, generator=g)
        cells = torch.randperm(B * (H // 4) * (W // 4), generator=g)[:n]
        ib, rows, cols = cells // ((H // 4) * (W // 4)), cells // (W // 4) % (H // 4), cells % (W // 4)
        patches = (torch.rand(n, 4, 4, 4, generator=g) * 1.6 - 0.3).to(dtype) if n else None
        valid = torch.rand(n, generator=g) > 0.3 if static else None
        a = compose_torch(coarse.clone(), src, patches, ib, rows, cols, valid)
        b = compose_triton(coarse, src, patches, ib, rows, cols, valid)
        assert all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(a, b)), "shapes or dtypes differ"
        tol = 2e-3 if dtype == torch.float16 else 1e-6
        diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
        assert diff <= tol, (B, h, w, H, W, n, static, dtype, diff)
        worst = max(worst, diff)
    print("ok", worst)
""")


@pytest.mark.skipif(triton is None, reason="Triton is not installed")
def test_triton_kernel_equals_the_pytorch_route_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr[-3000:]


def test_compose_picks_pytorch_on_the_cpu_and_pastes_only_valid_patches(monkeypatch):
    src = torch.rand(1, 3, 8, 8)
    coarse = torch.full((1, 4, 2, 2), 0.5)
    patches = torch.ones(2, 4, 4, 4) * 0.9
    ib, rows, cols = torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1, 0])
    assert not triton_usable(src)
    pha, fgr = compose(coarse, src, patches, ib, rows, cols, valid=torch.tensor([True, False]))
    assert torch.all(pha[0, 0, :4, 4:] == 0.9) and torch.all(pha[0, 0, 4:, :4] == 0.5)  # the invalid one kept
    assert torch.all(pha[0, 0, :4, :4] == 0.5)
    assert torch.allclose(fgr[0, :, 4:, 4:], (0.5 + src[0, :, 4:, 4:]).clamp(0, 1))
    monkeypatch.setenv("BGMATTING_TRITON", "0")
    assert not triton_usable(src)


def test_compose_benchmark_runs_the_pytorch_route_on_the_cpu():
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "compose.py"
    out = subprocess.run([sys.executable, str(script), "--device", "cpu", "--resolutions", "64x48",
                          "--frames", "1", "--warmup", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 64x48")]
    assert len(rows) == 1 and "| pytorch |" in rows[0] and "| 3072 |" in rows[0]  # all 16 x 12 cells of 16 px
    assert "CUDA only" in out.stderr
