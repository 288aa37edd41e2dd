"""Segmentation datasets and loaders.

Augmentation randomness is a pure function of (seed, epoch, sample index): the sampler hands each
index its own seed, so a run gives the same batches with 0 or N workers, and after a resume.
"""
from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.augment import reseed
from utils.errors import UserError
from utils.imageio import ImageDecodeError, decode_image
from utils.masks import MaskSpec, read_mask

if TYPE_CHECKING:
    from utils.dataset_check import SplitReport


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 image through the one decoder (utils.imageio); UserError naming the file when unusable."""
    try:
        return decode_image(path)
    except ImageDecodeError as e:
        raise UserError(f"{path}: image cannot be decoded ({e.reason})") from None


AUTO_CACHE_LIMIT = 1 << 30  # --cache auto keeps decoded splits up to 1 GiB in RAM (and a quarter of what is free)


def decoded_bytes(report: "SplitReport", spec: MaskSpec) -> int:
    """Bytes a split's usable pairs take decoded (RGB uint8 + mask), from the pixel counts of its check."""
    pixels = sum(report.class_pixels) + (report.ignore_pixels if spec.ignore_index >= spec.nc else 0)
    return int(pixels) * (3 + np.dtype(spec.dtype).itemsize)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cache_plan(mode: str | None, train_bytes: int, val_bytes: int,
               free: int | None = None) -> tuple[bool, bool, str | None]:
    """(cache train, cache val, a line to log) for ``--cache auto|ram|none``.

    auto caches what fits in min(AUTO_CACHE_LIMIT, free memory / 4), train first: decoding a small
    dataset again every epoch costs more than the model's step on a CPU (half of the data time of the
    quickstart went to JPEG/PNG decoding), while a large one would not fit.
    """
    if mode in (None, "", "none"):
        return False, False, None
    if mode == "ram":
        return True, True, None
    if mode != "auto":
        raise UserError(f"--cache {mode}: use auto, ram or none")
    free = available_memory() if free is None else free
    limit = AUTO_CACHE_LIMIT if free is None else min(AUTO_CACHE_LIMIT, free // 4)
    train = train_bytes <= limit
    val = (train_bytes if train else 0) + val_bytes <= limit
    if train:
        return train, val, None
    return False, val, (f"Decoding the training images every epoch: ~{train_bytes / 2**30:.1f} GiB decoded is over "
                        f"--cache auto's {limit / 2**30:.1f} GiB (--cache ram caches anyway)")


class SegDataset(Dataset):
    """(image, mask) pairs through a paired transform.

    Training items are (uint8 image CHW at the training size, int64 mask HW at that size, index).
    Evaluation items are (uint8 image CHW resized to the eval size, int64 mask at its ORIGINAL size,
    index): metrics are computed against original-resolution masks.
    """

    def __init__(self, items: Sequence[tuple[Path, Path]], spec: MaskSpec, transform: A.Compose,
                 train: bool, cache: str | None = None) -> None:
        self.items = list(items)
        self.spec, self.transform, self.train = spec, transform, train
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cache == "ram":
            self._cache = [self._decode(i) for i in range(len(self.items))]
        elif cache not in (None, "", "none", False):
            raise UserError(f"cache={cache!r}: use 'ram' or None (--cache auto is resolved by cache_plan)")

    def __len__(self) -> int:
        return len(self.items)

    def cache_bytes(self) -> int:
        """Bytes held by the RAM cache (0 without one)."""
        return sum(a.nbytes + b.nbytes for a, b in self._cache) if self._cache else 0

    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.items[i]
        img = read_image(image_path)
        return img, read_mask(mask_path, self.spec, img.shape[:2])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, i_seed(key))
        img, mask = self._cache[i] if self._cache is not None else self._decode(i)
        reseed(self.transform, seed)
        if self.train:
            out = self.transform(image=img, mask=mask)
            img, mask = out["image"], out["mask"]
        else:
            img = self.transform(image=img)["image"]
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return image, torch.from_numpy(mask.astype(np.int64)), i


def i_seed(index: int, seed: int = 0, epoch: int = 0) -> int:
    """The augmentation seed of one sample: a hash of (seed, epoch, index), stable across processes."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSampler(Sampler):
    """Epoch-seeded order, optionally sharded over ``world_size`` ranks; yields (index, sample seed).

    The permutation depends only on (seed, epoch), so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0
        # Training shards are padded to equal length (every rank must take the same number of steps);
        # evaluation shards are not, so no image is counted twice in the reduced metrics.
        self.num_samples = math.ceil(n / world_size) if shuffle else len(range(rank, n, world_size))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip its first ``start`` samples (resuming mid-epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.shuffle:
            order += order[: self.num_samples * self.world_size - self.n]
        for i in order[self.rank::self.world_size][self.start:]:
            yield i, i_seed(i, self.seed, self.epoch)


def collate_train(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    images, masks, idx = zip(*batch)
    return torch.stack(images), torch.stack(masks), list(idx)


def collate_eval(batch: list) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    images, masks, idx = zip(*batch)
    return torch.stack(images), list(masks), list(idx)


def _worker_init(_: int) -> None:
    cv2.setNumThreads(0)  # one process per core already; nested OpenCV threads only contend
    # Ctrl-C and `kill -TERM -<pgid>` reach the workers too; a worker dying of them would crash the main
    # process mid-step. The main process handles the stop (saves last.pt) and then shuts its workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(dataset: SegDataset, batch_size: int, workers: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """DataLoader over ``dataset`` with a SeededSampler (call ``loader.sampler.set_epoch(e)`` per epoch)."""
    sampler = SeededSampler(len(dataset), shuffle, seed, rank, world_size)
    drop_last = dataset.train and len(sampler) > batch_size  # a full batch for BatchNorm when possible
    # The loader's own generator keeps it from drawing worker seeds out of the global torch RNG.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_train if dataset.train else collate_eval, pin_memory=pin_memory,
                      drop_last=drop_last, worker_init_fn=_worker_init if workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed),
                      # workers hold no state (order and seeds come from the sampler in this process),
                      # so they can live across epochs instead of being forked again for each one
                      persistent_workers=workers > 0)


def class_weights_from_counts(counts: Sequence[int]) -> list[float]:
    """ENet-style class weights 1 / ln(1.02 + p_c) from pixel counts, scaled to mean 1 over present classes.

    Bounded (about 1.4 for a dominant class up to 50 for a vanishing one), unlike inverse frequency.
    Classes with no pixels get weight 0: they cannot occur in the targets anyway.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        raise UserError("--class-weights auto: the training masks hold no labelled pixels")
    p = c / c.sum()
    w = np.where(c > 0, 1.0 / np.log(1.02 + p), 0.0)
    w = w / w[c > 0].mean()
    return [round(float(v), 6) for v in w]
