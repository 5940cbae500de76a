"""Tests for jaxae.data: real MNIST, IDX errors, verified downloads from a local server, tfds."""

import contextlib
import functools
import gzip
import http.server
import shutil
import threading
import time

import numpy as np
import pytest

from jaxae import data
from jaxae.data import DataError, load, read_idx, search_dirs, sha256_of_decompressed

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TEST_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
PROXY_VARS = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run in an empty cwd with no JAXAE_DATA_DIR, no mirror override, proxies and cache."""
    monkeypatch.delenv("JAXAE_DATA_DIR", raising=False)
    monkeypatch.delenv("JAXAE_MNIST_MIRROR", raising=False)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.chdir(tmp_path)
    return tmp_path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder):
    """Serve folder over HTTP on 127.0.0.1 in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dead_url():
    """A URL on 127.0.0.1 where nothing listens (a server that was started and closed)."""
    with serve(".") as url:
        pass
    return url


def corrupt_gz(path, index=8):
    """Rewrite a .gz file with one decompressed byte changed (still valid gzip and IDX)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[index] = (raw[index] + 1) % 10
    path.write_bytes(gzip.compress(bytes(raw)))


def copy_real(src, dest, names):
    """Copy real MNIST files into dest (created); returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, dest / name)
    return dest


def leftovers(folder):
    """Names of the files in folder (empty if it does not exist)."""
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


# --- real MNIST ---------------------------------------------------------------------------


def test_real_mnist_train(data_dir):
    x, y = load("mnist", "train")
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.uint8
    assert np.bincount(y).tolist() == TRAIN_COUNTS
    assert y[:10].tolist() == FIRST_TRAIN_LABELS
    assert 0 < x.mean() < 255 and x.max() == 255


def test_real_mnist_test_and_cache(data_dir):
    x, y = load("mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    x2, y2 = load("mnist", "test", data_dir=data_dir)
    assert x2 is x and y2 is y
    assert not x.flags.writeable and not y.flags.writeable


def test_sha256_table_matches_shared_sums(data_dir):
    sums = (data_dir / "mnist" / "SHA256SUMS").read_text().split()
    expected = dict(zip(sums[1::2], sums[::2], strict=True))
    assert data.SHA256["mnist"] == expected
    for name, digest in expected.items():
        assert sha256_of_decompressed(data_dir / "mnist" / f"{name}.gz") == digest


def test_read_idx_raw_equals_gz(data_dir, tmp_path):
    gz = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(gz.read_bytes()))
    np.testing.assert_array_equal(read_idx(raw), read_idx(gz))
    assert read_idx(raw).shape == (10000,)


def test_load_reads_decompressed_files(data_dir, isolated):
    folder = isolated / "root" / "mnist"
    folder.mkdir(parents=True)
    for name in TEST_FILES:
        raw = gzip.decompress((data_dir / "mnist" / name).read_bytes())
        (folder / name.removesuffix(".gz")).write_bytes(raw)
    x, y = load("mnist", "test", data_dir=isolated / "root", download=False)
    assert x.shape == (10000, 28, 28, 1) and y.shape == (10000,)


# --- IDX errors ---------------------------------------------------------------------------


def idx_bytes(dims, payload_size=None):
    """An IDX uint8 file with the given dims and payload_size bytes of payload."""
    size = int(np.prod(dims)) if payload_size is None else payload_size
    header = bytes([0, 0, 8, len(dims)]) + np.array(dims, ">u4").tobytes()
    return header + bytes(size)


@pytest.mark.parametrize(
    "content, message",
    [
        (idx_bytes((3, 2, 2), payload_size=10), "truncated"),
        (idx_bytes((3, 2, 2), payload_size=13), "trailing bytes"),
        (idx_bytes((3, 2, 2))[:9], "header truncated"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_bad_size(tmp_path, content, message, compress):
    path = tmp_path / ("bad-idx3-ubyte.gz" if compress else "bad-idx3-ubyte")
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match=rf"bad-idx3-ubyte.* in .*: .*{message}"):
        read_idx(path)


@pytest.mark.parametrize(
    "content",
    [
        b"PK\x03\x04" + bytes(20),  # a zip file
        bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes(4),  # IDX float32, not uint8
        bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]),  # nonzero leading magic byte
        bytes([0, 0]),  # too short for a magic number
    ],
)
def test_read_idx_wrong_magic(tmp_path, content):
    path = tmp_path / "weird-labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"weird-labels-idx1-ubyte in .*not an IDX uint8 file"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes((1000,)))[:-12])
    with pytest.raises(DataError, match=r"cut-idx1-ubyte.gz in .*not a valid gzip file"):
        read_idx(path)


