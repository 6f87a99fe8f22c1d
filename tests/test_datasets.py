"""The synthetic tasks and image resizing of :mod:`netdsl.datasets`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from netdsl.datasets import LongRangeTask, resize_bilinear


@pytest.mark.parametrize(("src", "dst"), [((8, 8), (32, 32)), ((8, 8), (28, 20)), ((13, 7), (5, 9)), ((4, 4), (4, 4))])
def test_resize_bilinear_matches_pytorch(src: tuple[int, int], dst: tuple[int, int]) -> None:
    images = np.random.default_rng(0).random((3, 2, *src)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(images), size=dst, mode="bilinear", align_corners=False).numpy()
    got = resize_bilinear(images, *dst)
    assert got.dtype == np.float32 and got.shape == (3, 2, *dst)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_resize_bilinear_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[N, C, h, w\]"):
        resize_bilinear(np.zeros((8, 8)), 4, 4)
    with pytest.raises(ValueError, match="positive"):
        resize_bilinear(np.zeros((1, 1, 8, 8)), 0, 4)


def corner_patches(task: LongRangeTask, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the pattern bank of the top-left and bottom-right patch of each image, found by search."""
    bank = task.pattern_bank()
    p, far, j = task.patch, task.size - task.patch, task.jitter

    def best(window: np.ndarray) -> int:
        # Over every jitter offset, the bank pattern that correlates best with the window.
        scores = [(np.sum(window[dy : dy + p, dx : dx + p] * b), k)
                  for dy in range(j + 1) for dx in range(j + 1) for k, b in enumerate(bank)]
        return max(scores)[1]

    first = [best(img[0, : p + j, : p + j]) for img in images]
    second = [best(img[0, far - j :, far - j :]) for img in images]
    return np.array(first), np.array(second)


def test_long_range_labels_say_whether_the_corner_patches_match() -> None:
    task = LongRangeTask(size=24, patch=5, patterns=3, noise=0.2, jitter=2)
    images, labels = task.sample(60, seed=1)
    assert images.shape == (60, 1, 24, 24) and images.dtype == np.float32
    assert labels.dtype == np.int64 and labels.sum() == 30
    first, second = corner_patches(task, images)
    np.testing.assert_array_equal(labels, (first == second).astype(np.int64))
    assert len(set(first)) == 3  # every pattern is used


def test_long_range_is_reproducible_and_splits_are_independent() -> None:
    task = LongRangeTask(channels=3)
    a, b = task.sample(10, seed=5), task.sample(10, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(a[0][:, 0], a[0][:, 2])  # every channel holds the same picture
    x_train, y_train, x_test, y_test = task.split(20, 10, seed=0)
    assert x_train.shape[0] == 20 and x_test.shape[0] == 10 and len(y_train) == 20 and len(y_test) == 10
    assert not np.allclose(x_train[:10], x_test)
    # The pattern bank is shared by every sample set of the task.
    bank = LongRangeTask(pattern_seed=3).pattern_bank()
    np.testing.assert_array_equal(bank, LongRangeTask(pattern_seed=3).pattern_bank())
    assert not np.array_equal(bank, LongRangeTask().pattern_bank())


def test_long_range_needs_both_corners_at_once() -> None:
    # A linear model of the pixels adds what it sees of each corner: it stays at chance. The
    # product of the two corner patches (aligned here: no jitter), one feature relating both,
    # separates the classes.
    task = LongRangeTask(jitter=0)
    x_train, y_train, x_test, y_test = task.split(2000, 1000, seed=0)
    linear = LogisticRegression(max_iter=2000).fit(x_train.reshape(len(x_train), -1), y_train)
    assert abs(linear.score(x_test.reshape(len(x_test), -1), y_test) - task.chance) < 0.06

    p = task.patch

    def relating(x: np.ndarray) -> np.ndarray:
        return (x[:, 0, :p, :p] * x[:, 0, -p:, -p:]).sum(axis=(1, 2))[:, None]

    product = LogisticRegression().fit(relating(x_train), y_train)
    assert product.score(relating(x_test), y_test) > 0.9


def test_long_range_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="at least 2 patterns"):
        LongRangeTask(patterns=1)
    with pytest.raises(ValueError, match="do not fit"):
        LongRangeTask(size=10, patch=5, jitter=1)
    with pytest.raises(ValueError, match="distinct"):
        LongRangeTask(patch=1, patterns=3, size=8)
    with pytest.raises(ValueError, match="non-negative"):
        LongRangeTask(noise=-1.0)
