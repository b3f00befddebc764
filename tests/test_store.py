"""The data set store: lossless round trip, block-crossing reads, crash leftovers, corrupt input."""

import json

import numpy as np
import pytest
from conftest import make_synthetic

from simulacra.cli import main
from simulacra.data.store import INFO, MANIFEST, Dataset, DatasetWriter, encode_episode
from simulacra.data.verify import repair_dataset
from simulacra.data.windows import WindowDataset
from simulacra.errors import DatasetError, SimulacraError
from simulacra.spaces import ActionSpace


def test_round_trip_is_lossless(synthetic):
    root, eps = synthetic
    ds = Dataset.open(root)
    assert len(ds) == 3 and ds.num_steps == 40 + 25 + 7 and ds.num_frames == ds.num_steps + 3
    for i, ref in enumerate(eps):
        got = ds.episode(i)
        for key in ("frames", "action", "reward", "terminated", "truncated"):
            np.testing.assert_array_equal(got[key], ref[key])
        assert ds.episodes[i].seed == 100 + i and ds.episodes[i].length == len(ref["action"])


def test_box_actions_round_trip(tmp_path):
    eps = make_synthetic(tmp_path / "box", discrete=False)
    ds = Dataset.open(tmp_path / "box")
    np.testing.assert_array_equal(ds.arrays(1)["action"], eps[1]["action"])
    assert ds.arrays(1)["action"].dtype == np.float32


def test_any_slice_matches_across_block_boundaries(synthetic):
    root, eps = synthetic
    ds = Dataset.open(root)
    rng = np.random.default_rng(1)
    for _ in range(200):
        i = int(rng.integers(3))
        n = len(eps[i]["frames"])
        a = int(rng.integers(n))
        b = int(rng.integers(a + 1, n + 1))
        np.testing.assert_array_equal(ds.frames(i, a, b), eps[i]["frames"][a:b])
    with pytest.raises(IndexError):
        ds.frames(0, 10, 100)


def test_action_outside_space_is_refused_and_nothing_is_written(synthetic):
    root, _ = synthetic
    before = (root / MANIFEST).read_bytes()
    files = sorted(root.rglob("*.sep"))
    w = DatasetWriter(root)
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(DatasetError, match="outside the action space"):
        w.add_episode(frames, np.array([0, 1, 7]), np.zeros(3), np.zeros(3, bool), np.zeros(3, bool))
    with pytest.raises(DatasetError, match="outside the action space"):
        w.add_episode(frames, np.array([0, -1, 2]), np.zeros(3), np.zeros(3, bool), np.zeros(3, bool))
    assert (root / MANIFEST).read_bytes() == before and sorted(root.rglob("*.sep")) == files


def test_box_action_outside_space_is_refused(tmp_path):
    make_synthetic(tmp_path / "box", discrete=False)
    w = DatasetWriter(tmp_path / "box")
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(DatasetError, match="outside the action space"):
        w.add_episode(frames, np.array([[0.0, 0.5], [2.0, 0.0]]), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(DatasetError, match="shape"):
        w.add_episode(frames, np.zeros((2, 3)), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool))


def test_append_continues_indices(synthetic):
    root, _ = synthetic
    w = DatasetWriter(root)
    ep = w.add_episode(np.zeros((3, 16, 16, 3), np.uint8), [1, 2], [0, 0], [False, True], [False, False])
    assert ep.index == 3 and len(Dataset.open(root)) == 4


