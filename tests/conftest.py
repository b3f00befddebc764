import numpy as np
import pytest

from simulacra.data.store import DatasetWriter


def make_synthetic(root, lengths=(40, 25, 7), discrete=True, frame=16, seed=0, block_frames=8):
    """A small data set with known content: frame pixels encode (episode, step) so slices are checkable."""
    rng = np.random.default_rng(seed)
    space = (
        {"type": "discrete", "n": 4, "start": 0}
        if discrete
        else {"type": "box", "shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0], "dtype": "float32"}
    )
    w = DatasetWriter(
        root,
        {"frame_shape": [frame, frame, 3], "action_space": space, "env_id": "synthetic"},
        block_frames=block_frames,
    )
    episodes = []
    for e, L in enumerate(lengths):
        frames = rng.integers(0, 256, size=(L + 1, frame, frame, 3), dtype=np.uint8)
        frames[:, 0, 0, 0] = e
        frames[:, 0, 0, 1] = np.arange(L + 1) % 256
        actions = rng.integers(0, 4, size=L) if discrete else rng.uniform(-1, 1, size=(L, 2)).astype(np.float32)
        rewards = rng.normal(size=L).astype(np.float32)
        term = np.zeros(L, bool)
        term[-1] = e % 2 == 0
        trunc = np.zeros(L, bool)
        trunc[-1] = not term[-1]
        w.add_episode(frames, actions, rewards, term, trunc, seed=100 + e, env_id="synthetic", policy="random")
        episodes.append(
            {"frames": frames, "action": actions, "reward": rewards, "terminated": term, "truncated": trunc}
        )
    return episodes


@pytest.fixture
def synthetic(tmp_path):
    root = tmp_path / "ds"
    return root, make_synthetic(root)
