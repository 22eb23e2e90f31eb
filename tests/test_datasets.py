"""The data set readers: IDX and CIFAR-10 formats on small files written here in the
official formats, the real files in shared/data, and downloads from a loopback server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA
from open_lth.datasets import cifar10, download, mnist
from open_lth.datasets.cifar10 import CIFAR10
from open_lth.datasets.mnist import MNIST, read_idx
from open_lth.foundations import registries
from open_lth.foundations.errors import UserError

CIFAR_SUBSET = DATA / "cifar10-subset"


# ---------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as the MNIST authors write it: 0, 0, type 0x08, ndim, big-endian dims."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, train: bool, n: int = 6, gz: bool = False, seed: int = 0):
    """Write a small split of MNIST into folder; return its images and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(mnist.SPLITS[train], (images, labels)):
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)
    return images, labels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return data, [int(x) for x in rng.integers(0, 10, size=n)]


def write_cifar_python(folder: Path, n: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The python layout: protocol-2 pickles of dicts with bytes keys, as released."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate(cifar10.TRAIN_BATCHES + cifar10.TEST_BATCHES):
        data, labels = batches[name] = cifar_batch(n, seed=i)
        record = {b"batch_label": name.encode(), b"data": data, b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))
    return batches


def write_cifar_binary(folder: Path, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    """The binary layout: records of one label byte and 3072 pixel bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("OPEN_LTH_OFFLINE", "1")


@pytest.fixture
def server(tmp_path_factory, monkeypatch):
    """A loopback HTTP server of a folder outside tmp_path; yields (folder, base url)."""
    monkeypatch.delenv("OPEN_LTH_OFFLINE", raising=False)
    served = tmp_path_factory.mktemp("served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path != "/short":
                return super().do_GET()
            # A connection that drops before the announced length.
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)

    handler = functools.partial(Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    """A loopback url on which nothing listens, so a connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing"


# ---------------------------------------------------------------- registry


def test_registered_with_their_statistics():
    assert registries.datasets.get("mnist") is MNIST
    assert registries.datasets.get("cifar10") is CIFAR10
    assert (MNIST.num_classes, MNIST.mean, MNIST.std, MNIST.augmentation) == (
        10,
        (0.1307,),
        (0.3081,),
        None,
    )
    assert CIFAR10.augmentation == "crop_flip"
    assert len(CIFAR10.mean) == len(CIFAR10.std) == 3


# ---------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    data = idx_bytes(array)
    # The name says nothing: compression is found by the magic bytes.
    path = tmp_path / "images"
    path.write_bytes(gzip.compress(data) if gz else data)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 5)
    np.testing.assert_array_equal(got, array)
    assert got.flags.writeable


def test_read_idx_one_dimension(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.array([5, 0, 4], dtype=np.uint8)))
    assert read_idx(path).tolist() == [5, 0, 4]


def test_read_idx_truncated(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(
        UserError, match=r"truncated IDX file: expected 3136 bytes of data, found 3126"
    ):
        read_idx(path)


def test_read_idx_too_long(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((4, 2), np.uint8)) + b"\0")
    with pytest.raises(UserError, match=r"too long: expected 8 bytes of data, found 9"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "images.gz"
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint16).astype(np.uint8)))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="truncated gzip stream") as error:
        read_idx(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"\x01\x02\x08\x01", "not an IDX file"),
        (b"\0\0\x0d\x01", "0x0d is not supported"),
        (b"\0\0\x08", "not an IDX file"),
        (b"\0\0\x08\x03\0\0", "bad IDX header"),
    ],
)
def test_read_idx_bad_header(tmp_path, header, message):
    path = tmp_path / "bad"
    path.write_bytes(header)
    with pytest.raises(UserError, match=message):
        read_idx(path)


# ---------------------------------------------------------------- MNIST, real files


def test_mnist_real_train():
    images, labels = MNIST.load(DATA, train=True)
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert images.is_contiguous()
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]
    # The well-known class counts of the training set.
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(labels).tolist() == counts
    # The mean that MNIST.mean states is the mean of these very pixels.
    assert images.float().mean().item() / 255 == pytest.approx(MNIST.mean[0], abs=1e-4)