def test_read_idx_valid_small(tmp_path):
    path = tmp_path / "ok-idx3-ubyte"
    path.write_bytes(idx_bytes((2, 3, 4)))
    x = read_idx(path)
    assert x.shape == (2, 3, 4) and x.dtype == np.uint8


def test_sha256_mismatch_raises_and_keeps_file(data_dir, tmp_path, monkeypatch):
    # JAXAE_DATA_DIR still points at the good copy: the bad one must not fall through to it.
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.chdir(tmp_path)
    names = TEST_FILES + ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    folder = copy_real(data_dir / "mnist", tmp_path / "root" / "mnist", names)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    corrupt_gz(bad)
    before = bad.read_bytes()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz in .*sha256 mismatch"):
        load("mnist", "test", data_dir=tmp_path / "root", mirror=dead_url())
    assert bad.read_bytes() == before
    assert leftovers(folder) == sorted(names)


# --- downloads from a local server --------------------------------------------------------


def test_download_into_data_dir(data_dir, isolated):
    served = copy_real(data_dir / "mnist", isolated / "server", TEST_FILES)
    with serve(served) as url:
        x, y = load("mnist", "test", data_dir=isolated / "root", mirror=url)
    assert x.shape == (10000, 28, 28, 1) and y.shape == (10000,)
    assert leftovers(isolated / "root" / "mnist") == TEST_FILES
    x_real, y_real = (
        read_idx(data_dir / "mnist" / TEST_FILES[0]),
        read_idx(data_dir / "mnist" / TEST_FILES[1]),
    )
    np.testing.assert_array_equal(x[..., 0], x_real)
    np.testing.assert_array_equal(y, y_real)


def test_download_into_cwd_data_with_env_mirror(data_dir, isolated, monkeypatch):
    served = copy_real(data_dir / "mnist", isolated / "server", TEST_FILES)
    with serve(served) as url:
        monkeypatch.setenv("JAXAE_MNIST_MIRROR", url)
        x, _ = load("mnist", "test")
    assert x.shape == (10000, 28, 28, 1)
    assert leftovers(isolated / "data" / "mnist") == TEST_FILES


@pytest.mark.parametrize("kind", ["altered byte", "not gzip"])
def test_download_corrupt_file_is_not_kept(data_dir, isolated, kind):
    served = copy_real(data_dir / "mnist", isolated / "server", TEST_FILES)
    labels = served / "t10k-labels-idx1-ubyte.gz"
    if kind == "altered byte":
        corrupt_gz(labels)
    else:
        labels.write_bytes(b"<html>not found</html>")
    with serve(served) as url, pytest.raises(DataError, match=r"downloaded .*sha256 mismatch"):
        load("mnist", "test", data_dir=isolated / "root", mirror=url)
    # The verified images file may stay; the bad labels and any temp file must not.
    assert leftovers(isolated / "root" / "mnist") == ["t10k-images-idx3-ubyte.gz"]


def test_download_server_down(isolated):
    url = dead_url()
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1.*put them in"):
        load("mnist", "test", data_dir=isolated / "root", mirror=url)
    assert leftovers(isolated / "root" / "mnist") == []


def test_download_missing_on_server(isolated):
    (isolated / "server").mkdir()
    with serve(isolated / "server") as url, pytest.raises(DataError, match=r"could not .*404"):
        load("mnist", "test", data_dir=isolated / "root", mirror=url)
    assert leftovers(isolated / "root" / "mnist") == []


