"""Datasets as numpy arrays: verified MNIST-format IDX files and prepared TFDS datasets.

The IDX datasets (MNIST, Fashion-MNIST) are searched in local folders, downloaded when
missing, and checked against the sha256 of their decompressed contents, so any copy of
the real data passes and anything else fails with one line saying which file and what to do.
This module never imports jax: arrays stay on the host until the caller moves them.
"""

import gzip
import hashlib
import http.client
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np


class DataError(Exception):
    """A dataset is missing, corrupt or unreadable; the message names the file and the fix."""


# sha256 of the decompressed IDX files (the canonical distributions' contents).
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

# split -> (file prefix, number of examples)
SPLITS = {"train": ("train", 60000), "test": ("t10k", 10000)}

# Where Debian's dataset-fashion-mnist package installs the files.
FASHION_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

TIMEOUT_S = 60
_ALIASES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist"}
_VALID_NAMES = "mnist, fashion_mnist (or fashion-mnist), tfds:NAME"
_IMAGE_SHAPE = (28, 28)
_CACHE: dict[tuple[str, str, str | None], tuple[np.ndarray, np.ndarray]] = {}


def _where(path):
    """Name a file for an error message: '<name> in <folder>'."""
    path = pathlib.Path(path)
    return f"{path.name} in {path.parent}"


def _canonical(name):
    """Map an IDX dataset name or alias to its canonical name.

    Args:
      name: "mnist", "fashion_mnist" or "fashion-mnist".

    Returns:
      The canonical name, a key of SHA256.
    """
    if name not in _ALIASES:
        raise DataError(f"unknown dataset {name!r}; valid names: {_VALID_NAMES}")
    return _ALIASES[name]


def _split_files(split):
    """File names (without .gz) and example count of an IDX split.

    Args:
      split: "train" or "test".

    Returns:
      (images file name, labels file name, number of examples).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    prefix, count = SPLITS[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte", count


def search_dirs(name, *, data_dir=None):
    """Folders searched, in order, for the IDX files of a dataset.

    Args:
      name: "mnist", "fashion_mnist" or "fashion-mnist".
      data_dir: optional root searched first (its <name>/ subfolder).

    Returns:
      List of absolute pathlib.Path folders (they need not exist).
    """
    name = _canonical(name)
    roots = [data_dir, os.environ.get("JAXAE_DATA_DIR"), pathlib.Path.cwd() / "data"]
    dirs = [pathlib.Path(r).absolute() / name for r in roots if r]
    if name == "fashion_mnist":
        dirs.append(FASHION_SYSTEM_DIR)
    return list(dict.fromkeys(dirs))


def _locate(folder, fname):
    """Path of fname.gz or fname in folder, or None if neither is a file."""
    for path in (folder / f"{fname}.gz", folder / fname):
        if path.is_file():
            return path
    return None


def _find(dirs, fnames):
    """First folder holding all of fnames (each as .gz or decompressed).

    Args:
      dirs: folders to search, in order.
      fnames: file names without .gz.

    Returns:
      (folder, list of paths), or None if no folder holds them all.
    """
    for folder in dirs:
        paths = [_locate(folder, f) for f in fnames]
        if all(paths):
            return folder, paths
    return None


def _read_bytes(path):
    """Contents of a file, decompressed if its name ends in .gz.

    Args:
      path: file path.

    Returns:
      The (decompressed) bytes.
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"{_where(path)}: not a valid gzip file ({e}); delete it and rerun, "
            "or point JAXAE_DATA_DIR at a good copy"
        ) from e
    except OSError as e:
        raise DataError(f"{_where(path)}: cannot read ({e.strerror or e})") from e


def _parse_idx(data, path):
    """Decode IDX bytes holding unsigned bytes (dtype 0x08).

    Args:
      data: the decompressed file contents.
      path: file the bytes came from, for error messages.

    Returns:
      Read-only uint8 array with the shape given in the header.
    """
    bad = f"{_where(path)}: not an IDX uint8 file"
    if len(data) < 4 or data[0] or data[1]:
        raise DataError(f"{bad} (magic {data[:4].hex() or 'missing'}); replace the file")
    if data[2] != 0x08:
        raise DataError(f"{bad} (dtype byte 0x{data[2]:02x}, expected 0x08); replace the file")
    ndim, offset = data[3], 4 + 4 * data[3]
    if ndim == 0 or len(data) < offset:
        raise DataError(f"{bad} (header truncated or ndim {ndim}); replace the file")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    size, have = int(np.prod(dims)), len(data) - offset
    if have != size:
        what = "truncated" if have < size else "has trailing bytes"
        raise DataError(
            f"{_where(path)}: {what} ({have} payload bytes, header {dims} needs {size}); "
            "delete it and rerun to download again"
        )
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def read_idx(path):
    """Read an IDX file of unsigned bytes (MNIST format), gzipped or not.

    Args:
      path: path to a .gz or raw IDX file (magic 0x0000 08 NDIM, e.g. 0x00000803 images).

    Returns:
      Read-only uint8 array with the shape in the header, e.g. (N, 28, 28) or (N,).
    """
    return _parse_idx(_read_bytes(path), path)


