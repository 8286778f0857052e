"""Where a template's files come from: a directory, a tarball, debootstrap, or the demo.

debootstrap results are cached as tarballs under /var/cache/hoody (outside the
repository), keyed by suite and package list, so only the first build pays ~40 s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from importlib import resources
from pathlib import Path

from hoody.agent.engine import TemplateSource
from hoody.errors import CommandFailed, InvalidInput, NotFound
from hoody.proc import run

__all__ = [
    "DEMO_ARGS",
    "DEMO_NAME",
    "debootstrap_source",
    "demo_source",
    "dir_source",
    "tar_source",
]

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("HOODY_CACHE_DIR", "/var/cache/hoody"))
DEMO_NAME = "demo-app"
# -S skips site-packages processing and -I ignores the environment: a smaller idle
# footprint per tenant; the app is stdlib only.
DEMO_ARGS = ["/usr/bin/python3", "-I", "-S", "/app/server.py"]
DEMO_PACKAGES = ("python3-minimal", "libpython3.11-stdlib")


def dir_source(path: str | Path) -> TemplateSource:
    src = Path(path)
    if not src.is_dir():
        raise NotFound(f"rootfs directory {src} does not exist; give a directory with --rootfs")

    def populate(target: Path) -> None:
        run(["cp", "-a", "--reflink=auto", f"{src}/.", str(target)], timeout=1800)

    return TemplateSource(populate, f"directory {src}")


def tar_source(path: str | Path) -> TemplateSource:
    src = Path(path)
    if not src.is_file():
        raise NotFound(f"tarball {src} does not exist; give a file with --tar")

    def populate(target: Path) -> None:
        run(["tar", "-xpf", str(src), "-C", str(target), "--numeric-owner"], timeout=1800)

    return TemplateSource(populate, f"tarball {src}")


def debootstrap_tarball(suite: str = "bookworm", include: tuple[str, ...] = ()) -> Path:
    """A cached minbase rootfs tarball for `suite` with `include` packages."""
    for pkg in include:
        if not pkg or not all(c.isalnum() or c in "+-.:" for c in pkg):
            raise InvalidInput(f"package name {pkg!r} is invalid")
    if not suite.isalnum():
        raise InvalidInput(f"suite {suite!r} is invalid; use a Debian suite like bookworm")
    key = hashlib.sha256(" ".join([suite, *sorted(include)]).encode()).hexdigest()[:12]
    tarball = CACHE_DIR / f"debootstrap-{suite}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = CACHE_DIR / f".build-{key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        argv = ["debootstrap", "--variant=minbase"]
        if include:
            argv.append("--include=" + ",".join(include))
        _debootstrap([*argv, suite, str(work)], work)
        # Trim what a container never uses: package caches and docs.
        for sub in (
            "var/cache/apt/archives",
            "usr/share/doc",
            "usr/share/man",
            "var/lib/apt/lists",
        ):
            shutil.rmtree(work / sub, ignore_errors=True)
            (work / sub).mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        run(["tar", "-cpf", str(partial), "--numeric-owner", "-C", str(work), "."], timeout=600)
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def _debootstrap(argv: list[str], work: Path, attempts: int = 3) -> None:
    """Run debootstrap, retrying a failed download: the mirror answers "Failed getting
    release file" now and then (seen twice in a row on a fresh machine), and a test run
    or `make demo` should not fail on one dropped fetch."""
    for attempt in range(1, attempts + 1):
        try:
            run(argv, timeout=1800)
            return
        except CommandFailed as exc:
            if attempt == attempts or "Failed getting" not in (exc.stderr + exc.stdout):
                raise
            log.warning("debootstrap fetch failed (attempt %d of %d); retrying", attempt, attempts)
            shutil.rmtree(work, ignore_errors=True)
            time.sleep(2.0 * attempt)


def debootstrap_source(suite: str = "bookworm", include: tuple[str, ...] = ()) -> TemplateSource:
    def populate(target: Path) -> None:
        tar_source(debootstrap_tarball(suite, include)).populate(target)

    return TemplateSource(populate, f"debootstrap {suite} minbase")


def demo_source() -> TemplateSource:
    """Debian bookworm minbase + python3 + the demo web app at /app/server.py."""
    base = debootstrap_source("bookworm", DEMO_PACKAGES)
    app = resources.files("hoody.agent.demo").joinpath("server.py").read_text()

    def populate(target: Path) -> None:
        base.populate(target)
        (target / "app").mkdir(exist_ok=True)
        (target / "app" / "server.py").write_text(app)
        (target / "var" / "lib" / "demo-app").mkdir(parents=True, exist_ok=True)

    return TemplateSource(populate, "demo-app (bookworm + python3)")
