"""`bgmatting matte` and `bgmatting models` as a user runs them: outputs, pairing, and every kind of bad input."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from bgmatting import MattingBase, MattingRefine, save_weights
from bgmatting.cli import main

from helpers import png_header_only, randomize_


def _scene(h, w, kind=0):
    """A smooth, structured test scene; ``kind`` picks an unrelated one."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    f = (3.0, 5.0, 7.0) if kind == 0 else (11.0, 2.0, 13.0)
    rgb = [0.5 + 0.4 * np.sin(fi * np.pi * (x + (0.3 + i) * y * (1 if kind == 0 else -1))) for i, fi in enumerate(f)]
    return np.stack(rgb, axis=2)


def _img(path, h=20, w=28, seed=0):
    """seed 0: the scene with a subject (a rectangle) in front; other seeds: the empty scene, with sensor noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = _scene(h, w)
    if seed == 0:
        img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (0.9, 0.2, 0.3)
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path


def _unrelated(path, h=20, w=28):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((_scene(h, w, kind=1) * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(save_weights(randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320)), path))


def run(*args):
    return main([str(a) for a in args])


def test_matte_writes_every_output(tmp_path, weights, capsys):
    src, bgr = _img(tmp_path / "in" / "photo.jpg"), _img(tmp_path / "in" / "plate.jpg", seed=1)
    out = tmp_path / "out"
    assert run("matte", src, "--bgr", bgr, "-o", out, "--weights", weights, "--outputs", "com,pha,fgr,err,ref,mask",
               "--refine-mode", "full", "-q") == 0
    modes = {k: Image.open(out / k / "photo.png").mode for k in ("com", "pha", "fgr", "err", "ref", "mask")}
    assert modes == {"com": "RGBA", "pha": "L", "fgr": "RGB", "err": "L", "ref": "L", "mask": "L"}
    assert Image.open(out / "pha" / "photo.png").size == (28, 20)
    mask = np.asarray(Image.open(out / "mask" / "photo.png"))
    assert set(np.unique(mask)) <= {0, 255}
    ref = np.asarray(Image.open(out / "ref" / "photo.png"))
    assert (ref == 255).all()  # full refinement
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "o2", "--weights", weights, "--target-bgr", "#00ff00",
               "--pha-16bit", "-q") == 0
    assert Image.open(tmp_path / "o2" / "com" / "photo.png").mode == "RGB"
    assert Image.open(tmp_path / "o2" / "pha" / "photo.png").mode.startswith("I")


def test_folders_pair_by_relative_path(tmp_path, weights):
    for rel in ("a/1.jpg", "a/2.png", "b/3.jpg"):
        _img(tmp_path / "src" / rel)
        _img((tmp_path / "bgr" / rel).with_suffix(".png"), seed=2)
    assert run("matte", tmp_path / "src", "--bgr", tmp_path / "bgr", "-o", tmp_path / "out", "--weights", weights,
               "--outputs", "pha", "-q") == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["pha/a/1.png", "pha/a/2.png", "pha/b/3.png"]


def test_missing_backgrounds_are_listed_before_any_work(tmp_path, weights, capsys):
    _img(tmp_path / "src" / "1.jpg")
    _img(tmp_path / "src" / "2.jpg")
    _img(tmp_path / "bgr" / "1.jpg")
    assert run("matte", tmp_path / "src", "--bgr", tmp_path / "bgr", "-o", tmp_path / "out", "--weights", weights) == 2
    err = capsys.readouterr().err
    assert "2.jpg" in err and "no background" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_and_never_writes_onto_inputs(tmp_path, weights, capsys):
    src, bgr = _img(tmp_path / "photo.jpg"), _img(tmp_path / "plate.jpg", seed=1)
    args = ("matte", src, "--bgr", bgr, "-o", tmp_path / "out", "--weights", weights, "-q")
    assert run(*args) == 0
    before = (tmp_path / "out" / "pha" / "photo.png").read_bytes()
    assert run(*args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "pha" / "photo.png").read_bytes() == before
    assert run(*args, "--overwrite") == 0
    inside = _img(tmp_path / "pha" / "photo.png")  # an input where the output would go
    data = inside.read_bytes()
    assert run("matte", inside, "--bgr", bgr, "-o", tmp_path, "--weights", weights, "--overwrite", "-q") == 2
    assert "overwrite an input" in capsys.readouterr().err and inside.read_bytes() == data


@pytest.mark.parametrize("case,message", [
    ("missing_src", "does not exist"),
    ("corrupt_src", "not an image"),
    ("mismatched_size", "same view"),
    ("bad_scale", "backbone scale"),
    ("bad_outputs", "unknown output"),
    ("bad_colour", "not a colour"),
    ("bad_weights", "not a weights file"),
    ("base_with_refine_flag", "MattingBase"),
    ("not_image_suffix", "not an image file"),
    ("count_mismatch", "backgrounds"),
    ("output_is_file", "not a folder"),
    ("bad_device", "unknown device"),
    ("graph_on_cpu", "needs a CUDA device"),
    ("bench_bad_resolution", "not a resolution"),
    ("bench_bad_backend", "unknown backend"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, weights, capsys, case, message):
    src, bgr = _img(tmp_path / "s.jpg"), _img(tmp_path / "b.jpg", seed=1)
    out = tmp_path / "out"
    base = tmp_path / "base.pth"
    torch.save(MattingBase("mobilenetv2").state_dict(), base)
    args = {
        "missing_src": ("matte", tmp_path / "nope.jpg", "--bgr", bgr, "-o", out, "--weights", weights),
        "corrupt_src": ("matte", (tmp_path / "c.png", (tmp_path / "c.png").write_bytes(b"xx"))[0], "--bgr", bgr,
                        "-o", out, "--weights", weights),
        "mismatched_size": ("matte", src, "--bgr", _img(tmp_path / "sq.jpg", 30, 30), "-o", out, "--weights", weights),
        "bad_scale": ("matte", src, "--bgr", bgr, "-o", out, "--backbone-scale", "5/4"),
        "bad_outputs": ("matte", src, "--bgr", bgr, "-o", out, "--outputs", "pha,alpha", "--weights", weights),
        "bad_colour": ("matte", src, "--bgr", bgr, "-o", out, "--target-bgr", "#zz0000", "--weights", weights),
        "bad_weights": ("matte", src, "--bgr", bgr, "-o", out, "--weights", src),
        "base_with_refine_flag": ("matte", src, "--bgr", bgr, "-o", out, "--weights", base, "--refine-mode", "full"),
        "not_image_suffix": ("matte", (tmp_path / "x.txt", (tmp_path / "x.txt").write_text("x"))[0], "--bgr", bgr,
                             "-o", out),
        "count_mismatch": ("matte", src, src, src, "--bgr", bgr, bgr, "-o", out),
        "output_is_file": ("matte", src, "--bgr", bgr, "-o", src, "--weights", weights),
        "bad_device": ("matte", src, "--bgr", bgr, "-o", out, "--weights", weights, "--device", "tpu7"),
        "graph_on_cpu": ("matte", src, "--bgr", bgr, "-o", out, "--weights", weights, "--device", "cpu",
                         "--backend", "graph"),
        "bench_bad_resolution": ("bench", "--weights", weights, "--resolution", "fullhd"),
        "bench_bad_backend": ("bench", "--weights", weights, "--backend", "reference,tensorrt"),
    }[case]
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(out.rglob("*.png")) if out.exists() else True


def test_models_and_version(capsys):
    assert run("models") == 0
    listing = capsys.readouterr().out
    assert "mobilenetv2 (default)" in listing and "resnet50" in listing
    assert run("--version") == 0 and "bgmatting" in capsys.readouterr().out


def test_console_script_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bgmatting", "matte", str(tmp_path / "none.jpg"), "--bgr",
                           str(tmp_path / "none.jpg"), "-o", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("bgmatting: error:") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bgmatting", "matte", "--frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def _matte_dataset(root, n=2):
    rng = np.random.default_rng(5)
    for i in range(n):
        pha = np.zeros((20, 28), np.uint8)
        pha[5:15, 8:20] = 255
        for kind, arr in (("pha", pha), ("fgr", rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)),
                          ("bgr", rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))):
            (root / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / kind / f"{i}.png")
    return root


def test_eval_command(tmp_path, weights, capsys):
    data = _matte_dataset(tmp_path / "data")  # fgr + pha + a background pool: composited with a fixed seed
    assert run("eval", "--data", data, "--weights", weights, "--csv", tmp_path / "r.csv", "--json", tmp_path / "r.json",
               "--save-predictions", tmp_path / "pred", "-q") == 0
    table = capsys.readouterr().out
    assert "SAD" in table and "mean" in table.lower() and "0" in table
    assert (tmp_path / "r.csv").read_text().count("\n") >= 3
    import json
    saved = json.loads((tmp_path / "r.json").read_text())
    assert "mean" in json.dumps(saved)
    # the written predictions score the same when evaluated from disk
    assert run("eval", "--data", data, "--predictions", tmp_path / "pred", "--json", tmp_path / "p.json", "-q") == 0
    assert json.loads((tmp_path / "p.json").read_text())["mean"]["sad"] == pytest.approx(saved["mean"]["sad"], rel=0.05)
    (data / "pha" / "1.png").unlink()
    assert run("eval", "--data", data, "--weights", weights, "-q") == 2
    err = capsys.readouterr().err
    assert "1" in err and err.count("\n") == 1


def test_data_prepare_rejects_unknown_sources_before_downloading(tmp_path, capsys):
    assert run("data", "prepare", "--out", tmp_path / "corpus", "--sources", "wallpapers,gnome-backgrounds") == 2
    err = capsys.readouterr().err
    assert "gnome-backgrounds" in err and err.count("\n") == 1
    assert not (tmp_path / "corpus").exists()


def test_serve_reports_bad_weights_before_binding(tmp_path, capsys):
    pytest.importorskip("fastapi")
    assert run("serve", "--port", "0", "--weights", tmp_path / "missing.pth") == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_video_command(tmp_path, weights, capsys):
    from bgmatting.io.video import VideoReader

    _moving_square_video(tmp_path / "clip.mp4", n=5)
    _img(tmp_path / "plate.png", 32, 48, seed=1)
    out = tmp_path / "out"
    assert run("video", tmp_path / "clip.mp4", "--bgr", tmp_path / "plate.png", "-o", out, "--outputs", "com,pha",
               "--weights", weights, "--batch", "2", "--preset", "ultrafast", "-q") == 0
    with VideoReader(out / "pha.mp4") as reader:
        frames = list(reader)
    assert len(frames) == 5 and frames[0].image.shape[:2] == (32, 48)
    assert all(b"subme=0" in (out / f).read_bytes() for f in ("pha.mp4", "com.mp4"))  # x264's ultrafast settings
    assert run("video", tmp_path / "clip.mp4", "--bgr", tmp_path / "plate.png", "-o", out, "--weights", weights) == 2
    assert "overwrite" in capsys.readouterr().err


def _moving_square_video(path, n=12, h=32, w=48):
    from bgmatting.io.video import VideoWriter

    background = (_scene(h, w) * 255).round().astype(np.uint8)
    writer = VideoWriter(path, (h, w), format="mp4", channels=3, rate=10, crf=0)
    for i in range(n):
        frame = background.copy()
        x = 2 + i * 3
        frame[8:20, x:x + 10] = (250, 20, 20)
        writer.write(frame)
    writer.close()
    return background


def test_plate_and_webcam_commands(tmp_path, weights, capsys):
    background = _moving_square_video(tmp_path / "walk.mp4")
    assert run("plate", tmp_path / "walk.mp4", "-o", tmp_path / "plate.png", "--coverage-map", tmp_path / "cov.png",
               "--no-align", "--no-refine", "-q") == 0
    plate = np.asarray(Image.open(tmp_path / "plate.png"), dtype=np.float32)
    assert plate.shape == background.shape
    from bgmatting.io.video import VideoReader

    with VideoReader(tmp_path / "walk.mp4") as reader:
        first = next(iter(reader)).image.astype(np.float32)
    square = (slice(8, 20), slice(2, 12))  # where the subject is in the first frame
    assert np.abs(plate[square] - background[square]).mean() < 0.3 * np.abs(first[square] - background[square]).mean()
    assert "never seen" in capsys.readouterr().out
    assert Image.open(tmp_path / "cov.png").size == (48, 32)
    assert run("video", tmp_path / "walk.mp4", "--bgr", "auto", "-o", tmp_path / "auto.mp4", "--outputs", "pha",
               "--weights", weights, "-q") == 0
    assert (tmp_path / "auto.mp4").stat().st_size > 0
    capsys.readouterr()  # a random-weight model sees the subject everywhere: the plate warning is expected
    assert run("webcam", "--camera", tmp_path / "walk.mp4", "--weights", weights, "--no-display",
               "--max-frames", "3") == 0
    assert run("webcam", "--camera", tmp_path / "none.mp4", "--weights", weights, "--no-display") == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_matte_align_flag_and_background_check(tmp_path, weights, capsys):
    src, plate, bgr = _img(tmp_path / "s.png", 96, 128), _img(tmp_path / "p.png", 96, 128, 1), \
        _unrelated(tmp_path / "b.png", 96, 128)
    assert run("matte", src, "--bgr", plate, "-o", tmp_path / "ok", "--weights", weights, "--align", "-q") == 0
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "bad", "--weights", weights, "-q") == 2
    err = capsys.readouterr().err
    assert "--target-bgr" in err and err.count("\n") == 1
    assert "use --align" not in err  # matte aligned the shot already (its default)
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "bad", "--weights", weights, "--no-align", "-q") == 2
    assert "If the camera moved between the shots, use --align" in capsys.readouterr().err
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "bad", "--weights", weights, "--no-bgr-check", "-q") == 0


def test_matte_aligns_the_background_shots_unless_told_not_to(tmp_path, weights, monkeypatch, capsys):
    # photos are often hand-held: `matte` aligns by default (a shot that lines up is kept as it is), `--no-align`
    # uses the shots as they are; `video` aligns only when asked (a static camera is the rule there)
    import bgmatting.align

    calls = []
    real = bgmatting.align.align_background

    def counting(bgr, src, **options):
        calls.append(options.get("warn", True))
        return real(bgr, src, **options)

    monkeypatch.setattr(bgmatting.align, "align_background", counting)
    src, plate = _img(tmp_path / "s.png", 96, 128), _img(tmp_path / "p.png", 96, 128, 1)
    base = ("matte", src, "--bgr", plate, "--weights", weights, "--outputs", "pha", "-q")
    assert run(*base, "-o", tmp_path / "default") == 0 and calls == [False]  # no warning when not asked for
    assert run(*base, "-o", tmp_path / "explicit", "--align") == 0 and calls == [False, True]
    assert run(*base, "-o", tmp_path / "off", "--no-align") == 0 and calls == [False, True]
    assert run(*base, "-o", tmp_path / "both", "--align", "--no-align") == 2
    assert "not allowed with" in capsys.readouterr().err
    from bgmatting.cli import build_parser

    assert build_parser().parse_args(["video", "v.mp4", "--bgr", "b.png", "-o", "o.mp4"]).align is False


@pytest.mark.parametrize("backend", ("eager", "onnxruntime"))
def test_matte_backends_write_the_reference_result(tmp_path, weights, backend):
    pytest.importorskip("onnxruntime")
    src, bgr = _img(tmp_path / "s.png", 64, 80), _img(tmp_path / "b.png", 64, 80, seed=1)
    for name in ("reference", backend):
        assert run("matte", src, "--bgr", bgr, "-o", tmp_path / name, "--weights", weights, "--outputs", "pha",
                   "--backend", name, "--device", "cpu", "-q") == 0
    expected = np.asarray(Image.open(tmp_path / "reference" / "pha" / "s.png"), dtype=int)
    got = np.asarray(Image.open(tmp_path / backend / "pha" / "s.png"), dtype=int)
    assert np.abs(expected - got).max() <= 1  # 8-bit rounding of alphas equal within 1e-4


@pytest.fixture
def made(monkeypatch):
    """Every :class:`~bgmatting.Matter` the command makes, in order."""
    import bgmatting.pipeline

    matters = []
    real = bgmatting.pipeline.Matter.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        matters.append(self)

    monkeypatch.setattr(bgmatting.pipeline.Matter, "__init__", spy)
    return matters


def test_matte_backbone_scale_1_supersamples_and_writes_the_frame_size(tmp_path, weights, made):
    src, bgr = _img(tmp_path / "s.png", 36, 52), _img(tmp_path / "b.png", 36, 52, seed=1)
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "o", "--weights", weights, "--outputs", "pha",
               "--backbone-scale", "1", "--device", "cpu", "-q") == 0
    assert [(m.backbone_scale, m.supersample) for m in made] == [(1, 2)]
    assert Image.open(tmp_path / "o" / "pha" / "s.png").size == (52, 36)


def test_matte_picks_the_backbone_scale_by_frame_size_unless_told(tmp_path, weights, made):
    src, bgr = _img(tmp_path / "s.png", 36, 52), _img(tmp_path / "b.png", 36, 52, seed=1)
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "o", "--weights", weights, "--outputs", "pha",
               "--device", "cpu", "-q") == 0  # auto by default
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "o2", "--weights", weights, "--outputs", "pha",
               "--backbone-scale", "auto", "--device", "cpu", "-q") == 0
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "o3", "--weights", weights, "--outputs", "pha",
               "--backbone-scale", "1/4", "--device", "cpu", "-q") == 0
    # 52 px wide (under 1280): twice the weights' 1/2, the frame enlarged 2x; 1/4 when told
    assert [(m.auto_scale, m.backbone_scale, m.supersample) for m in made] == [(True, 1, 2), (True, 1, 2),
                                                                                (False, 0.25, 1)]
    assert Image.open(tmp_path / "o" / "pha" / "s.png").size == (52, 36)


def test_bench_prints_a_table_with_every_backend(weights, capsys):
    assert run("bench", "--weights", weights, "--resolution", "96x64,64x48", "--device", "cpu", "--frames", "1",
               "--warmup", "0", "--backend", "reference,eager") == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| backbone | resolution |") and len(table) == 2 + 4
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [(r[1], r[6]) for r in rows] == [("96x64", "reference"), ("96x64", "eager"), ("64x48", "reference"),
                                            ("64x48", "eager")]
    assert rows[0][-3] == "(reference)" and float(rows[1][-3]) <= 1e-4 and rows[1][-1].endswith("x")
    assert rows[1][-2] == "0"  # the same patches refined
    assert all(r[2] == "example" for r in rows)  # the input column
    assert all(float(r[8]) > 0 for r in rows)  # fps


def test_help_and_usage_errors_do_not_load_pytorch():
    code = textwrap.dedent("""
        import sys
        import bgmatting, bgmatting.cli
        rcs = [bgmatting.cli.main(a) for a in (["--help"], ["video", "--help"], ["matte", "x.png"],
                                            ["video", "a.mp4", "--bgr", "b.png", "-o", "c.mp4", "--preset", "no"])]
        print(rcs, "torch" in sys.modules)
        print(bgmatting.Matter.__name__, bgmatting.video.convert_video is bgmatting.convert_video,
              "torch" in sys.modules)
        print("matte_images" in dir(bgmatting), hasattr(bgmatting, "no_such_name"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-3:] == ["[0, 0, 2, 2] False", "Matter True True", "True False"]


def test_matte_runs_images_on_parallel_workers_with_the_same_result(tmp_path, weights):
    import threading

    from bgmatting import matte_images
    from bgmatting.results import MatteResult

    for i in range(5):
        _img(tmp_path / "src" / f"{i}.jpg", seed=0)
    _img(tmp_path / "plate.png", seed=1)
    for w in ("1", "2"):
        assert run("matte", tmp_path / "src", "--bgr", tmp_path / "plate.png", "-o", tmp_path / f"w{w}", "--weights",
                   weights, "--workers", w, "-q") == 0
    for i in range(5):
        a, b = (np.asarray(Image.open(tmp_path / f"w{w}" / "pha" / f"{i}.png")).astype(int) for w in ("1", "2"))
        assert np.abs(a - b).max() <= 1  # float rounding of one thread against two

    class Overlapping:  # its first two calls must overlap: each waits for the other
        device = torch.device("cpu")

        def __init__(self):
            self.together, self.lock = threading.Barrier(2, timeout=20), threading.Lock()
            self.threads, self.calls = set(), 0

        def __call__(self, src, bgr):
            with self.lock:
                self.threads.add(threading.get_ident())
                self.calls += 1
                first_two = self.calls <= 2
            if first_two:
                self.together.wait()  # BrokenBarrierError (after 20 s) unless the two calls overlap
            pha = np.ones(src.shape[:2], np.float32)
            return MatteResult(pha=pha, fgr=src / 255.0, err=0 * pha, ref=0 * pha)

    stub = Overlapping()
    jobs = matte_images([tmp_path / "src"], [tmp_path / "plate.png"], tmp_path / "stub", lambda: stub,
                        outputs="pha", check_bgr=False, progress=False, workers=2)
    assert len(jobs) == 5 and stub.calls == 5 and len(stub.threads) == 2
    assert all((tmp_path / "stub" / "pha" / f"{i}.png").exists() for i in range(5))
    assert run("matte", tmp_path / "src", "--bgr", tmp_path / "plate.png", "-o", tmp_path / "w0", "--workers", "0",
               "-q") == 2


@pytest.mark.parametrize("argv, message", [
    (["video", "frames", "--bgr", "b.png", "-o", "o.mp4", "--fps", "nan"], "finite number"),
    (["video", "frames", "--bgr", "b.png", "-o", "o.mp4", "--fps", "inf"], "finite number"),
    (["serve", "--max-upload-mb", "nan"], "finite number"),
    (["serve", "--max-upload-mb", "inf"], "finite number"),
    (["matte", "s.png", "--bgr", "b.png", "-o", "o", "--refine-threshold=-inf"], "finite number"),
    (["serve", "--port", "99999"], "to 65535"),
    (["serve", "--port=-1"], "to 65535"),
    (["serve", "--port", "http"], "not a port number"),
])
def test_absurd_numbers_are_refused_in_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0, err


def test_matte_refuses_an_image_over_the_pixel_limit_before_decoding_it(tmp_path, weights, capsys, decodes):
    bomb, out = tmp_path / "bomb.png", tmp_path / "out"
    png_header_only(bomb, 9000, 9000)  # a few hundred bytes that would decode to 243 MB (19 GB through the model)
    assert run("matte", bomb, "--bgr", bomb, "-o", out, "--weights", weights, "-q") == 2
    err = capsys.readouterr().err
    assert err == (f"bgmatting: error: '{bomb}' is 9000x9000 = 81.0 megapixels, over the limit of 40 megapixels; "
                   "raise the limit with --max-pixels N (in Python: max_pixels=N)\n")
    assert decodes == [] and not out.exists()
    # --max-pixels 0 lifts the limit: the decoder starts (and is stopped by the test)
    assert run("matte", bomb, "--bgr", bomb, "-o", out, "--weights", weights, "--max-pixels", "0", "-q") == 2
    assert "decoding stopped by the test" in capsys.readouterr().err and decodes
    src, bgr = _img(tmp_path / "s.png"), _img(tmp_path / "b.png", seed=1)
    assert run("matte", src, "--bgr", bgr, "-o", out, "--weights", weights, "--max-pixels", "100", "-q") == 2
    assert "is 28x20 = 560 pixels, over the limit of 100 pixels" in capsys.readouterr().err


@pytest.mark.parametrize("argv, line", [
    (["matte", "s.png", "-o", "out"], "bgmatting: error: matte: the following arguments are required: --bgr"),
    (["matte", "--bgr", "b.png", "-o", "out"], "bgmatting: error: matte: the following arguments are required: SRC"),
    (["data", "prepare"], "bgmatting: error: data prepare: the following arguments are required: --out"),
    (["video", "v.mp4", "--bgr", "b.png", "-o", "o.mp4", "--preset", "no"],
     "bgmatting: error: video: argument --preset: invalid choice: 'no'"),
    (["nosuch"], "bgmatting: error: argument COMMAND: invalid choice: 'nosuch'"),
])
def test_usage_errors_read_like_every_other_error(argv, line, capsys):
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1, err


@pytest.mark.parametrize("order", ["src_first", "bgr_first", "bgr_first_two_sources"])
def test_src_may_follow_bgr(tmp_path, weights, order):
    src, bgr = _img(tmp_path / "s.png"), _img(tmp_path / "b.png", seed=1)
    other = _img(tmp_path / "t.png")
    args = {"src_first": [src, "--bgr", bgr], "bgr_first": ["--bgr", bgr, src],
            "bgr_first_two_sources": ["--bgr", bgr, src, other]}[order]
    out = tmp_path / "out"
    assert run("matte", *args, "-o", out, "--weights", weights, "--outputs", "pha", "--no-bgr-check", "-q") == 0
    written = sorted(p.name for p in (out / "pha").iterdir())
    assert written == (["s.png", "t.png"] if order == "bgr_first_two_sources" else ["s.png"])


def test_bgr_values_that_could_be_split_two_ways_are_refused(tmp_path, capsys):
    names = [str(_img(tmp_path / f"{i}.png")) for i in range(4)]
    assert run("matte", "--bgr", *names, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bgmatting: error: matte: --bgr took all of {' '.join(names)} and left no SRC")
    assert err.rstrip().endswith("put the sources before --bgr") and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["plate", "missing.mp4", "-o", "p.png", "--frames", "0"], "plate: argument --frames: must be at least 1, not 0"),
    (["matte", "s.png", "--bgr", "b.png", "-o", "o", "--workers", "0"],
     "matte: argument --workers: must be at least 1"),
    (["matte", "s.png", "--bgr", "b.png", "-o", "o", "--refine-sample-pixels", "8"], "at least 16 (one 4x4 patch)"),
    (["matte", "s.png", "--bgr", "b.png", "-o", "o", "--max-pixels", "-1"], "--max-pixels: must be at least 0"),
    (["matte", "s.png", "--bgr", "b.png", "-o", "o", "--backbone-scale", "1/1000000"], "must be in [1/64, 1]"),
    (["export", "-o", "m.onnx", "--backbone-scale", "3/4"], "backbone scale must be in [1/64, 1/2], got 3/4"),
    (["bench", "--backbone-scale", "1"], "backbone scale must be in [1/64, 1/2], got 1"),
    (["video", "v.mp4", "--bgr", "b.png", "-o", "o.mp4", "--batch", "0"],
     "video: argument --batch: must be at least 1"),
    (["video", "v.mp4", "--bgr", "auto", "-o", "o.mp4", "--plate-frames", "-2"], "--plate-frames: must be at least 1"),
    (["webcam", "--max-frames", "0"], "webcam: argument --max-frames: must be at least 1"),
    (["bench", "--frames", "0"], "bench: argument --frames: must be at least 1"),
    (["bench", "--warmup", "-1"], "bench: argument --warmup: must be at least 0"),
    (["serve", "--max-pixels", "0"], "serve: argument --max-pixels: must be at least 1"),
    (["plate", "missing.mp4", "-o", "p.png", "--frames", "many"], "argument --frames: 'many' is not a whole number"),
])
def test_counts_are_checked_when_parsed_before_any_work(argv, message, capsys):
    assert run(*argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("bgmatting: error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_an_image_too_small_for_the_backbone_scale_is_a_one_line_error(tmp_path, weights, capsys, backend):
    src, bgr = tmp_path / "s.png", tmp_path / "b.png"
    Image.new("RGB", (3, 3), (200, 10, 10)).save(src)
    Image.new("RGB", (3, 3), (10, 10, 10)).save(bgr)
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "out", "--weights", weights, "--no-bgr-check",
               "--backbone-scale", "1/8", "--backend", backend, "--device", "cpu", "-q") == 2
    err = capsys.readouterr().err
    assert err == ("bgmatting: error: a 4x4 input is too small for backbone scale 1/8: the base network would see "
                   "0x0 pixels; use a larger backbone scale or a larger image\n")


def test_an_ignored_alpha_channel_is_a_one_line_warning(tmp_path, weights, capsys):
    src, bgr = tmp_path / "s.png", _img(tmp_path / "b.png", seed=1)
    rgba = np.asarray(Image.open(_img(tmp_path / "rgb.png")).convert("RGBA")).copy()
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(src)
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "out", "--weights", weights, "-q") == 0
    err = capsys.readouterr().err
    assert err == (f"bgmatting: warning: '{src}' has an alpha channel (transparency); it is ignored: the colours "
                   "stored under transparent pixels are used as they are\n")


def test_a_warning_naming_a_file_with_a_newline_stays_one_line(tmp_path, weights, capsys):
    src, bgr = tmp_path / "two\nlines.png", _img(tmp_path / "b.png", seed=1)
    Image.open(_img(tmp_path / "rgb.png")).convert("RGBA").save(src)
    assert run("matte", src, "--bgr", bgr, "-o", tmp_path / "out", "--weights", weights, "-q") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bgmatting: warning: ") and "two\\nlines.png" in err, err


def test_models_lists_the_zoo_without_pytorch():
    code = "import sys; from bgmatting.cli import main; main(['models']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "False" and lines[1].startswith("mobilenetv2 (default)")
    code = "import sys; import bgmatting.cli; bgmatting.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"
