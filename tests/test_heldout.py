"""The held-out benchmark builder on a tiny corpus made here: groups, sizes, determinism, the group
definitions, atomic writes and the command line."""

import json
import warnings

import numpy as np
import pytest

from bgmatting.cli import main
from bgmatting.data import heldout as ho
from bgmatting.errors import BgMattingError
from bgmatting.evaluation import evaluate
from bgmatting.io import read_image, write_image

SIZES = ((36, 64), (54, 96))  # (H, W): small stand-ins for 1280x720 and 1920x1080


def _person(h, w, truncated):
    """A soft-edged head and body; ``truncated`` runs the body off the bottom of the cutout."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    head = 1 - np.hypot((yy - 0.2 * h) / (0.12 * h), (xx - w / 2) / (0.15 * w))
    body_bottom = h * (1.3 if truncated else 0.95)
    body = 1 - np.hypot((yy - 0.62 * h) / (body_bottom - 0.62 * h), (xx - w / 2) / (0.35 * w))
    pha = np.clip(np.maximum(head, body) * 6, 0, 1)
    pha[: int(0.06 * h)] = 0
    fgr = np.stack([0.8 * np.ones_like(yy), 0.3 + 0.4 * yy / h, 0.2 + 0.5 * xx / w], axis=2)
    return fgr * (pha[..., None] > 0), pha


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8, 3)).astype(np.float32)
    import cv2

    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * 0.8 + 0.1, 0, 1)


def make_corpus(root):
    valid = root / "valid"
    for i, (h, w, truncated) in enumerate([(60, 40, False), (50, 44, True)]):
        fgr, pha = _person(h, w, truncated)
        write_image(valid / "fgr" / "people" / f"p{i}.png", fgr)
        write_image(valid / "pha" / "people" / f"p{i}.png", pha)
    for i, (h, w) in enumerate([(80, 120), (90, 70), (60, 100)]):
        write_image(valid / "backgrounds" / ("photos" if i < 2 else "more") / f"b{i}.jpg", _photo(h, w, i))
    write_image(valid / "backgrounds" / "synthetic" / "s0.jpg", _photo(80, 120, 9))  # never used
    write_image(valid / "fgr" / "synthetic" / "f0.png", np.ones((20, 20, 3), np.float32))  # never used
    write_image(valid / "pha" / "synthetic" / "f0.png", np.ones((20, 20), np.float32))
    return root


def build(corpus, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the tiny corpus has fewer people than intended
        return ho.build_heldout(corpus, out, sizes=SIZES, progress=False, **{"cases": 24, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    return build(corpus, tmp_path_factory.mktemp("h") / "heldout")


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def _by_name(root):
    return {c["name"]: c for c in _manifest(root)["items"]}


def test_groups_sizes_and_layout(corpus, built):
    items = _manifest(built)["items"]
    assert len(items) == 24
    for group in ho.GROUPS:
        mine = [c for c in items if c["group"] == group]
        assert len(mine) == 4 and all(c["name"].startswith(group + "/") for c in mine)
        assert sorted((c["height"], c["width"]) for c in mine) == [SIZES[0]] * 3 + [SIZES[1]]
    assert {c["background"] for c in items} == {"photos/b0", "photos/b1", "more/b2"}  # no synthetic ones
    assert {c["person"] for c in items} == {"people/p0", "people/p1"}
    names = sorted(c["name"] for c in items)
    for kind in ("src", "bgr", "pha", "fgr"):
        files = sorted(p.relative_to(built / kind).with_suffix("").as_posix() for p in (built / kind).rglob("*.png"))
        assert files == names
    for c in items:
        img = read_image(built / "src" / f"{c['name']}.png")
        assert img.shape == (c["height"], c["width"], 3)
        pha = read_image(built / "pha" / f"{c['name']}.png", "L")
        assert 0.05 < pha.mean() < 0.9  # a large subject, never the whole frame
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_warns_below_the_intended_minimum(corpus, tmp_path):
    with pytest.warns(UserWarning, match="at least 4 and 8"):
        ho.build_heldout(corpus, tmp_path / "h", cases=6, sizes=SIZES, progress=False)


def test_deterministic_per_seed(corpus, built, tmp_path):
    again = build(corpus, tmp_path / "again")
    other = build(corpus, tmp_path / "other", seed=1)
    assert _manifest(again)["items"] == _manifest(built)["items"]
    assert _manifest(other)["items"] != _manifest(built)["items"]
    for kind in ("src", "bgr", "pha"):
        for p in (built / kind).rglob("*.png"):
            assert p.read_bytes() == (again / kind / p.relative_to(built / kind)).read_bytes()
    # a case's images follow from the case alone
    sources = ho.find_sources(corpus)
    case = _manifest(built)["items"][5]
    a, b = ho.render_case(case, sources), ho.render_case(case, sources)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_group_parameters_within_their_definitions(corpus):
    sources = ho.find_sources(corpus)
    items = [c for seed in range(4) for c in ho.plan_heldout(sources, cases=120, seed=seed, sizes=SIZES)]
    params = {g: [c["params"] for c in items if c["group"] == g] for g in ho.GROUPS}
    assert all(len(v) == 80 for v in params.values())
    assert all(p == {} for p in params["none"])
    assert all(set(p) == {"misalign", "exposure", "noise"} for p in params["combo"])
    for p in params["misalign"] + params["combo"]:
        m = p["misalign"]
        assert abs(m["rotation_deg"]) <= 1.0 and abs(m["shift_x"]) <= 0.01 and abs(m["shift_y"]) <= 0.01
        assert 0.99 <= m["scale"] <= 1.01
    for p in params["noise"] + params["combo"]:
        assert 0.01 <= p["noise"]["sigma_src"] <= 0.03 and 0.01 <= p["noise"]["sigma_bgr"] <= 0.03
    for p in params["exposure"] + params["combo"]:
        assert 0.9 <= p["exposure"]["gain"] <= 1.1 and 0.9 <= p["exposure"]["gamma"] <= 1.1
    darken = [p["shadow"]["darken"] for p in params["shadow"]]
    assert min(darken) >= 0.2 and max(darken) <= 0.5 and max(darken) - min(darken) > 0.2  # spread over the range
    assert set(params["misalign"][0]) == {"misalign"} and set(params["shadow"][0]) == {"shadow"}


def _case_images(corpus, built, name):
    case = _by_name(built)[name]
    ref = ho.render_case(case, ho.find_sources(corpus))
    files = {k: read_image(built / k / f"{name}.png", "L" if k == "pha" else "RGB")
             for k in ("src", "bgr", "pha", "fgr")}
    return case, ref, files


def _plain_composite(ref):
    return ref["pha"][..., None] * ref["fgr"] + (1 - ref["pha"][..., None]) * ref["clean"]


def test_written_files_are_the_rendered_case(corpus, built):
    for name in list(_by_name(built))[::5]:
        _, ref, files = _case_images(corpus, built, name)
        for k in files:
            assert np.abs(files[k] - ref[k]).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("group", ho.GROUPS)
def test_each_group_is_what_it_says(corpus, built, group):
    names = [n for n in _by_name(built) if n.startswith(group + "/")]
    q = 1 / 255 + 1e-6
    for name in names:
        case, ref, files = _case_images(corpus, built, name)
        src, bgr, pha = files["src"], files["bgr"], files["pha"]
        free = pha == 0  # pixels without the subject
        assert free.mean() > 0.1
        plain = _plain_composite(ref)
        # the ground truth composites the source: exactly (to 8 bits) where nothing was perturbed
        if group in ("none", "misalign", "exposure"):
            assert np.abs(src - plain).max() <= q
        if group == "none":
            assert np.array_equal(bgr[free], src[free])
            assert np.abs(bgr - ref["clean"]).max() <= q / 2
        elif group == "misalign":
            p = case["params"]["misalign"]
            assert np.abs(bgr - ho.misalign(ref["clean"], **p)).max() <= q / 2
            assert np.abs(bgr - ref["clean"]).max() > 0.02
        elif group == "exposure":
            p = case["params"]["exposure"]
            assert np.abs(bgr - ho.expose(ref["clean"], **p)).max() <= q / 2
        elif group == "noise":
            p = case["params"]["noise"]
            for img, clean, sigma in ((src, plain, p["sigma_src"]), (bgr, ref["clean"], p["sigma_bgr"])):
                diff = (img - clean)[(clean > 0.1) & (clean < 0.9)]  # away from clipping
                assert 0.7 * sigma < diff.std() < 1.3 * sigma + 0.002
        elif group == "shadow":
            assert np.abs(bgr - ref["clean"]).max() <= q / 2  # the shot is unshadowed
            assert (src <= plain + q).all()  # the source only gets darker ...
            assert np.abs(src - plain)[pha == 1].max() <= q  # ... and not on the subject
            ratio = (src[free] + 0.5 / 255) / (plain[free] + 0.5 / 255)
            dark = case["params"]["shadow"]["darken"]
            assert ratio.min() >= 1 - dark - 0.05  # at most the drawn 20-50 %
            assert (ratio < 0.97).any()  # and the shadow shows beside the subject
        elif group == "combo":
            p = case["params"]
            assert set(p) == {"misalign", "exposure", "noise"}
            expected = ho.expose(ho.misalign(ref["clean"], **p["misalign"]), **p["exposure"])
            diff = (bgr - expected)[(expected > 0.1) & (expected < 0.9)]
            assert 0.7 * p["noise"]["sigma_bgr"] < diff.std() < 1.3 * p["noise"]["sigma_bgr"] + 0.002


def test_placement(built):
    """Whole cutouts sit inside the frame (sometimes cut by its bottom); cut-off ones always run off its bottom."""
    items = _manifest(built)["items"]
    for case in items:
        pha = read_image(built / "pha" / f"{case['name']}.png", "L")
        assert pha[:, 0].max() == 0 and pha[:, -1].max() == 0 and pha[0].max() == 0  # cut by no side or top
        assert (pha[-1].max() > 0.5) == case["placement"]["cut_bottom"]
        if case["person"] == "people/p1":  # its body runs off the cutout's bottom
            assert case["placement"]["cut_bottom"]
    lefts = [c["placement"]["left"] / c["width"] for c in items if c["person"] == "people/p0"]
    assert max(lefts) - min(lefts) > 0.1  # horizontal variation
    cuts = [c["placement"]["cut_bottom"] for c in items if c["person"] == "people/p0"]
    assert any(cuts) and not all(cuts)


def test_refuses_to_overwrite(corpus, tmp_path):
    out = build(corpus, tmp_path / "h", cases=6)
    before = _manifest(out)["items"]
    with pytest.raises(BgMattingError, match="already holds a held-out set"):
        build(corpus, out, cases=6, seed=3)
    assert _manifest(out)["items"] == before
    build(corpus, out, cases=6, seed=3, overwrite=True)
    assert _manifest(out)["seed"] == 3 and _manifest(out)["items"] != before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BgMattingError, match="no held-out set"):
        build(corpus, tmp_path / "mine", cases=6, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", "mine"]  # nothing half-written left


def test_bad_options(corpus, tmp_path):
    for cases in (0, 7, 40, -6):
        with pytest.raises(BgMattingError, match="multiple of 6"):
            build(corpus, tmp_path / "x", cases=cases)
    with pytest.raises(BgMattingError, match="seed"):
        build(corpus, tmp_path / "x", seed=-1)
    with pytest.raises(BgMattingError, match="does not exist"):
        build(tmp_path / "nowhere", tmp_path / "x")
    (tmp_path / "empty" / "valid").mkdir(parents=True)
    with pytest.raises(BgMattingError, match="no held-out people"):
        build(tmp_path / "empty", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_some_groups_from_the_train_split(corpus, built, tmp_path):
    # a validation set for training-time choices: the training people and photographs, only the moved shots
    import shutil

    train_only = tmp_path / "corpus"
    shutil.copytree(corpus / "valid", train_only / "train")
    assert main(["data", "heldout", "--corpus", str(train_only), "--out", str(tmp_path / "tv"), "--split", "train",
                 "--groups", "combo,misalign", "--cases", "8", "-q"]) == 0
    manifest = _manifest(tmp_path / "tv")
    assert manifest["split"] == "train" and list(manifest["groups"]) == ["misalign", "combo"]
    # each group keeps the cases the full set has (same people and photographs here, so the same cases)
    full = [c for c in ho.plan_heldout(ho.find_sources(corpus), cases=24) if c["group"] in ("misalign", "combo")]
    assert manifest["items"] == full
    files = sorted(p.relative_to(tmp_path / "tv" / "src").parts[0] for p in (tmp_path / "tv" / "src").rglob("*.png"))
    assert files == ["combo"] * 4 + ["misalign"] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the held-out minimum of people and photographs is not asked of train
        ho.build_heldout(train_only, tmp_path / "tv2", cases=2, sizes=SIZES, groups="misalign", split="train",
                         progress=False)
    with pytest.raises(BgMattingError, match="no held-out people"):
        build(train_only, tmp_path / "x")  # the default split is the held-out one
    for groups in ("", "misalign,nonsense"):
        with pytest.raises(BgMattingError, match="groups must be some of"):
            build(corpus, tmp_path / "x", groups=groups)
    with pytest.raises(BgMattingError, match="multiple of 2"):
        build(corpus, tmp_path / "x", groups=["misalign", "combo"], cases=7)
    with pytest.raises(BgMattingError, match="split must be"):
        ho.find_sources(corpus, "test")


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["data", "heldout", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bgmatting: error:") and err.count("\n") == 1 and "data prepare" in err


def test_scored_by_group_with_eval(corpus, built, tmp_path, capsys):
    """The user's commands: matte keeps the <group>/ folders, eval reports the means per group."""
    from bgmatting import MattingRefine, save_weights

    from helpers import randomize_

    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320))
    weights = save_weights(model, tmp_path / "w.safetensors")
    out = tmp_path / "out"
    assert main(["matte", str(built / "src"), "--bgr", str(built / "bgr"), "-o", str(out), "--outputs", "pha",
                 "--weights", str(weights), "--no-bgr-check", "-q"]) == 0
    assert main(["eval", "--data", str(built), "--predictions", str(out), "--trimap-mse", "--json",
                 str(tmp_path / "r.json"), "-q"]) == 0
    table = capsys.readouterr().out
    assert "mean by group:" in table and all(f"{g}/ (4)" in table for g in ho.GROUPS)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert sorted(doc["groups"]) == sorted(ho.GROUPS) and "trimap_mse" in doc["mean"]
    # and evaluate's own run of a model on the set groups the same way
    report = evaluate(built, matter=lambda src, bgr: type("R", (), {"pha": np.abs(src - bgr).max(2)})(),
                      progress=False)
    assert sorted(report.groups()) == sorted(ho.GROUPS)


def test_benchmark_script_prints_each_case_per_method(corpus, built, tmp_path):
    """benchmarks/heldout.py --per-case: one row per case, one column per model (here the same weights twice)."""
    import subprocess
    import sys
    from pathlib import Path

    from bgmatting import MattingRefine, save_weights

    from helpers import randomize_

    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320))
    weights = save_weights(model, tmp_path / "w.safetensors")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout.py"
    out = subprocess.run([sys.executable, str(script), "--corpus", str(corpus), "--heldout", str(built), "--no-keyer",
                          "--weights", str(weights), "--weights", str(weights), "--per-case"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("case (whole-image MSE x 1000)"))
    rows = [line.split() for line in lines[start + 1:start + 1 + len(_manifest(built)["items"])]]
    names = {c["name"] for c in _manifest(built)["items"]}  # <group>/<case>
    assert {r[0] for r in rows} == names
    assert all(len(r) == 3 and r[1] == r[2] and float(r[1]) >= 0 for r in rows)  # the same model gives the same MSE