def _gunzip_sha256(path):
    """sha256 hex digest of a gzip file's decompressed contents (raises gzip errors)."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_decompressed(path):
    """sha256 of a file's contents after decompression (if its name ends in .gz).

    Args:
      path: path to a .gz or raw file.

    Returns:
      Hex digest string.
    """
    path = pathlib.Path(path)
    if path.suffix != ".gz":
        return hashlib.sha256(_read_bytes(path)).hexdigest()
    try:
        return _gunzip_sha256(path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{_where(path)}: not a valid gzip file ({e}); replace the file") from e
    except OSError as e:
        raise DataError(f"{_where(path)}: cannot read ({e.strerror or e})") from e


def _load_verified(path, name, ndim):
    """Read one IDX file after checking its decompressed sha256 and rank.

    Args:
      path: the .gz or raw file; its name (minus .gz) is a key of SHA256[name].
      name: canonical dataset name.
      ndim: expected rank (3 for images, 1 for labels).

    Returns:
      Read-only uint8 array.
    """
    data = _read_bytes(path)
    if hashlib.sha256(data).hexdigest() != SHA256[name][path.name.removesuffix(".gz")]:
        raise DataError(
            f"{_where(path)}: sha256 mismatch (file is corrupt or not {name}); delete it "
            "and rerun to download again, or point JAXAE_DATA_DIR at a good copy"
        )
    array = _parse_idx(data, path)
    if array.ndim != ndim:
        raise DataError(f"{_where(path)}: IDX rank {array.ndim}, expected {ndim}")
    return array


def _load_split(name, paths, count):
    """Verified images (N, 28, 28, 1) and labels (N,) from an images and a labels file.

    Args:
      name: canonical dataset name.
      paths: (images path, labels path).
      count: expected number of examples N.

    Returns:
      (images, labels), read-only uint8 arrays.
    """
    images = _load_verified(paths[0], name, 3)
    labels = _load_verified(paths[1], name, 1)
    if images.shape != (count, *_IMAGE_SHAPE) or labels.shape != (count,):
        raise DataError(
            f"{_where(paths[0])}: shapes {images.shape} / {labels.shape}, expected "
            f"({count}, 28, 28) / ({count},); replace the files"
        )
    return images[..., None], labels


def _mirror(name, mirror):
    """Base URL to download from: the argument, then $JAXAE_<NAME>_MIRROR, then MIRRORS."""
    url = mirror or os.environ.get(f"JAXAE_{name.upper()}_MIRROR") or MIRRORS[name]
    return url.rstrip("/") + "/"


def _fetch(url, out, hint):
    """Stream url into the open binary file out; network errors raise DataError.

    Args:
      url: address to download.
      out: writable binary file object.
      hint: what to do instead, appended to the error message.
    """
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DataError(f"could not download {url}: {reason}; {hint}") from e


def _download(url, target, expected, hint):
    """Download a .gz file to target via a temp file, keeping it only if its sha256 matches.

    Args:
      url: address of the .gz file.
      target: final path (its folder must exist).
      expected: sha256 of the decompressed contents.
      hint: what to do instead, appended to error messages.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = pathlib.Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, hint)
        try:
            ok = _gunzip_sha256(tmp) == expected
        except (EOFError, zlib.error, gzip.BadGzipFile):
            ok = False
        if not ok:
            raise DataError(
                f"downloaded {url}: sha256 mismatch (mirror sent a corrupt or different file); "
                f"nothing saved; {hint}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _download_split(name, fnames, dest, mirror):
    """Download the files of a split missing from dest.

    Args:
      name: canonical dataset name.
      fnames: file names without .gz.
      dest: destination folder, created if needed.
      mirror: base URL override or None.

    Returns:
      List of paths, one per file name.
    """
    base = _mirror(name, mirror)
    hint = (
        f"download {', '.join(f + '.gz' for f in fnames)} from {base} yourself and put them "
        f"in {dest}, or set JAXAE_DATA_DIR to a folder holding {name}/"
    )
    created = [p for p in (dest, *dest.parents) if not p.exists()]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest} ({e.strerror or e}); {hint}") from e
    try:
        for fname in fnames:
            if _locate(dest, fname) is None:
                _download(base + fname + ".gz", dest / f"{fname}.gz", SHA256[name][fname], hint)
    except DataError:
        for p in created:  # a failed download leaves no empty folders behind
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    return [_locate(dest, f) for f in fnames]


