"""Interop: LeRobot v3 export/import (ours and foreign), Minari import, video folders, failure hygiene, CLI."""

import io
import json
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_synthetic
from PIL import Image

from simulacra.cli import main
from simulacra.data.interop import EXPORTERS, IMPORTERS
from simulacra.data.store import Dataset, DatasetWriter
from simulacra.errors import DatasetError
from simulacra.spaces import ActionSpace, ActionSpaceError

STEP_KEYS = ("action", "reward", "terminated", "truncated")


def _import(fmt, source, out, resolution=None, image_key=None, overwrite=False):
    return IMPORTERS[fmt](str(source), str(out), overwrite=overwrite, resolution=resolution, image_key=image_key)


def _export(ds, out, video=False, overwrite=False):
    EXPORTERS["lerobot"](ds, str(out), video=video, overwrite=overwrite)


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _smooth_frames(n, e, size=32):
    """Smooth, moving, episode-distinct frames: what video codecs are made for."""
    y, x = np.mgrid[0:size, 0:size]
    out = []
    for t in range(n):
        r = 128 + 100 * np.sin((x + 3 * t + 7 * e) / 6.0)
        g = 128 + 100 * np.cos((y - 2 * t) / 7.0)
        b = np.full((size, size), (40 * e + 6 * t) % 200 + 20)
        out.append(np.stack([r, g, b], -1).astype(np.uint8))
    return np.stack(out)


def _nothing_left(out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial*"))
    with pytest.raises(DatasetError):
        Dataset.open(out)


# ---- (a) lossless LeRobot round trip ----------------------------------------------------------------
@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "box"])
def test_lerobot_round_trip_is_lossless(tmp_path, discrete):
    eps = make_synthetic(tmp_path / "src", lengths=(12, 7, 3), discrete=discrete)
    src = Dataset.open(tmp_path / "src")
    _export(src, tmp_path / "lr")
    back = _import("lerobot", tmp_path / "lr", tmp_path / "back")
    assert back.info["action_space"] == src.info["action_space"]
    assert back.info["frame_shape"] == src.info["frame_shape"] and back.info["source"] == "lerobot"
    assert len(back) == len(eps)
    for i, ref in enumerate(eps):
        got = back.episode(i)
        assert got["frames"].tobytes() == ref["frames"].tobytes()
        for key in STEP_KEYS:
            np.testing.assert_array_equal(got[key], ref[key])
            assert got[key].dtype == src.arrays(i)[key].dtype
        e = back.episodes[i]
        assert (e.seed, e.env_id, e.policy, e.source) == (100 + i, "synthetic", "random", "lerobot")
        assert e.extra["source_path"] == str((tmp_path / "lr").resolve()) and e.extra["source_episode"] == i


