"""Dataset evaluation on tiny generated folders: both layouts, predictions, errors, reports."""

import csv
import json
import math
import shutil
import types

import numpy as np
import pytest

from bgmatting.errors import BgMattingError
from bgmatting.evaluation import EvalReport, build_benchmark, evaluate, sad
from bgmatting.io import read_image, write_image

H, W = 24, 32
NAMES = ["a", "b", "sub/c"]


def _alpha(i):
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - 12, xx - 10 - 4 * i)
    return np.clip((9 - r) / 3, 0, 1).astype(np.float32)  # a disc with a soft edge


def _write(root, folder, name, img, ext=".png"):
    write_image(root / folder / f"{name}{ext}", img)


def make_paired(root, with_fgr=True):
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        pha = _alpha(i)
        fgr = rng.random((H, W, 3)).astype(np.float32) * 0.5 + 0.5
        bgr = rng.random((H, W, 3)).astype(np.float32) * 0.4
        src = pha[..., None] * fgr + (1 - pha[..., None]) * bgr
        _write(root, "src", name, src)
        _write(root, "bgr", name, bgr, ".jpg" if i == 0 else ".png")  # extensions may differ
        _write(root, "pha", name, pha)
        if with_fgr:
            _write(root, "fgr", name, fgr)
    return root


def make_composited(root):
    rng = np.random.default_rng(1)
    for i, name in enumerate(NAMES):
        _write(root, "pha", name, _alpha(i))
        _write(root, "fgr", name, rng.random((H, W, 3)).astype(np.float32) * 0.5 + 0.5)
    _write(root, "bgr", "bg0", rng.random((40, 50, 3)).astype(np.float32) * 0.4)  # other sizes, fewer images
    _write(root, "bgr", "bg1", rng.random((10, 12, 3)).astype(np.float32) * 0.4)
    return root


class DifferenceKeyer:
    """A stand-in model: alpha from the colour difference to the background shot."""

    def __init__(self):
        self.calls = []

    def __call__(self, src, bgr):
        assert src.dtype == np.float32 and src.shape == bgr.shape == (H, W, 3)
        self.calls.append((src, bgr))
        pha = np.clip(np.abs(src - bgr).max(axis=2) * 3, 0, 1).astype(np.float32)
        return types.SimpleNamespace(pha=pha, fgr=src)


def test_paired_with_matter(tmp_path):
    data = make_paired(tmp_path / "data")
    report = evaluate(data, matter=DifferenceKeyer(), progress=False)
    assert isinstance(report, EvalReport)
    assert [r["name"] for r in report.rows] == sorted(NAMES)
    assert report.metrics == ("sad", "mse", "grad", "conn", "fgr_mse")
    assert report.info["layout"] == "paired" and report.info["source"] == "matter"
    for r in report.rows:
        assert all(r[m] >= 0 for m in report.metrics)
    mean = report.mean()
    assert mean["sad"] == pytest.approx(np.mean([r["sad"] for r in report.rows]))
    assert mean["sad"] > 0


def test_paired_without_fgr_has_no_fgr_column(tmp_path):
    data = make_paired(tmp_path / "data", with_fgr=False)
    report = evaluate(data, matter=DifferenceKeyer(), progress=False)
    assert report.metrics == ("sad", "mse", "grad", "conn")
    assert "fgr_mse" not in report.rows[0]


def test_perfect_predictions_score_zero(tmp_path):
    data = make_paired(tmp_path / "data")
    report = evaluate(data, predictions_dir=data / "pha", progress=False)  # a flat folder of gray images
    assert report.info["source"] == "predictions"
    assert report.metrics == ("sad", "mse", "grad", "conn")  # no predicted fgr
    for r in report.rows:
        assert all(r[m] == 0 for m in report.metrics)


def test_predictions_folder_with_pha_and_fgr(tmp_path):
    data = make_paired(tmp_path / "data")
    preds = tmp_path / "preds"
    for name in NAMES:
        _write(preds, "pha", name, np.zeros((H, W), np.float32))
        _write(preds, "fgr", name, read_image(data / "fgr" / f"{name}.png"))
    report = evaluate(data, predictions_dir=preds, progress=False)
    assert report.metrics[-1] == "fgr_mse"
    for r, name in zip(report.rows, sorted(NAMES)):
        assert r["fgr_mse"] == 0
        true = read_image(data / "pha" / f"{name}.png", "L")
        assert r["sad"] == pytest.approx(sad(np.zeros_like(true), true))


