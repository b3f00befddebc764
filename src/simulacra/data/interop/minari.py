"""Minari data sets (HDF5 storage) read directly with h5py: no env, no network, no minari needed.

On disk (minari 0.5): ``<dir>/data/metadata.json`` (total_episodes, data_format, jpeg_encoding, the
serialized observation/action spaces, env_spec) and ``<dir>/data/main_data.hdf5`` with one group per
episode, ``episode_<id>`` (attrs id, seed, total_steps) holding observations (N+1 entries; a subgroup
per key for Dict spaces), actions, rewards, terminations and truncations (N entries each). Image
observations of 32x32 or more may be stored JPEG-encoded (one byte string per frame); those are decoded
with Pillow exactly as minari itself decodes them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from simulacra.data.interop.common import (
    LazyWriter,
    base_info,
    fit_frame,
    infer_action_space,
    shape_actions,
    square,
    staged_dir,
)
from simulacra.data.safety import reading
from simulacra.data.store import INFO, Dataset
from simulacra.errors import DatasetError, SimulacraError
from simulacra.layout import inside
from simulacra.spaces import ActionSpace, ActionSpaceError


def _find(source: str) -> Path:
    """The data/ directory of a Minari data set given its dir, its data/ dir, or its id."""
    candidates = [Path(source), Path(source) / "data"]
    if not Path(source).exists():  # maybe a dataset id like "namespace/name-v0"
        base = Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")
        candidates += [base / source / "data"]
    for c in candidates:
        if (c / "metadata.json").exists():
            if c == Path(source) / "data":
                _within(Path(source), "data")  # a data/ that is a symlink out is not this data set's
            return c
    raise DatasetError(f"{source}: not a Minari data set (no data/metadata.json found)")


def space_from_minari(serialized) -> ActionSpace | None:
    """The action space minari serialized (its Gymnasium type names), or None if it is unreadable or of a
    type without a simulacra counterpart: the space is then inferred from the actions. A MultiDiscrete space
    is refused with one line (ActionSpaceError)."""
    try:
        d = json.loads(serialized) if isinstance(serialized, str) else serialized
        kind = d["type"]
        if kind == "Discrete":
            return ActionSpace.discrete(int(d["n"]), int(d.get("start", 0)))
        if kind == "Box":
            return ActionSpace.box(d["low"], d["high"], d["shape"])
    except (ValueError, KeyError, TypeError, ActionSpaceError):
        return None
    if kind == "MultiDiscrete":
        import gymnasium as gym

        return ActionSpace.from_gym(gym.spaces.MultiDiscrete([2]))  # raises: the one line every entry point gives
    return None


def _is_jpeg(ds) -> bool:
    if ds.dtype.kind == "O" or (ds.dtype == np.uint8 and ds.ndim == 2):
        first = np.asarray(ds[0]).ravel()
        return len(first) > 2 and first[0] == 0xFF and first[1] == 0xD8
    return False


def _is_image(ds) -> bool:
    if _is_jpeg(ds):
        return True
    return (
        ds.dtype == np.uint8
        and ds.ndim in (3, 4)
        and min(ds.shape[1:3]) >= 8
        and (ds.ndim == 3 or ds.shape[3] in (1, 3, 4))
    )


def _image_keys(group, prefix: str = "") -> list[str]:
    import h5py

    keys = []
    for name, item in group.items():
        path = f"{prefix}{name}"
        if isinstance(item, h5py.Group):
            keys += _image_keys(item, path + "/")
        elif _is_image(item):
            keys.append(path)
    return keys


def _frames(ds) -> list[np.ndarray]:
    if _is_jpeg(ds):
        return [np.asarray(Image.open(io.BytesIO(np.asarray(b, np.uint8).tobytes()))) for b in ds[()]]
    return list(ds[()])


def _no_outside_storage(group, h5_path: Path) -> None:
    """Refuse HDF5 objects whose bytes live in other files (external links, external raw storage, virtual
    data sets): reading them would read files outside the data set being imported."""
    import h5py

    def walk(g, prefix=""):
        for name in g:
            link = g.get(name, getlink=True)
            full = f"{prefix}{name}"
            check_link(g, name, link, full)
            if isinstance(link, h5py.HardLink) and isinstance(g[name], h5py.Group):
                walk(g[name], full + "/")

    def check_link(g, name, link, full):
        if isinstance(link, h5py.ExternalLink):
            raise DatasetError(f"{h5_path}: {full!r} links to another file ({link.filename}); refusing to follow it")
        if isinstance(link, h5py.SoftLink):
            return
        item = g[name]
        if isinstance(item, h5py.Dataset) and (item.external or item.is_virtual):
            raise DatasetError(f"{h5_path}: {full!r} stores its data in other files; refusing to read them")

    walk(group)


def _within(root: Path, rel: str) -> Path:
    try:
        return Path(inside(root, rel, "file"))
    except SimulacraError as e:
        raise DatasetError(str(e)) from None


def _import_episode(writer, ep, key, size, space, h5_path, name, env_id, data_dir) -> None:
    obs = ep["observations"] if key is None else ep["observations"][key]
    frames = np.stack([fit_frame(x, size) for x in _frames(obs)])
    steps = len(ep["rewards"])
    if len(frames) != steps + 1:
        raise DatasetError(f"{h5_path} {name}: {len(frames)} observations for {steps} steps (want steps+1)")
    actions = shape_actions(space, ep["actions"][()])
    seed = ep.attrs.get("seed")
    writer.add(
        frames, actions, np.asarray(ep["rewards"][()], np.float32), ep["terminations"][()],
        ep["truncations"][()], where=f"{h5_path} {name}",
        seed=None if seed is None else int(seed), env_id=env_id, source="minari",
        extra={"source_path": str(data_dir.parent.resolve()), "minari_episode": int(ep.attrs.get("id", -1))},
    )  # fmt: skip


def import_minari(
    source: str, out: str, overwrite: bool = False, resolution: int | None = None, image_key: str | None = None
) -> Dataset:
    try:
        import h5py
    except ImportError:
        raise DatasetError("importing Minari data needs h5py: pip install 'simulacra[interop]'") from None
    data_dir = _find(source)
    meta_path = _within(data_dir, "metadata.json")
    with reading(meta_path, "not readable Minari metadata"):
        meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: is not a JSON object")
    if meta.get("data_format", "hdf5") != "hdf5":
        raise DatasetError(f"{source}: Minari data_format {meta.get('data_format')!r} is not supported (hdf5 is)")
    h5_path = data_dir / "main_data.hdf5"
    if not h5_path.exists():
        raise DatasetError(f"{h5_path}: missing")
    h5_path = _within(data_dir, "main_data.hdf5")
    env_id = None
    if meta.get("env_spec"):
        try:
            env_id = json.loads(meta["env_spec"]).get("id")
        except (ValueError, AttributeError):
            env_id = None
    size = square(resolution)
    with reading(h5_path, "not a readable HDF5 file"):
        f = h5py.File(h5_path, "r")
    with f, reading(h5_path, "cannot import it"):
        _no_outside_storage(f, h5_path)
        names = [k for k in f if k.startswith("episode_")]
        bad = [k for k in names if not k[len("episode_") :].isdigit()]
        if bad:
            raise DatasetError(f"{h5_path}: {bad[0]!r} is not named episode_<number>")
        names.sort(key=lambda k: int(k[len("episode_") :]))
        if not names:
            raise DatasetError(f"{h5_path}: holds no episodes")
        for name in names:
            for part in ("observations", "actions", "rewards", "terminations", "truncations"):
                if part not in f[name]:
                    raise DatasetError(f"{h5_path} {name}: has no {part!r}")
        obs0 = f[names[0]]["observations"]
        if isinstance(obs0, h5py.Group):
            keys = _image_keys(obs0)
            if image_key is not None and image_key not in obs0:
                raise DatasetError(f"{source}: no observation key {image_key!r} (it has {list(obs0)})")
            key = image_key or (keys[0] if keys else None)
            if key is None or not _is_image(obs0[key]):
                raise DatasetError(f"{source}: observations {list(obs0)} hold no image; simulacra learns from pixels")
        else:
            if not _is_image(obs0):
                raise DatasetError(f"{source}: observations of shape {obs0.shape} are not images")
            key = None
        if isinstance(f[names[0]]["actions"], h5py.Group):
            raise DatasetError(f"{source}: Dict/Tuple action spaces are not supported")
        try:
            space = space_from_minari(meta.get("action_space"))
        except ActionSpaceError as e:
            raise DatasetError(f"{source}: {e}") from None
        if space is None:
            space = infer_action_space([np.asarray(f[n]["actions"][()]) for n in names])
        info = base_info(
            "minari", source, space, None, env_id=env_id,
            minari={"dataset_id": meta.get("dataset_id"), "image_key": key, "jpeg_encoding": meta.get("jpeg_encoding")},
        )  # fmt: skip
        with staged_dir(out, overwrite, INFO, "simulacra data set") as tmp:
            writer = LazyWriter(tmp, info)
            for name in names:
                with reading(f"{h5_path} {name}", "cannot import it"):
                    _import_episode(writer, f[name], key, size, space, h5_path, name, env_id, data_dir)
            writer.close(source)
    return Dataset.open(out)