# ---- (b) the documented LeRobot v3 layout ------------------------------------------------------------
def test_lerobot_layout_has_documented_files_and_fields(tmp_path):
    eps = make_synthetic(tmp_path / "src", lengths=(5, 3), discrete=True)
    _export(Dataset.open(tmp_path / "src"), tmp_path / "lr")
    root = tmp_path / "lr"
    for rel in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                "data/chunk-000/file-000.parquet"):  # fmt: skip
        assert (root / rel).is_file(), rel
    assert not (root / "videos").exists()
    info = json.loads((root / "meta/info.json").read_text())
    n_frames = sum(len(e["frames"]) for e in eps)
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, n_frames, 1)
    assert (info["chunks_size"], info["fps"], info["splits"]) == (1000, 15, {"train": "0:2"})
    assert info["data_files_size_in_mb"] > 0 and info["video_files_size_in_mb"] > 0 and "robot_type" in info
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None
    feats = info["features"]
    assert feats["observation.image"] == {
        "dtype": "image",
        "shape": [16, 16, 3],
        "names": ["height", "width", "channels"],
    }
    assert feats["action"]["dtype"] == "int64" and feats["action"]["shape"] == [1]
    assert feats["next.reward"]["dtype"] == "float32" and feats["next.done"]["dtype"] == "bool"
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[k]["shape"] == [1] and "names" in feats[k]
    assert info["simulacra"]["action_space"] == {"type": "discrete", "n": 4, "start": 0}

    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    schema = data.schema
    assert set(schema.names) == set(feats)
    assert schema.field("observation.image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert schema.field("action").type == pa.int64() and schema.field("next.reward").type == pa.float32()
    assert schema.field("next.done").type == pa.bool_() and schema.field("timestamp").type == pa.float32()
    assert json.loads(schema.metadata[b"huggingface"])["info"]["features"]["observation.image"] == {"_type": "Image"}
    rows = data.to_pylist()
    assert len(rows) == n_frames and [r["index"] for r in rows] == list(range(n_frames))
    first = rows[: len(eps[0]["frames"])]
    assert [r["frame_index"] for r in first] == list(range(6)) and {r["episode_index"] for r in first} == {0}
    np.testing.assert_allclose([r["timestamp"] for r in first], np.arange(6) / 15, rtol=1e-6)
    png = first[2]["observation.image"]["bytes"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), eps[0]["frames"][2])
    assert [r["action"] for r in first[:-1]] == eps[0]["action"].tolist() and first[-1]["action"] == 0
    np.testing.assert_allclose([r["next.reward"] for r in first[:-1]], eps[0]["reward"], rtol=1e-6)
    assert [r["next.done"] for r in first] == [False] * 4 + [True, True]  # episode 0 terminates on its last step
    assert [r["next.terminated"] for r in first][-2:] == [True, True]

    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == [0, 1] and [e["length"] for e in episodes] == [6, 4]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 6), (6, 10)]
    assert all(
        e["data/chunk_index"] == 0 and e["data/file_index"] == 0 and e["tasks"] == ["synthetic"] for e in episodes
    )
    assert episodes[0]["stats/action/count"] == [6]

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task_index").to_pylist() == [0]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == ["synthetic"]

    stats = json.loads((root / "meta/stats.json").read_text())
    img = {k: np.asarray(v) for k, v in stats["observation.image"].items()}
    assert img["mean"].shape == (3, 1, 1) and img["count"].tolist() == [n_frames]
    assert 0 <= img["min"].min() <= img["max"].max() <= 1
    all_frames = np.concatenate([e["frames"] for e in eps]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(img["mean"].ravel(), all_frames.mean(0), atol=1e-9)
    np.testing.assert_allclose(img["std"].ravel(), all_frames.std(0), atol=1e-9)
    np.testing.assert_allclose(stats["next.reward"]["max"], [max(e["reward"].max() for e in eps)], rtol=1e-6)
    assert set(stats) == set(feats) and stats["index"]["count"] == [n_frames]


# ---- (c) video export: lossy but close -----------------------------------------------------------------
def test_lerobot_video_round_trip_is_close(tmp_path):
    w = DatasetWriter(
        tmp_path / "src", {"frame_shape": [32, 32, 3], "action_space": {"type": "discrete", "n": 3}, "fps": 10}
    )
    refs = []
    for e, L in enumerate((9, 5, 3)):
        frames = _smooth_frames(L + 1, e)
        act, rew = np.arange(L) % 3, np.linspace(0, 1, L, dtype=np.float32)
        term, trunc = np.zeros(L, bool), np.zeros(L, bool)
        (term if e % 2 else trunc)[-1] = True
        w.add_episode(frames, act, rew, term, trunc, seed=e)
        refs.append((frames, act, rew, term, trunc))
    _export(Dataset.open(tmp_path / "src"), tmp_path / "lv", video=True)
    root = tmp_path / "lv"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.image"]["dtype"] == "video"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (root / "videos/observation.image/chunk-000/file-000.mp4").is_file()
    assert "observation.image" not in pq.read_schema(root / "data/chunk-000/file-000.parquet").names
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    spans = [
        (e["videos/observation.image/from_timestamp"], e["videos/observation.image/to_timestamp"]) for e in episodes
    ]
    np.testing.assert_allclose(spans, [(0, 1.0), (1.0, 1.6), (1.6, 2.0)])
    assert all(e["videos/observation.image/chunk_index"] == 0 for e in episodes)
    back = _import("lerobot", root, tmp_path / "back")
    assert len(back) == 3 and back.info["action_space"] == {"type": "discrete", "n": 3, "start": 0}  # restored exactly
    for i, (frames, act, rew, term, trunc) in enumerate(refs):
        got = back.episode(i)
        assert got["frames"].shape == frames.shape
        assert min(_psnr(g, f) for g, f in zip(got["frames"], frames, strict=True)) > 30
        for key, ref in zip(STEP_KEYS, (act, rew, term, trunc), strict=True):
            np.testing.assert_array_equal(got[key], ref)


# ---- importing LeRobot data sets that did not come from simulacra ------------------------------------------
def _foreign_lerobot(root: Path, *, action: str, video: bool, lengths=(6, 4), fps=10):
    """A LeRobot v3 data set as LeRobot itself lays it out: no simulacra extras, next.done on the last frame."""
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    rng = np.random.default_rng(0)
    feats = {"observation.image": {"dtype": "video" if video else "image", "shape": [3, 32, 32], "names": ["channels", "height", "width"]},
             "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]}}  # fmt: skip
    if action == "box":
        feats["action"] = {"dtype": "float32", "shape": [2], "names": ["dx", "dy"]}
    elif action == "discrete":
        feats["action"] = {"dtype": "int64", "shape": [1], "names": None}
    feats |= {"next.reward": {"dtype": "float32", "shape": [1], "names": None}, "next.done": {"dtype": "bool", "shape": [1], "names": None},
              "timestamp": {"dtype": "float32", "shape": [1], "names": None}}  # fmt: skip
    for k in ("frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "int64", "shape": [1], "names": None}
    cols = {k: [] for k in feats if not (video and k == "observation.image")}
    eps, ep_rows, index, vid_frames = [], [], 0, []
    for e, n in enumerate(lengths):
        frames = _smooth_frames(n, e)
        acts = rng.uniform(-2, 3, (n, 2)).astype(np.float32) if action == "box" else rng.integers(0, 5, n)
        done = np.zeros(n, bool)
        done[-1] = True
        rew = rng.normal(size=n).astype(np.float32)
        for t in range(n):
            if not video:
                buf = io.BytesIO()
                Image.fromarray(frames[t]).save(buf, format="PNG")
                cols["observation.image"].append({"bytes": buf.getvalue(), "path": None})
            cols["observation.state"].append(rng.normal(size=2).astype(np.float32).tolist())
            if action != "none":
                cols["action"].append(acts[t].tolist() if action == "box" else int(acts[t]))
            cols["next.reward"].append(float(rew[t]))
            cols["next.done"].append(bool(done[t]))
            cols["timestamp"].append(t / fps)
            for k, v in (("frame_index", t), ("episode_index", e), ("index", index + t), ("task_index", 0)):
                cols[k].append(v)
        row = {"episode_index": e, "tasks": ["push the block"], "length": n, "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": index, "dataset_to_index": index + n, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}  # fmt: skip
        if video:
            start = sum(len(f) for f in vid_frames) / fps
            row |= {"videos/observation.image/chunk_index": 0, "videos/observation.image/file_index": 0,
                    "videos/observation.image/from_timestamp": start, "videos/observation.image/to_timestamp": start + n / fps}  # fmt: skip
            vid_frames.append(frames)
        ep_rows.append(row)
        eps.append({"frames": frames, "action": acts, "reward": rew, "done": done})
        index += n
    types = {"observation.image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
             "observation.state": pa.list_(pa.float32(), 2), "action": pa.list_(pa.float32(), 2) if action == "box" else pa.int64(),
             "next.reward": pa.float32(), "next.done": pa.bool_(), "timestamp": pa.float32()}  # fmt: skip
    table = pa.table({k: pa.array(v, types.get(k, pa.int64())) for k, v in cols.items()})
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(ep_rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "__index_level_0__": ["push the block"]}), root / "meta/tasks.parquet")
    if video:  # AV1, LeRobot's default codec, all episodes back to back in one file
        path = root / "videos/observation.image/chunk-000/file-000.mp4"
        path.parent.mkdir(parents=True)
        gen = imageio_ffmpeg.write_frames(str(path), (32, 32), fps=fps, codec="libsvtav1", quality=None,
                                          macro_block_size=1, ffmpeg_log_level="error", output_params=["-g", "2", "-crf", "20"])  # fmt: skip
        gen.send(None)
        for f in np.concatenate(vid_frames):
            gen.send(np.ascontiguousarray(f))
        gen.close()
    stats = {}
    if action == "box":
        all_a = np.concatenate([e["action"] for e in eps])
        stats["action"] = {"min": (all_a.min(0) - 0.5).tolist(), "max": (all_a.max(0) + 0.5).tolist()}
    (root / "meta/stats.json").write_text(json.dumps(stats))
    info = {"codebase_version": "v3.0", "robot_type": "so100", "total_episodes": len(lengths), "total_frames": index,
            "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
            "splits": {"train": f"0:{len(lengths)}"}, "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if video else None,
            "features": feats}  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info))
    return eps


