"""Which seeded stream a training run draws from: the plain epoch-wise stream, the class-uniform one
(`train.class_uniform`), or, for a union of sources, a weighted stream over the sources' own streams
(`train.source_weights`). Every one is a pure function of (seed, position), so a resumed run replays it exactly."""
from __future__ import annotations

from ..config import TrainSettings
from ..source_weights import weights_per_part
from .class_uniform import ClassUniformStreamSampler, class_presence
from .multisource import MultiSourceDataset
from .sampler import SOURCE_STREAM, MultiSourceStreamSampler, SeededStreamSampler, mix_seed


def _one_source(dataset, class_uniform: float, seed: int, keep: tuple[int, ...] | None = None,
                **stream) -> SeededStreamSampler:
    if class_uniform > 0:
        presence = class_presence(dataset)
        if keep is not None:  # a union's class set: never centre a crop on a class trained as ignored
            presence = [[c for c in classes if c in keep] for classes in presence]
        return ClassUniformStreamSampler(presence, class_uniform, seed, **stream)
    return SeededStreamSampler(len(dataset), seed, **stream)


def training_stream(dataset, settings: TrainSettings, seed: int, **stream) -> SeededStreamSampler:
    """The sampler of one training run; `stream` is SeededStreamSampler's start/total/rank/world_size."""
    if not isinstance(dataset, MultiSourceDataset):
        return _one_source(dataset, settings.class_uniform, seed, **stream)
    weights = weights_per_part(dataset.names, dataset.sizes, settings.source_weights)
    # each source's own stream has its own seed: the sources' epochs are independent shuffles
    sources = [_one_source(part, settings.class_uniform, mix_seed(seed, k, SOURCE_STREAM), dataset.classes)
               for k, part in enumerate(dataset.parts)]
    return MultiSourceStreamSampler(sources, weights, seed, **stream)
