"""Fetching registry packages (``pip download``, ``apt-get download`` + ``dpkg-deb``, ``npm pack``) into a cache,
unpacking only the members the catalog lists."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import BgMattingError
from ..io.cache import cache_dir
from .catalog import FORBIDDEN_MEMBERS, FORBIDDEN_PACKAGES, PACKAGES, Package

__all__ = ["default_cache_dir", "fetch_packages", "package_version"]


def default_cache_dir() -> Path:
    """``$BGMATTING_CACHE/packages``, else ``$XDG_CACHE_HOME/bgmatting/packages`` (``~/.cache/...``)."""
    return cache_dir("packages")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BgMattingError(f"'{cmd[0]}' is not installed: it is needed to fetch packages "
                             f"({' '.join(cmd[:3])} ...)") from None


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
            raise BgMattingError(f"cannot download {pkg.name}=={pkg.version} with pip "
                                 f"({_last_line(r.stderr or r2.stderr)}); check the connection to the package index, "
                                 "or put its wheel into the cache folder")
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
        raise BgMattingError(f"npm not found: the npm package {pkg.name} needs Node.js's npm client; install it, "
                             f"leave out the 'people' source, or put {_npm_tarball_name(pkg)} "
                             f"(from 'npm pack {pkg.name}@{pkg.version}') into '{dl}'")
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
                    if (any(fnmatch.fnmatch(m, g) for g in pkg.members)
                            and not any(fnmatch.fnmatch(m, g) for g in FORBIDDEN_MEMBERS)):
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
            raise BgMattingError(f"the cached npm tarball '{archive}' was corrupt ({e}) and has been removed: "
                                 "run again") from None
    else:
        _unpack_deb(archive, tmp, pkg.members)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _unpack_deb(archive: Path, dest: Path, members: Sequence[str]) -> None:
    """``dpkg -x``, restricted to ``members`` (globs): ``dpkg-deb --fsys-tarfile`` streamed through
    :mod:`tarfile`, so that only the listed files are ever written."""
    if shutil.which("dpkg-deb") is None:
        raise BgMattingError(f"dpkg-deb not found: it is needed to unpack '{archive.name}' (install dpkg)")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
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


def fetch_packages(names: Iterable[str], cache_dir: str | os.PathLike | None = None, *,
                   progress: bool = True) -> dict[str, Path]:
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
            raise BgMattingError(f"package {name} is reserved for independent evaluation "
                                 "and must not be used for training")
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


def package_version(name: str, root: Path) -> str:
    marker = root / ".bgmatting-unpacked"
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("version", PACKAGES[name].version)
        except (OSError, ValueError):
            pass
    return PACKAGES[name].version if name in PACKAGES else "unknown"