def test_import_foreign_lerobot_video_box(tmp_path):
    eps = _foreign_lerobot(tmp_path / "lr", action="box", video=True)
    ds = _import("lerobot", tmp_path / "lr", tmp_path / "out")
    space = ds.info["action_space"]
    all_a = np.concatenate([e["action"] for e in eps])
    assert space["type"] == "box" and space["shape"] == [2]
    np.testing.assert_allclose(space["low"], all_a.min(0) - 0.5, rtol=1e-6)  # from meta/stats.json
    np.testing.assert_allclose(space["high"], all_a.max(0) + 0.5, rtol=1e-6)
    assert ds.info["lerobot"]["robot_type"] == "so100" and ds.info["fps"] == 10
    for i, ref in enumerate(eps):
        n = len(ref["frames"])
        got = ds.episode(i)
        assert ds.episodes[i].length == n - 1 and got["frames"].shape == (n, 32, 32, 3)
        assert min(_psnr(g, f) for g, f in zip(got["frames"], ref["frames"], strict=True)) > 30
        np.testing.assert_array_equal(got["action"], ref["action"][:-1])
        np.testing.assert_array_equal(got["reward"], ref["reward"][:-1])
        assert got["terminated"].tolist() == [False] * (n - 2) + [True] and not got["truncated"].any()
        assert ds.episodes[i].extra["tasks"] == ["push the block"]