def _load_idx(name, split, data_dir, download, mirror):
    """Load a split of an IDX dataset: search, maybe download, verify, cache.

    Args:
      name: "mnist", "fashion_mnist" or "fashion-mnist".
      split: "train" or "test".
      data_dir: optional root searched first and used as download root.
      download: whether to download when no folder holds the files.
      mirror: base URL override or None.

    Returns:
      (images (N, 28, 28, 1), labels (N,)), read-only uint8 arrays.
    """
    name = _canonical(name)
    *fnames, count = _split_files(split)
    dirs = search_dirs(name, data_dir=data_dir)
    found = _find(dirs, fnames)
    if found is None and not download:
        raise DataError(
            f"{name} {split} files ({', '.join(f + '[.gz]' for f in fnames)}) not found in "
            f"{', '.join(map(str, dirs))}; put them in one of these folders or pass download=True"
        )
    if found is None:
        dest = pathlib.Path(data_dir or pathlib.Path.cwd() / "data").absolute() / name
        found = dest, _download_split(name, fnames, dest, mirror)
    folder, paths = found
    key = (name, split, str(folder.resolve()))
    if key not in _CACHE:
        _CACHE[key] = _load_split(name, paths, count)
    return _CACHE[key]


def _as_uint8(image, where):
    """Image as a uint8 array; integer images in [0, 255] are converted, others rejected."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8)
    raise DataError(f"{where}: image dtype {image.dtype} does not fit uint8")


def _records_to_arrays(source, where):
    """Stack a random-access source of {"image", "label"} records into arrays.

    Args:
      source: sequence of dicts with an image (H, W, C) or (H, W) and a scalar label.
      where: dataset description for error messages.

    Returns:
      (images uint8 (N, H, W, C), labels int32 (N,)).
    """
    n = len(source)
    if n == 0:
        raise DataError(f"{where}: split is empty")
    images, labels = None, np.empty(n, np.int32)
    # Index one record at a time: tfds' mock data sources break on batched __getitems__.
    for i in range(n):
        record = source[i]
        if "image" not in record or "label" not in record:
            raise DataError(f"{where}: records need 'image' and 'label', got {sorted(record)}")
        image = _as_uint8(record["image"], where)
        image = image[..., None] if image.ndim == 2 else image
        if images is None:
            images = np.empty((n, *image.shape), np.uint8)
        if image.shape != images.shape[1:] or np.ndim(record["label"]) != 0:
            raise DataError(f"{where}: record {i}: image shape {image.shape} or label not scalar")
        images[i], labels[i] = image, record["label"]
    return images, labels


def _load_tfds(name, split, data_dir, download):
    """Load a TFDS dataset split through tfds.data_source (no TensorFlow needed if prepared).

    Args:
      name: TFDS dataset name, e.g. "mnist" or "mnist:3.0.1".
      split: TFDS split, e.g. "train" or "test[:10%]".
      data_dir: TFDS data folder or None for TFDS's default.
      download: ignored: preparing a TFDS dataset needs TensorFlow (``tfds build``), so
        a dataset that is not prepared is an error, never minutes of download retries.

    Returns:
      (images uint8 (N, H, W, C), labels int32 (N,)).
    """
    where = f"tfds:{name} split {split!r}"
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"{where}: needs tensorflow-datasets (pip install it)") from e
    try:
        # Never let tfds download and prepare: that needs TensorFlow, and offline it
        # retries for minutes. A dataset that is not prepared fails here at once.
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many exception types; report any in one line
        first = (str(e).strip().splitlines() or [""])[0].rstrip(":")
        folder = data_dir or "$TFDS_DATA_DIR or ~/tensorflow_datasets"
        raise DataError(
            f"{where}: cannot open ({type(e).__name__}: {first}); is it prepared in "
            f"array_record format under {folder}? (tfds build --file_format=array_record, "
            "needs TensorFlow), or pass data_dir= where it is prepared"
        ) from e
    return _records_to_arrays(source, where)


def load(name="mnist", split="train", *, data_dir=None, download=True, mirror=None):
    """Load a dataset split as numpy arrays, verified and cached for the process.

    Args:
      name: "mnist", "fashion_mnist" (or "fashion-mnist"), or "tfds:NAME" for a prepared
        TensorFlow Datasets dataset.
      split: "train" (60000 examples) or "test" (10000) for the IDX datasets; any TFDS split
        for tfds:NAME.
      data_dir: root folder searched first (<data_dir>/<name>/) and used instead of
        <cwd>/data for downloads; for tfds:NAME, the TFDS data folder.
      download: download missing files (IDX) or let TFDS prepare the dataset.
      mirror: base URL for IDX downloads; default $JAXAE_<NAME>_MIRROR, then MIRRORS[name].

    Returns:
      (images uint8 (N, H, W, C), labels (N,)); for the IDX datasets H = W = 28, C = 1 and
      labels are uint8, for tfds:NAME labels are int32. The arrays are read-only because
      they are shared through the cache; copy them before modifying.
    """
    if not isinstance(name, str) or not isinstance(split, str):
        raise DataError(f"dataset name and split must be strings, got {name!r}, {split!r}")
    if not name.startswith("tfds:"):
        return _load_idx(name, split, data_dir, download, mirror)
    root = None if data_dir is None else str(pathlib.Path(data_dir).absolute())
    key = (name, split, root)
    if key not in _CACHE:
        images, labels = _load_tfds(name.removeprefix("tfds:"), split, root, download)
        images.flags.writeable = labels.flags.writeable = False
        _CACHE[key] = images, labels
    return _CACHE[key]


def clear_cache():
    """Forget every array loaded so far (frees their memory once callers drop them too)."""
    _CACHE.clear()