def test_mnist_real_test():
    images, labels = MNIST.load(DATA / "mnist", train=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels[:3].tolist() == [7, 2, 1]
    assert labels.min() == 0 and labels.max() == 9
    # The first test image is a 7: ink in the top stroke, none in the corners.
    assert images[0, 0, :4, :4].sum() == 0 and images[0, 0, 7, 6:20].sum() > 0


def test_mnist_real_gz_files_have_official_md5():
    for name, expected in mnist.MD5.items():
        assert download.md5sum(DATA / "mnist" / name) == expected


# ---------------------------------------------------------------- MNIST, layouts and errors


def test_mnist_torchvision_raw_layout(tmp_path, offline):
    images, labels = write_mnist(tmp_path / "MNIST" / "raw", train=False)
    got_images, got_labels = MNIST.load(tmp_path, train=False)
    assert got_images.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(got_images[:, 0].numpy(), images)
    assert got_labels.tolist() == labels.tolist()


def test_mnist_first_complete_folder_wins(tmp_path, offline):
    # root holds only the images, root/mnist holds both: root/mnist is used.
    write_mnist(tmp_path, train=True, seed=1)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    images, _ = write_mnist(tmp_path / "mnist", train=True, seed=2)
    write_mnist(tmp_path / "MNIST" / "raw", train=True, seed=3)
    np.testing.assert_array_equal(MNIST.load(tmp_path, train=True)[0][:, 0].numpy(), images)


def test_mnist_unofficial_gz_names_read_by_magic(tmp_path, offline):
    # A .gz whose name is not an official one has no md5 to check; it is read as is.
    images, _ = write_mnist(tmp_path, train=False, gz=False)
    for name in mnist.SPLITS[False]:
        path = tmp_path / name
        path.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(MNIST.load(tmp_path, train=False)[0][:, 0].numpy(), images)


def test_mnist_corrupt_gz_fails_md5(tmp_path, offline):
    shutil.copy(DATA / "mnist" / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray((DATA / "mnist" / labels.name).read_bytes())
    blob[100] ^= 0xFF
    labels.write_bytes(bytes(blob))
    with pytest.raises(UserError) as error:
        MNIST.load(tmp_path, train=False)
    message = str(error.value)
    assert "corrupt" in message and "delete it" in message and str(labels) in message
    assert md5(labels) in message and mnist.MD5[labels.name] in message
    assert "\n" not in message


def test_mnist_count_mismatch(tmp_path, offline):
    write_mnist(tmp_path, train=True, n=6)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(UserError, match="expected 6 labels"):
        MNIST.load(tmp_path, train=True)


def test_mnist_wrong_image_size(tmp_path, offline):
    tmp_path.joinpath("t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 32, 32))))
    tmp_path.joinpath("t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2)))
    with pytest.raises(UserError, match="28 x 28"):
        MNIST.load(tmp_path, train=False)


def test_mnist_label_out_of_range(tmp_path, offline):
    write_mnist(tmp_path, train=False, n=3)
    tmp_path.joinpath("t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 10, 2])))
    with pytest.raises(UserError, match="label 10 is out of range"):
        MNIST.load(tmp_path, train=False)


def test_mnist_missing_offline_names_files_and_folders(tmp_path, offline):
    write_mnist(tmp_path, train=True)  # the training split does not help the test split
    with pytest.raises(UserError) as error:
        MNIST.load(tmp_path, train=False)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-" not in message
    assert str(tmp_path / "MNIST" / "raw") in message and "OPEN_LTH_OFFLINE" in message
    assert "\n" not in message
    assert not (tmp_path / "mnist").exists()  # offline: nothing was attempted


def test_mnist_files_split_across_folders(tmp_path, offline):
    write_mnist(tmp_path, train=False)
    (tmp_path / "mnist").mkdir()
    os.replace(tmp_path / "t10k-labels-idx1-ubyte", tmp_path / "mnist" / "t10k-labels-idx1-ubyte")
    with pytest.raises(UserError, match="must be in the same folder"):
        MNIST.load(tmp_path, train=False)


# ---------------------------------------------------------------- downloads


@pytest.mark.parametrize("value, allowed", [(None, True), ("", True), ("0", True), ("1", False)])
def test_download_allowed(monkeypatch, value, allowed):
    if value is None:
        monkeypatch.delenv("OPEN_LTH_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("OPEN_LTH_OFFLINE", value)
    assert download.download_allowed() is allowed


def test_md5sum_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * download.CHUNK + 17))  # several chunks and a tail
    assert download.md5sum(path) == md5(path)


def test_download_success(server, tmp_path):
    served, url = server
    (served / "file.bin").write_bytes(b"payload" * 1000)
    dest = tmp_path / "out" / "file.bin"
    download.download(url + "file.bin", dest, md5(served / "file.bin"))
    assert dest.read_bytes() == b"payload" * 1000
    assert os.listdir(dest.parent) == ["file.bin"]


def test_download_md5_mismatch_leaves_nothing(server, tmp_path):
    served, url = server
    (served / "file.bin").write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(UserError) as error:
        download.download(url + "file.bin", dest, "0" * 32)
    message = str(error.value)
    assert url + "file.bin" in message and md5(served / "file.bin") in message
    assert "0" * 32 in message
    assert list(tmp_path.iterdir()) == []  # not even the folder made for it


def test_download_short_body(server, tmp_path):
    _, url = server
    with pytest.raises(UserError, match="got 10 bytes, the server announced 100"):
        download.download(url + "short", tmp_path / "short", None)
    assert list(tmp_path.iterdir()) == []


def test_download_refused_offline(tmp_path, offline):
    with pytest.raises(UserError, match="OPEN_LTH_OFFLINE"):
        download.download(closed_port_url(), tmp_path / "x", None)
    assert list(tmp_path.iterdir()) == []


def test_fetch_first_falls_through_mirrors(server, tmp_path):
    served, url = server
    (served / "file.bin").write_bytes(b"good")
    dest = tmp_path / "file.bin"
    download.fetch_first([closed_port_url(), url + "missing.bin", url + "file.bin"], dest, None)
    assert dest.read_bytes() == b"good"


def test_fetch_first_all_fail(server, tmp_path):
    _, url = server
    with pytest.raises(UserError) as error:
        download.fetch_first([closed_port_url(), url + "missing.bin"], tmp_path / "f", None)
    message = str(error.value)
    assert "2 mirror(s)" in message and "HTTP 404" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_mnist_downloads_missing_files(server, tmp_path, monkeypatch):
    served, url = server
    images, labels = write_mnist(served, train=False, gz=True)
    sums = {f"{n}.gz": md5(served / f"{n}.gz") for n in mnist.SPLITS[False]}
    monkeypatch.setattr(mnist, "MIRRORS", [closed_port_url() + "/", url])
    monkeypatch.setattr(mnist, "MD5", sums)
    root = tmp_path / "root"
    got_images, got_labels = MNIST.load(root, train=False)
    np.testing.assert_array_equal(got_images[:, 0].numpy(), images)
    assert got_labels.tolist() == labels.tolist()
    assert sorted(os.listdir(root / "mnist")) == sorted(sums)


def test_mnist_download_with_wrong_md5_fails(server, tmp_path, monkeypatch):
    served, url = server
    write_mnist(served, train=False, gz=True)
    # The server's files are not the official ones, so the official md5 rejects them.
    monkeypatch.setattr(mnist, "MIRRORS", [url])
    with pytest.raises(UserError) as error:
        MNIST.load(tmp_path, train=False)
    message = str(error.value)
    assert "download failed" in message and "md5" in message and "t10k-" in message
    assert list(tmp_path.iterdir()) == []  # no empty mnist/ left behind


# ---------------------------------------------------------------- CIFAR-10, small files


def test_cifar_python_layout(tmp_path, offline):
    batches = write_cifar_python(tmp_path / "cifar-10-batches-py")
    images, labels = CIFAR10.load(tmp_path, train=True)
    assert images.shape == (15, 3, 32, 32) and images.dtype == torch.uint8
    assert images.is_contiguous() and labels.dtype == torch.int64
    expected = np.concatenate([batches[n][0] for n in cifar10.TRAIN_BATCHES])
    np.testing.assert_array_equal(images.reshape(15, -1).numpy(), expected)
    assert labels.tolist() == sum((batches[n][1] for n in cifar10.TRAIN_BATCHES), [])
    # Row layout: the first 1024 bytes are the red plane, row-major.
    assert images[0, 0, 0, 1] == expected[0, 1] and images[0, 1, 0, 0] == expected[0, 1024]


def test_cifar_python_str_keys(tmp_path, offline):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data, labels = cifar_batch(2, seed=0)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels}))
    assert CIFAR10.load(tmp_path, train=False)[1].tolist() == labels


def py2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the official archive's python 2 did: str keys as
    SHORT_BINSTRING, the array through numpy.core.multiarray._reconstruct."""
    n = len(data)
    return (
        b"\x80\x02}(U\x04data"
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
        + struct.pack("<I", data.nbytes)
        + data.tobytes()
        + b"tbU\x06labels]("
        + b"".join(b"K" + bytes([x]) for x in labels)
        + b"eu."
    )


def test_cifar_python2_pickle(tmp_path, offline):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data, labels = cifar_batch(3, seed=7)
    (folder / "test_batch").write_bytes(py2_batch_pickle(data, labels))
    images, got_labels = CIFAR10.load(folder, train=False)
    np.testing.assert_array_equal(images.reshape(3, -1).numpy(), data)
    assert got_labels.tolist() == labels


def test_cifar_binary_layout_matches_python(tmp_path, offline):
    batches = write_cifar_python(tmp_path / "py" / "cifar-10-batches-py")
    write_cifar_binary(tmp_path / "bin" / "cifar-10-batches-bin", batches)
    for train in (True, False):
        from_py = CIFAR10.load(tmp_path / "py", train)
        from_bin = CIFAR10.load(tmp_path / "bin" / "cifar-10-batches-bin", train)
        assert torch.equal(from_py[0], from_bin[0]) and torch.equal(from_py[1], from_bin[1])


def test_cifar_binary_truncated(tmp_path, offline):
    batches = write_cifar_python(tmp_path / "py")
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_binary(folder, batches)
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UserError, match=r"truncated CIFAR-10 binary file: 9218 bytes"):
        CIFAR10.load(tmp_path, train=False)


def test_cifar_bad_label(tmp_path, offline):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data, _ = cifar_batch(2, seed=0)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 12]}, 2))
    with pytest.raises(UserError, match=r"labels must be in 0\.\.9"):
        CIFAR10.load(tmp_path, train=False)


def test_cifar_bad_data_shape(tmp_path, offline):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((2, 3000), np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2]}, 2))
    with pytest.raises(UserError, match="expected N x 3072 uint8 data"):
        CIFAR10.load(tmp_path, train=False)


def test_cifar_truncated_pickle(tmp_path, offline):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="corrupt or truncated pickle"):
        CIFAR10.load(tmp_path, train=False)


class Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_restricted_unpickler_refuses_code(tmp_path, offline, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    payload = {b"data": Exploit(), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match=r"refusing to unpickle (posix|os|nt)\.system from"):
        CIFAR10.load(tmp_path, train=False)
    assert not (tmp_path / "pwned").exists()


def test_restricted_unpickler_refuses_codec_tricks(tmp_path):
    # _codecs.encode is allowed only for the latin1 that protocol-2 bytes use.
    blob = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(UserError, match="encoding 'zlib'"):
        cifar10.RestrictedUnpickler(io.BytesIO(blob), tmp_path).load()


def test_cifar_missing_offline(tmp_path, offline):
    with pytest.raises(UserError) as error:
        CIFAR10.load(tmp_path, train=True)
    message = str(error.value)
    assert "cifar-10-batches-py" in message and "cifar-10-batches-bin" in message
    assert str(tmp_path / "cifar-10") in message and "OPEN_LTH_OFFLINE" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_cifar_incomplete_folder(tmp_path, offline):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3"):
        CIFAR10.load(tmp_path, train=True)
    assert CIFAR10.load(tmp_path, train=False)[0].shape == (3, 3, 32, 32)


def test_cifar_downloads_and_extracts(server, tmp_path, monkeypatch):
    served, url = server
    batches = write_cifar_python(tmp_path / "build" / "cifar-10-batches-py", n=2)
    archive = served / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(cifar10, "MIRRORS", [url + "cifar.tar.gz"])
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5(archive))
    root = tmp_path / "root"
    images, labels = CIFAR10.load(root, train=False)
    np.testing.assert_array_equal(images.reshape(2, -1).numpy(), batches["test_batch"][0])
    assert labels.tolist() == batches["test_batch"][1]
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_cifar_refuses_archive_escaping_root(server, tmp_path, monkeypatch):
    served, url = server
    archive = served / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    monkeypatch.setattr(cifar10, "MIRRORS", [url + "evil.tar.gz"])
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5(archive))
    root = tmp_path / "a" / "root"
    with pytest.raises(UserError, match="cannot extract"):
        CIFAR10.load(root, train=False)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert os.listdir(root) == ["cifar-10-python.tar.gz"]  # no scratch folder left


# ---------------------------------------------------------------- CIFAR-10, real subset


def test_cifar_real_layouts_agree():
    for train, n in ((True, 4000), (False, 1000)):
        from_py = CIFAR10.load(CIFAR_SUBSET / "cifar-10-batches-py", train)
        from_bin = CIFAR10.load(CIFAR_SUBSET / "cifar-10-batches-bin", train)
        assert from_py[0].shape == (n, 3, 32, 32) and from_py[1].shape == (n,)
        assert torch.equal(from_py[0], from_bin[0]) and torch.equal(from_py[1], from_bin[1])
        assert torch.bincount(from_py[1], minlength=10).min() > n // 20  # all classes present


def test_cifar_real_known_labels():
    # The first CIFAR-10 training images are a frog and two trucks; the first test
    # images a cat, two ships and an airplane.
    assert CIFAR10.load(CIFAR_SUBSET, train=True)[1][:3].tolist() == [6, 9, 9]
    assert CIFAR10.load(CIFAR_SUBSET, train=False)[1][:4].tolist() == [3, 8, 8, 0]