def test_save_predictions_round_trip(tmp_path):
    data = make_paired(tmp_path / "data")
    report = evaluate(data, matter=DifferenceKeyer(), save_predictions=tmp_path / "out", progress=False)
    for name in NAMES:
        assert (tmp_path / "out" / "pha" / f"{name}.png").is_file()
    again = evaluate(data, predictions_dir=tmp_path / "out", progress=False)
    for r1, r2 in zip(report.rows, again.rows):
        assert r2["sad"] == pytest.approx(r1["sad"], abs=H * W * 0.5 / 255 / 1000)  # 8-bit rounding


def test_composited_layout_is_deterministic(tmp_path):
    data = make_composited(tmp_path / "data")
    k1, k2, k3 = DifferenceKeyer(), DifferenceKeyer(), DifferenceKeyer()
    r1 = evaluate(data, matter=k1, seed=0, progress=False)
    r2 = evaluate(data, matter=k2, seed=0, progress=False)
    evaluate(data, matter=k3, seed=1, progress=False)
    assert r1.info["layout"] == "composited" and r1.info["seed"] == 0
    assert r1.rows == r2.rows
    assert r1.metrics[-1] == "fgr_mse"
    for (s1, b1), (s2, b2) in zip(k1.calls, k2.calls):
        assert np.array_equal(s1, s2) and np.array_equal(b1, b2)
    assert any(not np.array_equal(c1[1], c3[1]) for c1, c3 in zip(k1.calls, k3.calls))
    # the subject is composited in: where α* = 1 the source is the foreground
    fgr = read_image(data / "fgr" / "a.png")
    pha = read_image(data / "pha" / "a.png", "L")
    src = k1.calls[0][0]
    inside = pha == 1
    np.testing.assert_allclose(src[inside], fgr[inside], atol=0.2)  # up to the sensor noise


def test_build_benchmark_matches_on_the_fly(tmp_path):
    data = make_composited(tmp_path / "data")
    bench = build_benchmark(data, tmp_path / "bench", seed=0, progress=False)
    for folder in ("src", "bgr", "pha", "fgr"):
        assert sorted(p.relative_to(bench / folder).as_posix() for p in (bench / folder).rglob("*.png")) == sorted(
            f"{n}.png" for n in NAMES
        )
    keyer = DifferenceKeyer()
    evaluate(data, matter=keyer, seed=0, progress=False)
    src = read_image(bench / "src" / "a.png")
    np.testing.assert_allclose(src, keyer.calls[0][0], atol=0.6 / 255)
    with pytest.raises(BgMattingError, match="already"):
        build_benchmark(bench, tmp_path / "again", progress=False)


def test_trimap_region_reduces_the_area(tmp_path):
    data = make_paired(tmp_path / "data")
    full = evaluate(data, predictions_dir=data / "src", progress=False)  # gray of src: a poor matte
    band = evaluate(data, predictions_dir=data / "src", region="trimap", progress=False)
    assert band.info["trimap"] == "generated"
    for rf, rb in zip(full.rows, band.rows):
        assert 0 < rb["sad"] < rf["sad"]
    # user trimaps: everything unknown equals the whole image; nothing unknown gives no SAD and nan MSE
    for name in NAMES:
        _write(tmp_path, "tri_all", name, np.full((H, W), 0.5, np.float32))
        _write(tmp_path, "tri_none", name, np.ones((H, W), np.float32))
    kw = dict(predictions_dir=data / "src", region="trimap", progress=False)
    same = evaluate(data, trimap_dir=tmp_path / "tri_all", **kw)
    assert same.info["trimap"] == "files"
    assert [r["sad"] for r in same.rows] == pytest.approx([r["sad"] for r in full.rows])
    none = evaluate(data, trimap_dir=tmp_path / "tri_none", **kw)
    assert all(r["sad"] == 0 and math.isnan(r["mse"]) for r in none.rows)
    assert math.isnan(none.mean()["mse"])
    # a trimap/ folder inside the data is used by default
    (tmp_path / "tri_all").rename(data / "trimap")
    inside = evaluate(data, predictions_dir=data / "src", region="trimap", progress=False)
    assert inside.info["trimap"] == "files"
    assert [r["sad"] for r in inside.rows] == pytest.approx([r["sad"] for r in full.rows])


