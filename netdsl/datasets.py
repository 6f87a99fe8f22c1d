"""Synthetic image tasks for training runs, and the image resizing they share (numpy only).

:class:`LongRangeTask` makes images whose label depends on two features far apart: a patch in
the top-left corner and one in the bottom-right corner, each drawn from a small bank of random
+-1 patterns, on a noisy background; the label says whether the two patches are the same
pattern. The label is independent of each patch alone. A network whose receptive field cannot
hold both corners at once, followed by a global average pool and a linear classifier, computes
logits ``g(left patch) + h(right patch)``; since the task is symmetric under relabelling the
patterns, the best such sum under the cross-entropy loss is the same for every image, so it
learns nothing beyond chance. A network relating distant positions (CSA's rotation) can learn it.

:func:`resize_bilinear` resamples ``[N, C, h, w]`` image batches (e.g. 8x8 digits to a model's
32x32 input) the way PyTorch's bilinear interpolation without corner alignment does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LongRangeTask", "resize_bilinear"]


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of 1-D linear interpolation with half-pixel centres, edges clamped."""
    centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    centre = np.clip(centre, 0.0, n_in - 1)
    low = np.floor(centre).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    frac = centre - low
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """``images [N, C, h, w]`` resized to ``[N, C, height, width]`` by bilinear interpolation (float32).

    Sample positions follow ``align_corners=False`` (half-pixel centres), as in PyTorch's
    ``F.interpolate(mode="bilinear")`` without antialiasing; the result keeps the input's range.
    """
    if images.ndim != 4:
        raise ValueError(f"resize_bilinear expects [N, C, h, w] images, found shape {images.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, found {height}x{width}")
    rows = _interpolation_matrix(images.shape[2], height)
    cols = _interpolation_matrix(images.shape[3], width)
    out = np.einsum("yh,nchw,xw->ncyx", rows, images.astype(np.float64), cols)
    return out.astype(np.float32)


@dataclass(frozen=True)
class LongRangeTask:
    """Images ``[N, channels, size, size]`` labelled 1 when the two corner patches match, else 0.

    ``patterns`` random +-1 patches of ``patch x patch`` pixels are drawn once from
    ``pattern_seed`` (train and test sets share them). Each image has one of them in the
    top-left corner and one in the bottom-right corner, each shifted inwards by a random 0 to
    ``jitter`` pixels per axis, over Gaussian background noise of std ``noise``; every channel
    holds the same picture. Half the images (rounded down) have matching patches; the other
    patch of a non-matching image is drawn uniformly from the other patterns.
    """

    size: int = 32
    patch: int = 6
    patterns: int = 2
    noise: float = 0.3
    jitter: int = 2
    channels: int = 1
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        if self.patterns < 2:
            raise ValueError(f"the task needs at least 2 patterns, found {self.patterns}")
        if self.patch < 1 or self.jitter < 0 or self.channels < 1 or self.noise < 0:
            raise ValueError("patch and channels must be positive, jitter and noise non-negative")
        if 2 * (self.patch + self.jitter) > self.size:
            raise ValueError(f"two {self.patch}-pixel patches with jitter {self.jitter} do not fit apart "
                             f"in a {self.size}-pixel image")
        if self.patterns > 2 ** (self.patch * self.patch):
            raise ValueError(f"only {2 ** (self.patch * self.patch)} distinct {self.patch}x{self.patch} patterns exist")

    @property
    def chance(self) -> float:
        """Accuracy of always answering the majority class (0.5 up to rounding)."""
        return 0.5

    def pattern_bank(self) -> np.ndarray:
        """The ``[patterns, patch, patch]`` +-1 patterns, distinct, fixed by ``pattern_seed``."""
        rng = np.random.default_rng(self.pattern_seed)
        bank: list[np.ndarray] = []
        while len(bank) < self.patterns:
            candidate = rng.choice(np.array([-1.0, 1.0]), size=(self.patch, self.patch))
            if not any(np.array_equal(candidate, b) for b in bank):
                bank.append(candidate)
        return np.stack(bank).astype(np.float32)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` images (float32 ``[n, channels, size, size]``) and labels (int64 ``[n]``), shuffled."""
        rng = np.random.default_rng(seed)
        bank = self.pattern_bank()
        labels = rng.permutation(np.arange(n) < n // 2).astype(np.int64)
        first = rng.integers(0, self.patterns, n)
        # A non-matching partner: a uniform draw among the other patterns.
        other = (first + rng.integers(1, self.patterns, n)) % self.patterns
        second = np.where(labels == 1, first, other)
        images = rng.normal(0.0, self.noise, (n, self.size, self.size)).astype(np.float32)
        p, far = self.patch, self.size - self.patch
        offsets = rng.integers(0, self.jitter + 1, (n, 4))
        for i in range(n):
            top, left, bottom, right = offsets[i]
            images[i, top : top + p, left : left + p] = bank[first[i]]
            images[i, far - bottom : far - bottom + p, far - right : far - right + p] = bank[second[i]]
        return np.repeat(images[:, None], self.channels, axis=1), labels

    def split(self, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Independent train and test sets from one ``seed``: ``(x_train, y_train, x_test, y_test)``."""
        train_seed, test_seed = np.random.SeedSequence(seed).generate_state(2)
        return (*self.sample(n_train, int(train_seed)), *self.sample(n_test, int(test_seed)))