def test_import_foreign_lerobot_images_discrete_and_action_free(tmp_path):
    eps = _foreign_lerobot(tmp_path / "d", action="discrete", video=False, lengths=(5, 7))
    ds = _import("lerobot", tmp_path / "d", tmp_path / "d_out", resolution=16)
    n_max = max(int(e["action"].max()) for e in eps) + 1
    assert ds.info["action_space"] == {"type": "discrete", "n": n_max, "start": 0}
    assert ds.info["frame_shape"] == [16, 16, 3]
    for i, ref in enumerate(eps):
        np.testing.assert_array_equal(ds.arrays(i)["action"], ref["action"][:-1])
        assert ds.frames(i).shape == (len(ref["frames"]), 16, 16, 3)
    _foreign_lerobot(tmp_path / "free", action="none", video=False, lengths=(4, 3))
    free = _import("lerobot", tmp_path / "free", tmp_path / "free_out")
    assert free.info["action_space"] == {"type": "none"} and [e.length for e in free.episodes] == [3, 2]
    assert not any(e.has_actions for e in free.episodes) and "action" not in free.arrays(0)
    np.testing.assert_array_equal(free.frames(1)[0], _smooth_frames(3, 1)[0])  # PNG images are exact
    with pytest.raises(DatasetError, match="no image or video feature 'nope'"):
        _import("lerobot", tmp_path / "free", tmp_path / "x", image_key="nope")


def test_lerobot_import_out_of_range_action_leaves_nothing(tmp_path):
    make_synthetic(tmp_path / "src", lengths=(6, 5), discrete=True)
    _export(Dataset.open(tmp_path / "src"), tmp_path / "lr")
    info_path = tmp_path / "lr/meta/info.json"
    info = json.loads(info_path.read_text())
    info["simulacra"]["action_space"] = {"type": "discrete", "n": 1, "start": 0}  # claims fewer actions than used
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="outside the action space") as err:
        _import("lerobot", tmp_path / "lr", tmp_path / "out")
    assert "\n" not in str(err.value) and "file-000.parquet episode" in str(err.value)
    _nothing_left(tmp_path / "out")


