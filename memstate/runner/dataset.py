"""The training, validation and test digits a scenario names, loaded and prepared once per data spec (cached)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from memstate.runner import data as digits
from memstate.runner.scenario import DataSpec


@dataclass(frozen=True)
class Dataset:
    """A scenario's digits, preprocessed: training inputs [N, n0] and labels [N], test inputs and labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    validation_x: np.ndarray | None = None  # the last data.validation samples of the training split
    validation_y: np.ndarray | None = None


@lru_cache(maxsize=4)
def prepare_data(spec: DataSpec) -> Dataset:
    """Load, preprocess and split the digits a scenario names (cached: specs are frozen)."""
    if spec.source == "bundled":
        images, labels = digits.load_bundled()
    else:
        assert spec.idx_dir is not None  # the scenario's validation requires it for source = "idx"
        images, labels = digits.load_idx_dir(spec.idx_dir, split="train")
    x = digits.preprocess(images, crop=spec.crop, size=spec.size, binarize=spec.binarize, normalize=spec.normalize)
    train_x, train_y, test_x, test_y = digits.split(
        x, labels, train=spec.train, test=spec.test, shuffle_seed=spec.shuffle_seed
    )
    keep = spec.train - spec.validation
    return Dataset(train_x[:keep], train_y[:keep].astype(np.int64), test_x, test_y.astype(np.int64),
                   train_x[keep:], train_y[keep:].astype(np.int64))


__all__ = ["Dataset", "prepare_data"]
