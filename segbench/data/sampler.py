"""An iteration-based sampler whose stream is a pure function of (seed, position): resuming at iteration k replays
exactly what an uninterrupted run would have seen, without loading the skipped samples."""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch
import torch.utils.data


def mix_seed(*parts: int) -> int:
    """A 31-bit seed from integers (run seed, stream position, purpose): stable across runs and platforms."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") & (2 ** 31 - 1)


class SeededStreamSampler(torch.utils.data.Sampler):
    """Yields `(index, sample_seed)` pairs: epoch-wise permutations of the dataset, one stream sharded over ranks.

    Position p of the global stream goes to rank `p % world_size`; `start` is the global position to begin at.
    """

    def __init__(self, num_samples: int, seed: int, start: int = 0, total: int | None = None, rank: int = 0,
                 world_size: int = 1):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.start, self.total = num_samples, seed, start, total
        self.rank, self.world_size = rank, world_size
        self._perm_epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[offset]

    def _item(self, position: int) -> tuple[int, ...]:
        """What the stream holds at a global position: (dataset index, augmentation seed)."""
        return self._index(position), mix_seed(self.seed, position, 1)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        p = self.start + self.rank
        while self.total is None or p < self.total:
            yield self._item(p)
            p += self.world_size

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("infinite stream has no length")
        return max(0, -(-(self.total - self.start - self.rank) // self.world_size))


class SeededTransformDataset(torch.utils.data.Dataset):
    """Wraps an adapter so each `(index, seed)` item is augmented with its own seed."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, ...]):
        index, seed, *focus = item
        image, label = self.dataset.load_pair(index)
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)
        extra = {"focus": focus[0]} if focus and focus[0] >= 0 else {}
        out = self.transform(image=image, mask=label, **extra)
        return out["image"], out["mask"]