def test_download_false_lists_searched_dirs(isolated, monkeypatch):
    monkeypatch.setenv("JAXAE_DATA_DIR", str(isolated / "env"))
    with pytest.raises(DataError, match="not found in") as info:
        load("mnist", "train", data_dir=isolated / "arg", download=False)
    message = str(info.value)
    for folder in ("arg/mnist", "env/mnist", "data/mnist"):
        assert str(isolated / folder) in message
    assert "\n" not in message


# --- fashion-mnist, names, splits ---------------------------------------------------------


def test_search_dirs_order(isolated, monkeypatch):
    monkeypatch.setenv("JAXAE_DATA_DIR", str(isolated / "env"))
    assert search_dirs("mnist") == [isolated / "env" / "mnist", isolated / "data" / "mnist"]
    expected = [
        isolated / "env" / "fashion_mnist",
        isolated / "data" / "fashion_mnist",
        data.FASHION_SYSTEM_DIR,
    ]
    assert search_dirs("fashion_mnist") == expected
    assert search_dirs("fashion-mnist") == expected
    assert search_dirs("mnist", data_dir=isolated / "a")[0] == isolated / "a" / "mnist"


def test_fashion_mnist_searches_debian_folder(isolated):
    debian = "/usr/share/datasets/fashion-mnist"
    assert str(data.FASHION_SYSTEM_DIR) == debian
    if data.FASHION_SYSTEM_DIR.is_dir():  # Debian's dataset-fashion-mnist is installed
        x, y = load("fashion-mnist", "test", download=False)
        assert x.shape == (10000, 28, 28, 1) and y.shape == (10000,)
    else:
        with pytest.raises(DataError, match=rf"fashion_mnist test files .*not found in .*{debian}"):
            load("fashion_mnist", "test", download=False)


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist_from_the_data_dir(data_dir, split, n):
    """The real files in $JAXAE_DATA_DIR/fashion_mnist/ (sha256-verified by the loader):
    Fashion-MNIST is balanced, n/10 images of each of its 10 classes."""
    x, y = load("fashion_mnist", split, data_dir=data_dir, download=False)
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y, minlength=10), [n // 10] * 10)
    mnist, _ = load("mnist", split, data_dir=data_dir, download=False)
    assert x.mean() > mnist.mean() + 25  # clothes cover more of the frame than digits


@pytest.mark.parametrize("name", ["cifar10", "MNIST", "tfds", ""])
def test_unknown_dataset(name):
    with pytest.raises(DataError, match=r"unknown dataset .*valid names: mnist, fashion_mnist"):
        load(name)


@pytest.mark.parametrize("split", ["validation", "Train", "train[:10%]"])
def test_unknown_split(split):
    with pytest.raises(DataError, match=r"unknown split .*valid splits: train, test"):
        load("mnist", split)


# --- tfds ---------------------------------------------------------------------------------


def test_tfds_mock_mnist(monkeypatch):
    import tensorflow_datasets as tfds  # lazily: only this test needs it

    monkeypatch.setattr(data, "_CACHE", {})
    with tfds.testing.mock_data(num_examples=7):
        x, y = load("tfds:mnist", "train")
    assert x.shape == (7, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (7,) and np.issubdtype(y.dtype, np.integer)
    assert ((0 <= y) & (y < 10)).all()
    assert load("tfds:mnist", "train")[0] is x  # cached


def test_tfds_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"tfds:no_such_dataset_xyz .*cannot open .*not found"):
        load("tfds:no_such_dataset_xyz", data_dir=tmp_path, download=False)


def test_tfds_not_prepared(tmp_path):
    with pytest.raises(DataError, match=r"tfds:mnist split 'test': cannot open"):
        load("tfds:mnist", "test", data_dir=tmp_path, download=False)


def test_tfds_not_prepared_fails_fast_offline(tmp_path):
    # the default download=True must not start a download-and-prepare (offline: retries)
    t = time.perf_counter()
    with pytest.raises(DataError, match=r"tfds:mnist split 'test': cannot open .*prepared"):
        load("tfds:mnist", "test", data_dir=tmp_path)
    assert time.perf_counter() - t < 30
    assert not any(tmp_path.rglob("*"))  # nothing written
