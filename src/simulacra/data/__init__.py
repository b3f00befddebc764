"""Data: record from real envs, the data set store, training windows, import/export, previews."""

from simulacra.data.store import Dataset, DatasetWriter, EpisodeMeta
from simulacra.data.windows import WindowDataset, split_episodes

__all__ = ["Dataset", "DatasetWriter", "EpisodeMeta", "WindowDataset", "split_episodes"]
