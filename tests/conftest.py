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


def snapshot(*roots) -> dict:
    """sha256 of every file under ``roots`` (hidden ones included; symlinks as where they point): "the data
    is intact" is ``snapshot(...)`` before == after."""
    import hashlib
    import os
    from pathlib import Path

    out = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                out[os.path.join(folder, name) + "/"] = "dir"
            for name in files:
                p = Path(folder) / name
                # a symlink by its target (never read through: tests check files outside stay unread)
                out[str(p)] = f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``simulacra ARGS`` in this process: (exit code, stdout, stderr)."""
    from simulacra.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *names: str) -> str:
    """A refusal as the issue wants it: non-zero exit, exactly one stderr line, naming what was wrong, and one
    simulacra anticipated (not the CLI's catch-all for unexpected exceptions, which asks for --debug)."""
    lines = err.strip().splitlines()
    assert code != 0, f"exit code {code}, stderr {err!r}"
    assert len(lines) == 1, f"want one stderr line, got {lines!r}"
    assert "error:" in lines[0] and "--debug" not in lines[0] and "Traceback" not in err, lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process torch on one thread (a module opts in with ``pytestmark``): OpenMP threads crawl on a
    shared, oversubscribed 2-core CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
