"""tools/gpu_session.sh, the one-call script for a lent GPU machine, run here as a dry run on the CPU."""

import os
import subprocess
from pathlib import Path

from bgmatting.weights import load_model

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_session.sh"


def run(args, tmp_path, **env):
    full = {**os.environ, "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), "DEVICE": "cpu", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=600)


def test_train_step_returns_loadable_weights(corpus, tmp_path):
    options = ("steps=2 size=64 crop_min=64 crop_max=64 valid_size=64 batch_size=2 num_workers=0 log_every=1 "
               "validate_every=0 refine_sample_pixels=256 amp=false")
    done = run(["train"], tmp_path, CORPUS=str(corpus), TRAIN_OPTIONS=options, TRAIN_MINUTES="5")
    assert done.returncode == 0, done.stdout[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "session.log", "weights.safetensors"]
    model = load_model(out / "weights.safetensors")
    assert type(model).__name__ == "MattingRefine" and model.backbone_scale == 0.5
    assert "done (status 0)" in (out / "session.log").read_text()


def test_unknown_step_is_refused(tmp_path):
    done = run(["deploy"], tmp_path)
    assert done.returncode == 2 and "unknown step 'deploy'" in done.stdout


def test_a_failing_step_sets_the_exit_status(tmp_path):
    done = run(["train"], tmp_path, CORPUS=str(tmp_path / "no-corpus"))
    assert done.returncode == 1 and "done (status 1)" in done.stdout
