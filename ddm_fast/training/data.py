"""Data order: which samples every step of every rank trains on, as a
function of (seed, step) only, so that a resumed run sees the batches an
uninterrupted one would."""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Union

import torch
from torch.utils.data import Dataset, Sampler, default_collate

from ..seeds import TAG_PERMUTATION, derive_seed

__all__ = ["Batch", "DataSource", "StepBatchSampler", "TensorDictDataset",
           "collate", "as_dataset", "fetch"]

Batch = Dict[str, torch.Tensor]
DataSource = Union[Mapping[str, torch.Tensor], Dataset]


class StepBatchSampler(Sampler):
    """Local batch indices for steps ``start_step``, ``start_step + 1``, ...

    Epoch e is a permutation drawn from the stream (seed, TAG_PERMUTATION,
    e); step s takes global batch s mod (N // global_batch) of its epoch
    (incomplete batches are dropped) and rank r keeps the r-th contiguous
    slice of it.
    """

    def __init__(self, n_items: int, global_batch: int, rank: int,
                 world_size: int, seed: int, start_step: int, end_step: int):
        self.n_items = n_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self.batches_per_epoch = n_items // global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(
            derive_seed(self.seed, TAG_PERMUTATION, epoch))
        return torch.randperm(self.n_items, generator=gen)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[List[int]]:
        epoch, perm = None, None
        for step in range(self.start_step, self.end_step):
            step_epoch, position = divmod(step, self.batches_per_epoch)
            if step_epoch != epoch:
                epoch, perm = step_epoch, self.permutation(step_epoch)
            start = position * self.global_batch + self.rank * self.local_batch
            yield perm[start:start + self.local_batch].tolist()


class TensorDictDataset(Dataset):
    """A mapping of tensors sharing their first dimension, as a dataset whose
    ``__getitems__`` slices all of them at once (no per-item collation)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, index: int) -> Batch:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: List[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}


def collate(batch):
    """A dict batch as it is (TensorDictDataset already stacked it), a list
    of per-item dicts through torch's default collation."""
    return batch if isinstance(batch, dict) else default_collate(batch)


def fetch(dataset: Dataset, indices: List[int]) -> Batch:
    """The batch of ``indices`` from ``dataset``, as the loader builds it."""
    if hasattr(dataset, "__getitems__"):
        return collate(dataset.__getitems__(indices))
    return collate([dataset[i] for i in indices])


def as_dataset(name: str, data: DataSource) -> Dataset:
    """``data`` (a mapping of tensors or a Dataset of dicts) as a Dataset;
    errors name the argument ``name``."""
    if isinstance(data, Mapping):
        if "data" not in data:
            raise ValueError(f"{name} must hold a 'data' tensor, got keys "
                             f"{sorted(data)}")
        lengths = set()
        for key, value in data.items():
            if not isinstance(value, torch.Tensor) or value.ndim < 1:
                raise TypeError(f"{name}[{key!r}] must be a tensor with a "
                                f"sample dimension, got {type(value).__name__}")
            lengths.add(value.shape[0])
        if len(lengths) != 1:
            raise ValueError(f"the tensors of {name} must share their first "
                             f"(sample) dimension, got lengths {sorted(lengths)}")
        return TensorDictDataset(data)
    if isinstance(data, Dataset):
        return data
    raise TypeError(f"{name} must be a mapping of tensors or a "
                    f"torch.utils.data.Dataset of dicts, got {type(data).__name__}")