# ---- (d) Minari -----------------------------------------------------------------------------------------
def _minigrid(tile: int, image_only: bool):
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the envs)
    from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper

    env = RGBImgObsWrapper(gym.make("MiniGrid-Empty-5x5-v0", max_steps=10), tile_size=tile)
    return ImgObsWrapper(env) if image_only else gym.wrappers.FilterObservation(env, ["image", "direction"])


def _collect(env, seeds):
    """Roll a real env; one minari EpisodeBuffer per episode (the structure DataCollector builds)."""
    from minari.data_collector import EpisodeBuffer

    bufs = []
    for k, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        observations = {key: [v] for key, v in obs.items()} if isinstance(obs, dict) else [obs]
        acts, rews, terms, truncs = [], [], [], []
        while True:
            a = int(rng.integers(3))
            obs, r, te, tr, _ = env.step(a)
            for key in observations if isinstance(obs, dict) else []:
                observations[key].append(obs[key])
            if not isinstance(obs, dict):
                observations.append(obs)
            acts.append(a), rews.append(r), terms.append(te), truncs.append(tr)
            if te or tr:
                break
        bufs.append(EpisodeBuffer(id=k, seed=seed, observations=observations, actions=acts, rewards=rews,
                                  terminations=terms, truncations=truncs))  # fmt: skip
    return bufs


@pytest.mark.filterwarnings("ignore::UserWarning")  # minari nags about author, permalink, description
@pytest.mark.parametrize("how", ["buffers-dict-jpeg", "buffers-box-raw", "collector"])
def test_minari_import_matches_minari_api(tmp_path, monkeypatch, how):
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    if how == "collector":
        pytest.importorskip("jax", reason="minari's DataCollector needs jax (minari[create])")
        env = minari.DataCollector(_minigrid(8, image_only=False))
        for seed in (3, 4):
            env.reset(seed=seed)
            while not any(env.step(env.action_space.sample())[2:4]):
                pass
        env.create_dataset(dataset_id="test/grid-v0", algorithm_name="random")
    else:
        env = _minigrid(8 if how == "buffers-dict-jpeg" else 4, image_only=how == "buffers-box-raw")
        minari.create_dataset_from_buffers("test/grid-v0", _collect(env, [3, 4, 5]), env=env, algorithm_name="random")
    path = tmp_path / "minari/test/grid-v0"
    assert (path / "data/main_data.hdf5").is_file() and (path / "data/metadata.json").is_file()
    ds = _import("minari", path, tmp_path / "out")
    ref = minari.load_dataset(str(path))
    assert len(ds) == ref.total_episodes and ds.num_steps == ref.total_steps
    assert ds.info["action_space"] == {"type": "discrete", "n": 7, "start": 0}
    assert ds.info["env_id"] == "MiniGrid-Empty-5x5-v0" and ds.info["source"] == "minari"
    for i, ep in enumerate(ref.iterate_episodes()):
        obs = ep.observations["image"] if isinstance(ep.observations, dict) else ep.observations
        assert ds.episodes[i].length == len(ep.actions)
        np.testing.assert_array_equal(ds.frames(i), obs)
        np.testing.assert_array_equal(ds.arrays(i)["action"], ep.actions)
        np.testing.assert_array_equal(ds.arrays(i)["reward"], ep.rewards.astype(np.float32))  # the store keeps float32
        np.testing.assert_array_equal(ds.arrays(i)["terminated"], ep.terminations)
        np.testing.assert_array_equal(ds.arrays(i)["truncated"], ep.truncations)
        assert ds.episodes[i].source == "minari" and ds.episodes[i].extra["minari_episode"] == ep.id
    if how != "collector":
        assert [e.seed for e in ds.episodes] == [3, 4, 5]
    small = _import("minari", path, tmp_path / "small", resolution=16)
    assert small.info["frame_shape"] == [16, 16, 3]