def test_wrong_format_version_fails_with_one_clear_line(synthetic, capsys):
    root, _ = synthetic
    info = json.loads((root / INFO).read_text())
    info["format_version"] = 99
    (root / INFO).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info.json: format version 99 is unknown"):
        Dataset.open(root)
    with pytest.raises(SystemExit) as e:
        main(["data", "info", str(root)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "format version 99" in err and "info.json" in err


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no data set here"):
        Dataset.open(tmp_path)
    (tmp_path / INFO).write_text("{not json")
    with pytest.raises(DatasetError, match="info.json: corrupt"):
        Dataset.open(tmp_path)


def test_corrupt_chunk_names_the_file(synthetic, capsys):
    root, _ = synthetic
    shard = root / Dataset.open(root).episodes[1].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside a compressed frame block
    shard.write_bytes(bytes(data))
    ds = Dataset.open(root)
    with pytest.raises(DatasetError, match=r"episode_000001\.sep: .*corrupt"):
        ds.frames(1)
    np.testing.assert_array_equal(ds.frames(0)[:2], Dataset.open(root).frames(0)[:2])  # others still load
    report = ds.verify()
    assert not report["ok"] and report["episodes_ok"] == 2
    assert [p["episode"] for p in report["problems"]] == [1]
    with pytest.raises(SystemExit) as e:
        main(["data", "verify", str(root)])
    assert e.value.code == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_truncated_shard_is_reported(synthetic):
    root, _ = synthetic
    shard = root / Dataset.open(root).episodes[0].file
    shard.write_bytes(shard.read_bytes()[:-50])
    ds = Dataset.open(root)
    with pytest.raises(DatasetError, match="truncated|corrupt"):
        ds.arrays(0)
    report = ds.verify()
    assert report["problems"][0]["episode"] == 0 and "truncated" in report["problems"][0]["problem"]


def test_crash_leftovers_load_and_are_reported_then_repaired(synthetic):
    root, eps = synthetic
    # a crash mid-episode-write leaves a temp shard; mid-manifest-append leaves a torn line;
    # between rename and append leaves a complete shard that is not registered.
    chunk = root / "data" / "chunk-000"
    (chunk / ".tmp-episode_000009.sep").write_bytes(b"partial")
    meta = {"index": 3, "length": 2, "ret": 0.0, "terminated": True, "truncated": False, "has_actions": True}
    arrays = {
        "reward": np.zeros(2, np.float32),
        "terminated": np.array([False, True]),
        "truncated": np.zeros(2, bool),
        "action": np.array([1, 2]),
    }
    (chunk / "episode_000003.sep").write_bytes(encode_episode(np.ones((3, 16, 16, 3), np.uint8), arrays, meta, 8))
    with open(root / MANIFEST, "a") as f:
        f.write('{"index": 3, "file": "data/chunk-000/episode_0')
    ds = Dataset.open(root)
    assert len(ds) == 3 and ds.torn_tail
    np.testing.assert_array_equal(ds.frames(2), eps[2]["frames"])
    report = ds.verify()
    assert report["intact"] and not report["ok"] and len(report["lost"]) == 3  # leftovers are failures too
    repaired = repair_dataset(root)
    assert repaired["ok"] and not repaired["lost"] and repaired["episodes"] == 4
    ds = Dataset.open(root)
    np.testing.assert_array_equal(ds.arrays(3)["action"], [1, 2])
    assert not list(chunk.glob(".tmp-*"))


def test_writer_after_crash_drops_torn_line(synthetic):
    root, _ = synthetic
    with open(root / MANIFEST, "a") as f:
        f.write('{"index": 3, "fi')
    w = DatasetWriter(root)
    w.add_episode(np.zeros((2, 16, 16, 3), np.uint8), [1], [0.0], [True], [False])
    ds = Dataset.open(root)
    assert len(ds) == 4 and not ds.torn_tail


def test_frame_shape_mismatch(synthetic):
    root, _ = synthetic
    with pytest.raises(DatasetError, match="frames are"):
        DatasetWriter(root).add_episode(np.zeros((2, 8, 8, 3), np.uint8), [1], [0.0], [True], [False])


def test_actions_are_checked_with_one_line_each(synthetic):
    root, _ = synthetic
    w = DatasetWriter(root)
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    zeros, no = np.zeros(3), np.zeros(3, bool)
    for bad, says in [
        (np.array([0, 2.7, 1]), "action 2.7 at index 1 is outside the action space Discrete(4)"),
        (np.array([True, False, True]), "must be numbers"),
        (np.array([0, np.nan, 1]), "nan at index 1"),
        (np.zeros((3, 1)), "expected actions of shape (3,)"),
        (np.array([0, 1]), "episode has 3 steps but 2 values of 'action'"),
    ]:
        with pytest.raises(DatasetError) as e:
            w.add_episode(frames, bad, zeros, no, no)
        assert says in str(e.value) and "\n" not in str(e.value)
    assert w.add_episode(frames, np.array([0.0, 1.0, 3.0]), zeros, no, no).length == 3  # integral floats are fine
    np.testing.assert_array_equal(Dataset.open(root).arrays(3)["action"], [0, 1, 3])
    assert Dataset.open(root).arrays(3)["action"].dtype == np.int64


def test_info_holds_the_action_space_canonically(tmp_path):
    w = DatasetWriter(tmp_path / "d", {"frame_shape": [16, 16, 3], "action_space": {"type": "discrete", "n": 3}})
    assert w.info["action_space"] == {"type": "discrete", "n": 3, "start": 0}
    ds = Dataset.open(tmp_path / "d")
    assert ds.info["action_space"] == {"type": "discrete", "n": 3, "start": 0}
    assert ds.action_space == ActionSpace.discrete(3)


def test_multi_discrete_data_set_is_refused_with_one_line(synthetic, tmp_path, capsys):
    root, _ = synthetic
    info = json.loads((root / INFO).read_text())
    info["action_space"] = {"type": "multi_discrete", "nvec": [3, 3]}
    (root / INFO).write_text(json.dumps(info))
    ds = Dataset.open(root)  # still opens: info, verify and view work on it
    assert len(ds) == 3
    with pytest.raises(DatasetError) as e:
        _ = ds.action_space
    assert "\n" not in str(e.value) and "MultiDiscrete" in str(e.value) and "info.json" in str(e.value)
    with pytest.raises(DatasetError, match="MultiDiscrete"):  # training stops before it starts
        WindowDataset(ds, num_steps=4)
    with pytest.raises(SimulacraError, match="MultiDiscrete"):  # nor can one be created
        DatasetWriter(tmp_path / "new", {"frame_shape": [16, 16, 3], "action_space": info["action_space"]})
    assert not (tmp_path / "new" / INFO).exists()
