"""Training windows: content, coverage, random order through a DataLoader, held-out split."""

import numpy as np
import pytest
import torch

from simulacra.data import Dataset, WindowDataset, split_episodes
from simulacra.errors import DatasetError


def test_window_content_matches_episode(synthetic):
    root, eps = synthetic
    wd = WindowDataset(Dataset.open(root), num_steps=8)
    # windows of 8 steps: episodes of 40, 25, 7 steps give 33 + 18 + 0 starts
    assert len(wd) == 33 + 18
    for k in (0, 5, 32, 33, len(wd) - 1):
        item = wd[k]
        i, s = int(item["episode"]), int(item["start"])
        ref = eps[i]
        assert item["frames"].shape == (9, 3, 16, 16) and item["frames"].dtype == torch.uint8
        np.testing.assert_array_equal(item["frames"].permute(0, 2, 3, 1).numpy(), ref["frames"][s : s + 9])
        np.testing.assert_array_equal(item["action"].numpy(), ref["action"][s : s + 8])
        np.testing.assert_array_equal(item["reward"].numpy(), ref["reward"][s : s + 8])
        np.testing.assert_array_equal(item["terminated"].numpy(), ref["terminated"][s : s + 8])
        assert item["action"].dtype == torch.int64 and bool(item["has_action"])
    # the last window of an episode ends on its final frame
    last = wd[32]
    assert int(last["start"]) == 32 and bool(last["terminated"][-1])


def test_random_order_loader_with_workers(synthetic):
    root, _ = synthetic
    wd = WindowDataset(Dataset.open(root), num_steps=4, stride=2)
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(wd, batch_size=5, shuffle=True, num_workers=2, generator=g)
    seen = []
    for batch in loader:
        assert batch["frames"].shape[1:] == (5, 3, 16, 16)
        seen += list(zip(batch["episode"].tolist(), batch["start"].tolist(), strict=True))
    assert sorted(seen) == sorted(map(tuple, wd.index_NE.tolist())) and seen != sorted(seen)


def test_too_short_and_box_windows(tmp_path):
    from conftest import make_synthetic

    make_synthetic(tmp_path / "b", lengths=(5, 6), discrete=False)
    ds = Dataset.open(tmp_path / "b")
    with pytest.raises(DatasetError, match="no episode has 10 steps"):
        WindowDataset(ds, num_steps=10)
    item = WindowDataset(ds, num_steps=6)[0]
    assert item["action"].shape == (6, 2) and item["action"].dtype == torch.float32


def test_split_is_by_episode_and_deterministic(tmp_path):
    from conftest import make_synthetic

    make_synthetic(tmp_path / "s", lengths=tuple(range(5, 25)))
    ds = Dataset.open(tmp_path / "s")
    train, held = split_episodes(ds, 0.2, seed=3)
    assert len(held) == 4 and not set(train) & set(held) and sorted(train + held) == list(range(20))
    assert split_episodes(ds, 0.2, seed=3) == (train, held)