# ---- (e) video folders ----------------------------------------------------------------------------------
def _write_mp4(path: Path, frames: np.ndarray, fps=10):
    gen = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], fps=fps, codec="libx264", quality=9, macro_block_size=1, ffmpeg_log_level="error")  # fmt: skip
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()


def test_video_folder_with_and_without_actions(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    a_frames, b_frames, c_frames = _smooth_frames(8, 0, 64), _smooth_frames(5, 1, 64), _smooth_frames(6, 2, 64)
    _write_mp4(folder / "a.mp4", a_frames)
    np.save(folder / "a.actions.npy", np.array([0, 1, 2, 3, 2, 1, 0]))
    iio.imwrite(folder / "b.gif", b_frames, duration=100, loop=0)
    (folder / "b.actions.csv").write_text("action\n1\n3\n0\n2\n")
    _write_mp4(folder / "c.mp4", c_frames)  # no actions file: action-free
    (folder / "notes.txt").write_text("not a video")
    ds = _import("videos", folder, tmp_path / "out")
    assert ds.info["frame_shape"] == [64, 64, 3] and ds.info["source"] == "videos"
    assert ds.info["action_space"] == {"type": "discrete", "n": 4, "start": 0} and ds.info["fps"] == 10
    assert [e.length for e in ds.episodes] == [7, 4, 5] and [e.has_actions for e in ds.episodes] == [True, True, False]
    np.testing.assert_array_equal(ds.arrays(0)["action"], [0, 1, 2, 3, 2, 1, 0])
    np.testing.assert_array_equal(ds.arrays(1)["action"], [1, 3, 0, 2])
    assert "action" not in ds.arrays(2)
    for i, ref in enumerate((a_frames, b_frames, c_frames)):
        arr = ds.arrays(i)
        assert (
            not arr["reward"].any() and not arr["terminated"].any() and arr["truncated"].tolist()[-2:] == [False, True]
        )
        assert _psnr(ds.frames(i), ref) > 25
        assert ds.episodes[i].source == "videos" and ds.episodes[i].extra["source_path"].endswith(
            "abc"[i] + (".gif" if i == 1 else ".mp4")
        )

    (folder / "c.actions.json").write_text(json.dumps([[0.5, -1.0]] * 5))  # floats: Box, but a/b give ints of shape ()
    with pytest.raises(DatasetError, match="disagree on their shape"):
        _import("videos", folder, tmp_path / "mixed")
    for p in (folder / "a.actions.npy", folder / "b.actions.csv"):
        p.unlink()
    box = _import("videos", folder, tmp_path / "box", resolution=32)
    assert box.info["action_space"]["type"] == "box" and box.info["frame_shape"] == [32, 32, 3]
    np.testing.assert_array_equal(box.arrays(2)["action"], np.full((5, 2), [0.5, -1.0], np.float32))
    (folder / "c.actions.json").unlink()
    free = _import("videos", folder, tmp_path / "free")
    assert free.info["action_space"] == {"type": "none"} and not any(e.has_actions for e in free.episodes)


def test_video_folder_errors_leave_nothing(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_mp4(folder / "a.mp4", _smooth_frames(6, 0))
    np.save(folder / "a.actions.npy", np.array([0, 1, 2, 1, 0]))
    _write_mp4(folder / "b.mp4", _smooth_frames(5, 1))
    (folder / "b.actions.json").write_text(json.dumps([0, 1, 2]))  # 5 frames need 4 actions
    with pytest.raises(DatasetError) as err:
        _import("videos", folder, tmp_path / "out")
    msg = str(err.value)
    assert "b.actions.json" in msg and "has 3 actions" in msg and "needs exactly 4" in msg and "\n" not in msg
    _nothing_left(tmp_path / "out")  # episode a was written, then the whole staging dir went away

    (folder / "b.actions.json").write_text(json.dumps([0, 1, 5, 1]))
    (folder / "action_space.json").write_text(json.dumps({"type": "discrete", "n": 3}))
    with pytest.raises(DatasetError, match=r"b\.actions\.json: action 5 at index 2 is outside the action space"):
        _import("videos", folder, tmp_path / "out")
    _nothing_left(tmp_path / "out")

    make_synthetic(tmp_path / "keep", lengths=(3,))  # a failing --overwrite import keeps the old data set
    with pytest.raises(DatasetError, match="outside the action space"):
        _import("videos", folder, tmp_path / "keep", overwrite=True)
    assert len(Dataset.open(tmp_path / "keep")) == 1
    with pytest.raises(DatasetError, match="already holds"):
        _import("videos", folder, tmp_path / "keep")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="is not a simulacra data set"):
        _import("videos", folder, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine/thesis.tex").read_text() == "precious"


def test_multi_discrete_sources_are_refused_with_one_line(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_mp4(folder / "a.mp4", _smooth_frames(4, 0))
    np.save(folder / "a.actions.npy", np.array([[0, 1], [1, 1], [2, 0]]))
    (folder / "action_space.json").write_text(json.dumps({"type": "multi_discrete", "nvec": [3, 2]}))
    with pytest.raises(DatasetError) as err:
        _import("videos", folder, tmp_path / "out")
    assert "action_space.json" in str(err.value) and "MultiDiscrete" in str(err.value) and "\n" not in str(err.value)
    _nothing_left(tmp_path / "out")

    make_synthetic(tmp_path / "src", lengths=(4,))
    _export(Dataset.open(tmp_path / "src"), tmp_path / "lr")
    info_path = tmp_path / "lr/meta/info.json"
    info = json.loads(info_path.read_text())
    info["simulacra"]["action_space"] = {"type": "multi_discrete", "nvec": [4, 2]}
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError) as err:
        _import("lerobot", tmp_path / "lr", tmp_path / "out")
    assert "meta/info.json" in str(err.value) and "MultiDiscrete" in str(err.value) and "\n" not in str(err.value)
    _nothing_left(tmp_path / "out")


def test_minari_spaces_read_as_action_spaces():
    from simulacra.data.interop.minari import space_from_minari

    assert space_from_minari(json.dumps({"type": "Discrete", "n": 7, "start": 1})) == ActionSpace.discrete(7, 1)
    box = {"type": "Box", "shape": [2], "low": [-1.0, -2.0], "high": [1.0, 2.0], "dtype": "float32"}
    assert space_from_minari(box) == ActionSpace.box([-1, -2], [1, 2])
    assert space_from_minari({"type": "Dict", "subspaces": {}}) is None  # inferred from the actions then
    assert space_from_minari("not json") is None
    with pytest.raises(ActionSpaceError, match="MultiDiscrete"):
        space_from_minari({"type": "MultiDiscrete", "nvec": [3, 2]})


# ---- (f) CLI ----------------------------------------------------------------------------------------------
def test_cli_export_then_import(tmp_path, capsys):
    eps = make_synthetic(tmp_path / "src", lengths=(4, 3), discrete=False)
    with pytest.raises(SystemExit) as ex:
        main(["data", "export", str(tmp_path / "src"), "--out", str(tmp_path / "lr"), "--format", "lerobot"])
    assert ex.value.code == 0 and "exported" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ex:
        main(["data", "import", str(tmp_path / "lr"), "--format", "lerobot", "--out", str(tmp_path / "back")])
    assert ex.value.code == 0 and "imported 2 episodes (7 steps)" in capsys.readouterr().out
    back = Dataset.open(tmp_path / "back")
    for i, ref in enumerate(eps):
        assert back.frames(i).tobytes() == ref["frames"].tobytes()
        np.testing.assert_array_equal(back.arrays(i)["action"], ref["action"])
    with pytest.raises(SystemExit) as ex:  # exporting over a LeRobot data set needs --overwrite
        main(["data", "export", str(tmp_path / "src"), "--out", str(tmp_path / "lr")])
    err = capsys.readouterr().err
    assert ex.value.code == 1 and "--overwrite" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as ex:
        main(["data", "export", str(tmp_path / "src"), "--out", str(tmp_path / "lr"), "--overwrite", "--video"])
    assert ex.value.code == 0 and (tmp_path / "lr/videos").is_dir()
