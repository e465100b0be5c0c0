"""An iteration-based sampler whose stream is a pure function of (seed, position): resuming at iteration k replays
exactly what an uninterrupted run would have seen, without loading the skipped samples."""
from __future__ import annotations

import hashlib
from fractions import Fraction
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from ..config import ConfigError
from .multisource import source_part


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


#: smallest block of a multi-source stream: each part's share of a block is then within 1/2000 of its weight
MIN_BLOCK = 1000
#: `mix_seed` purposes of the multi-source stream (1 and 2 are the augmentation seed and the class-uniform draw)
BLOCK_ORDER, SOURCE_STREAM = 3, 4


def block_quota(weights: Sequence[float], block: int) -> list[int]:
    """Positions of each part in a block of `block`: `block * w / sum(w)` rounded by largest remainder (ties to the
    earlier part), in exact arithmetic, so the quotas add up to `block` and equal weights never drift apart."""
    exact = [Fraction(w) for w in weights]
    total = sum(exact)
    shares = [w * block / total for w in exact]
    quota = [int(q) for q in shares]  # floor: shares are positive
    order = sorted(range(len(shares)), key=lambda k: (-(shares[k] - quota[k]), k))
    for k in order[: block - sum(quota)]:
        quota[k] += 1
    return quota


class MultiSourceStreamSampler(SeededStreamSampler):
    """The stream of a union of sources (`multisource.MultiSourceDataset`): each position draws from one source, in
    proportion to `weights`, and within that source from the source's own stream (`sources[k]`: a
    SeededStreamSampler or a class-uniform one), so every source is still walked epoch by epoch without replacement.

    Positions come in blocks of `block` (default max(union size, MIN_BLOCK)); a block holds exactly `block_quota`
    positions of each source, in an order shuffled per block from (seed, block number). Position p therefore knows,
    without counting, its source k and how many positions of k came before it (block e: e * quota_k plus its rank
    among k's positions in the block), which is where it reads k's stream: the whole stream is a pure function of
    (seed, position), so resume replays it exactly. With the default weights (the sizes) and a union of at least
    MIN_BLOCK images, a block holds every image of the union exactly once.

    Yields (index in the union, augmentation seed, focus class or -1).
    """

    def __init__(self, sources: Sequence[SeededStreamSampler], weights: Sequence[float], seed: int,
                 block: int | None = None, **stream):
        if len(sources) != len(weights) or not sources:
            raise ValueError("one weight per source")
        sizes = [s.n for s in sources]
        super().__init__(sum(sizes), seed, **stream)
        self.sources = list(sources)
        self.offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        self.block = int(block or max(self.n, MIN_BLOCK))
        self.quota = block_quota(weights, self.block)
        if min(self.quota) == 0:
            k = self.quota.index(0)
            raise ConfigError(f"train.source_weights: source {k + 1}'s weight {weights[k]} is below one position in "
                              f"{self.block} of the stream; raise it or leave that source out of the spec")
        self._layout_block, self._owner, self._rank = -1, None, None

    def _layout(self, block: int) -> None:
        """Which source each position of `block` reads, and its rank among that source's positions in the block."""
        owner = np.repeat(np.arange(len(self.quota)), self.quota)
        g = torch.Generator().manual_seed(mix_seed(self.seed, block, BLOCK_ORDER))
        owner = owner[torch.randperm(self.block, generator=g).numpy()]
        rank = np.empty(self.block, dtype=np.int64)
        for k in range(len(self.quota)):
            where = np.flatnonzero(owner == k)
            rank[where] = np.arange(len(where))
        self._layout_block, self._owner, self._rank = block, owner, rank

    def _item(self, position: int) -> tuple[int, int, int]:
        block, slot = divmod(position, self.block)
        if block != self._layout_block:
            self._layout(block)
        k = int(self._owner[slot])
        index, _, *focus = self.sources[k]._item(block * self.quota[k] + int(self._rank[slot]))
        return self.offsets[k] + index, mix_seed(self.seed, position, 1), (focus[0] if focus else -1)


class SeededTransformDataset(torch.utils.data.Dataset):
    """Wraps an adapter so each `(index, seed)` item is augmented with its own seed; yields (image, mask, domain),
    the domain being the source part the index reads (`multisource.source_part`), found from the index alone, so
    the stream and the augmentation draw exactly what they would without it."""

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
        return out["image"], out["mask"], source_part(self.dataset, index)