def test_missing_and_unmatched_files_are_listed_up_front(tmp_path):
    data = make_paired(tmp_path / "data")
    (data / "bgr" / "b.png").unlink()
    _write(data, "src", "extra", np.zeros((H, W, 3), np.float32))
    keyer = DifferenceKeyer()
    with pytest.raises(BgMattingError) as err:
        evaluate(data, matter=keyer, progress=False)
    message = str(err.value)
    assert "bgr/ lacks 1 image(s) that pha/ has: b" in message and "b" in message and "extra" in message
    assert not keyer.calls  # nothing was run


def test_missing_predictions(tmp_path):
    data = make_paired(tmp_path / "data")
    preds = tmp_path / "preds"
    _write(preds, "pha", "a", np.zeros((H, W), np.float32))
    with pytest.raises(BgMattingError, match=r"lacks 2 image\(s\) that pha/ has: b, sub/c"):
        evaluate(data, predictions_dir=preds, progress=False)


def test_prediction_size_must_match(tmp_path):
    data = make_paired(tmp_path / "data")
    preds = tmp_path / "preds"
    for name in NAMES:
        _write(preds, "pha", name, np.zeros((H, W + 1), np.float32))
    with pytest.raises(BgMattingError, match="33x24 but the ground truth is 32x24"):
        evaluate(data, predictions_dir=preds, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "either"),
        (dict(matter=DifferenceKeyer(), predictions_dir="x"), "either"),
        (dict(matter=DifferenceKeyer(), region="everything"), "region"),
        (dict(matter=DifferenceKeyer(), trimap_dir="t"), "region='trimap'"),
        (dict(matter=DifferenceKeyer(), seed=-1), "seed"),
    ],
)
def test_bad_options(tmp_path, kwargs, match):
    data = make_paired(tmp_path / "data")
    with pytest.raises(BgMattingError, match=match):
        evaluate(data, progress=False, **kwargs)


def test_bad_layouts(tmp_path):
    with pytest.raises(BgMattingError, match="does not exist"):
        evaluate(tmp_path / "nope", matter=DifferenceKeyer(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BgMattingError, match="pha/"):
        evaluate(tmp_path / "empty", matter=DifferenceKeyer(), progress=False)
    data = make_paired(tmp_path / "data")
    shutil.rmtree(data / "src")
    shutil.rmtree(data / "fgr")
    with pytest.raises(BgMattingError, match="fgr/"):
        evaluate(data, matter=DifferenceKeyer(), progress=False)
    _write(data, "pha", "a", np.zeros((H, W), np.float32), ".jpg")  # a.png and a.jpg
    with pytest.raises(BgMattingError, match="differ only by extension"):
        evaluate(data, predictions_dir=data / "pha", progress=False)


def test_report_outputs(tmp_path):
    data = make_paired(tmp_path / "data")
    report = evaluate(data, matter=DifferenceKeyer(), progress=False)
    table = report.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["name", "SAD", "MSE", "Grad", "Conn", "fgr", "MSE"]
    assert any(line.startswith("sub/c") for line in lines)
    assert lines[-2].startswith("mean (3)")
    assert len({len(line) for line in lines[2:5]}) == 1  # aligned
    assert str(report) == table

    with open(report.to_csv(tmp_path / "r" / "out.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "sad", "mse", "grad", "conn", "fgr_mse"]
    assert [r[0] for r in rows[1:]] == ["a", "b", "sub/c", "mean"]
    assert float(rows[1][1]) == report.rows[0]["sad"]
    assert float(rows[-1][2]) == pytest.approx(report.mean()["mse"])

    doc = json.loads(report.to_json(tmp_path / "out.json").read_text())
    assert doc["count"] == 3 and doc["info"]["region"] == "all"
    assert doc["images"][2]["name"] == "sub/c"
    assert doc["mean"]["conn"] == pytest.approx(report.mean()["conn"])
    assert set(doc["units"]) == set(report.metrics)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left


def test_json_writes_nan_as_null(tmp_path):
    report = EvalReport(rows=[{"name": "x", "sad": 0.0, "mse": float("nan")}], metrics=("sad", "mse"))
    doc = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert doc["images"][0]["mse"] is None and doc["mean"]["mse"] is None
    assert "nan" in report.format_table()


def test_means_by_group(tmp_path):
    rows = [{"name": f"{g}/{i}", "sad": float(i + 3 * k), "mse": float(i * i + k)}
            for k, g in enumerate(["none", "noise", "shadow"]) for i in range(k + 2)]
    report = EvalReport(rows=rows, metrics=("sad", "mse"))
    groups = report.groups()
    assert list(groups) == ["noise", "none", "shadow"]
    for g, v in groups.items():
        mine = [r for r in rows if r["name"].startswith(g + "/")]
        assert v["count"] == len(mine)
        for m in ("sad", "mse"):
            assert v["mean"][m] == pytest.approx(np.mean([r[m] for r in mine]))
    lines = report.format_table().splitlines()
    start = lines.index("mean by group:")
    assert lines[start - 2].startswith("mean (9)")
    assert [line.split()[:2] for line in lines[start + 1: start + 4]] == [["noise/", "(3)"], ["none/", "(2)"],
                                                                          ["shadow/", "(4)"]]
    assert float(lines[start + 2].split()[2]) == pytest.approx(groups["none"]["mean"]["sad"], abs=1e-3)
    with open(report.to_csv(tmp_path / "g.csv"), newline="") as f:
        out = list(csv.reader(f))
    assert [r[0] for r in out[-4:]] == ["mean", "mean:noise", "mean:none", "mean:shadow"]
    assert float(out[-1][2]) == groups["shadow"]["mean"]["mse"]
    doc = json.loads(report.to_json(tmp_path / "g.json").read_text())
    assert doc["groups"]["noise"] == {"count": 3, "mean": groups["noise"]["mean"]}
    # not every item in a subfolder (or no rows): no groups
    assert EvalReport(rows=rows + [{"name": "top", "sad": 0.0, "mse": 0.0}], metrics=("sad", "mse")).groups() == {}
    assert "groups" not in EvalReport(rows=[], metrics=("sad",)).to_dict()


def test_grouped_folders_and_trimap_mse(tmp_path):
    data = make_paired(tmp_path / "data")
    plain = evaluate(data, matter=DifferenceKeyer(), trimap_mse=True, progress=False)
    assert plain.metrics == ("sad", "mse", "grad", "conn", "trimap_mse", "fgr_mse") and plain.groups() == {}
    assert plain.info["trimap_mse"] == "generated" and plain.info["trimap"] is None
    region = evaluate(data, matter=DifferenceKeyer(), region="trimap", progress=False)
    for a, b in zip(plain.rows, region.rows):
        assert a["trimap_mse"] == pytest.approx(b["mse"])
    header = plain.format_table().splitlines()[0].split()
    assert header == ["name", "SAD", "MSE", "Grad", "Conn", "trimap", "MSE", "fgr", "MSE"]
    with pytest.raises(BgMattingError, match="trimap_mse"):
        evaluate(data, matter=DifferenceKeyer(), region="trimap", trimap_mse=True, progress=False)
    # every item in a subfolder: means per group
    grouped = tmp_path / "grouped"
    for kind in ("src", "bgr", "pha", "fgr"):
        for f in (data / kind).rglob("*.*"):
            rel = f.relative_to(data / kind)
            (grouped / kind / ("g1" if rel.parent.name else "g0") / rel.name).parent.mkdir(parents=True, exist_ok=True)
            f.rename(grouped / kind / ("g1" if rel.parent.name else "g0") / rel.name)
    report = evaluate(grouped, matter=DifferenceKeyer(), progress=False)
    assert {g: v["count"] for g, v in report.groups().items()} == {"g0": 2, "g1": 1}
    assert report.groups()["g1"]["mean"]["sad"] == report.rows[-1]["sad"]
