"""Every world preset records learnable data: real frames, actions that matter, deterministic per seed.

Recordings are tiny (two episodes of at most 40 steps, one env process) so the file runs in well
under a minute on two cores; the envs come from the ``envs`` extra and the file skips without them.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from simulacra.cli import main
from simulacra.data.envs import make_env
from simulacra.data.policies import make_policy
from simulacra.data.record import RecordConfig, record, record_episodes
from simulacra.data.store import Dataset
from simulacra.presets import PRESETS, get_preset
from simulacra.spaces import ActionSpace

for _module in ("ale_py", "Box2D", "vizdoom", "gym_pusht", "crafter", "minigrid"):
    pytest.importorskip(_module)

WORLDS = ["breakout", "pong", "carracing", "doom", "pusht", "crafter", "minigrid", "fourrooms"]
STEPS = 40


def _record(tmp_path, preset: str, name: str = "ds", **kw) -> Dataset:
    cfg = RecordConfig(preset=preset, episodes=2, num_envs=1, max_episode_steps=STEPS, out=str(tmp_path / name))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return Dataset.open(record(cfg))


def _changed(frames: np.ndarray) -> np.ndarray:
    """Per step: whether any pixel changed between consecutive frames."""
    f = frames.reshape(len(frames), -1)
    return (f[1:] != f[:-1]).any(axis=1)


def test_every_world_is_tested():
    assert set(PRESETS) - {"debug"} == set(WORLDS)


@pytest.mark.parametrize("preset", WORLDS)
def test_preset_records_learnable_data(tmp_path, preset):
    p = get_preset(preset)
    ds = _record(tmp_path, preset)
    assert ds.info["frame_shape"] == [64, 64, 3]
    space = ActionSpace.from_json(ds.info["action_space"]).to_gym()
    assert len(ds) == 2
    assert sorted(e.seed for e in ds.episodes) == [0, 1]
    for i, meta in enumerate(ds.episodes):
        assert (meta.env_id, meta.preset, meta.policy) == (p.env_id, p.name, p.policy)
        ep = ds.episode(i)
        frames, actions = ep["frames"], ep["action"]
        assert 1 <= meta.length <= STEPS
        assert frames.shape == (meta.length + 1, 64, 64, 3) and frames.dtype == np.uint8
        # every frame is a picture (not black, blank or one colour) ...
        assert frames.reshape(len(frames), -1).std(axis=1).min() > 3.0
        # ... and things move: most steps change the picture
        assert _changed(frames).mean() >= 0.5, f"only {_changed(frames).mean():.0%} of steps change the frame"
        assert len(actions) == meta.length
        assert all(space.contains(np.asarray(a, dtype=space.dtype)) for a in actions)
        assert np.isfinite(ep["reward"]).all()
        # the env's true state per frame, for the eval's probes: named, finite, and it changes
        assert ep["state"].shape == (meta.length + 1, len(ds.state_names)) and ds.state_names
        assert np.isfinite(ep["state"]).all()
    states = np.concatenate([ds.arrays(i)["state"] for i in range(len(ds))])
    assert (states.std(0) > 0).any(), f"no state variable of {preset} changes"
    assert ds.info["record_choices"]["state"]["variables"] == len(ds.state_names)
    # the explorer does not repeat one action forever
    all_actions = np.concatenate([ds.arrays(i)["action"] for i in range(len(ds))])
    assert len(np.unique(all_actions, axis=0)) >= 2
    # the keyboard map plays this world: key actions exist in its action space
    for key, value in p.keys.items():
        if p.keys_relative:
            assert np.shape(value) == space.shape, key
        else:
            assert space.contains(np.asarray(value, dtype=space.dtype)), key
    assert space.contains(np.asarray(p.noop_action, dtype=space.dtype))


def _env(preset: str, seed: int = 0):
    p = get_preset(preset)
    env = make_env(p.env_id, p.env_kwargs, (64, 64), p.frame_source, p.max_episode_steps, make_policy(p.policy))
    env.reset(seed=seed)
    return env


def _centroid(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(row, column) centre of the pixels in mask."""
    assert mask.any(), "the object is not in the picture"
    return np.argwhere(mask).mean(axis=0)


def _red(f):  # Breakout's paddle, in the bottom rows
    f = f.astype(int)
    return (f[..., 0] > f[..., 1] + 40) & (np.arange(64)[:, None] >= 54)


def _green(f):  # Pong's right (player) paddle, below the score
    f = f.astype(int)
    return (f[..., 1] > f[..., 0] + 40) & (np.arange(64)[:, None] >= 8) & (np.arange(64)[None] >= 48)


def _blue(f):  # the Push-T pusher
    f = f.astype(int)
    return f[..., 2] > f[..., 0] + 60


def _doom_y(env, frame):
    state = env.unwrapped.game.get_state()
    return next(o.position_y for o in state.objects if o.name == "DoomPlayer")


def _less(gap):
    return lambda start, a, b: a < b - gap


# preset: (key A, key B, probe(env, frame), check(probe at start, probe after holding A, after holding B))
DIRECTIONS = {
    "breakout": ("ArrowLeft", "ArrowRight", lambda e, f: _centroid(f, _red(f))[1], _less(2)),
    "pong": ("ArrowUp", "ArrowDown", lambda e, f: _centroid(f, _green(f))[0], _less(2)),
    # Box2D angles grow anticlockwise: steering right ends at a smaller angle than steering left
    "carracing": ("ArrowRight", "ArrowLeft", lambda e, f: e.unwrapped.car.hull.angle, _less(0.1)),
    # the player faces +x, so moving right lowers y
    "doom": ("ArrowRight", "ArrowLeft", _doom_y, _less(20)),
    "pusht": ("ArrowUp", "ArrowDown", lambda e, f: _centroid(f, _blue(f))[0], _less(2)),
    "crafter": ("a", "d", lambda e, f: e.unwrapped._env._player.pos[0], _less(0)),
    # directions 0..3 = +x, +y, -x, -y (y down): left is anticlockwise on screen, one less
    "minigrid": ("ArrowLeft", "ArrowRight", lambda e, f: e.unwrapped.agent_dir,
                 lambda start, a, b: a == (start - 1) % 4 and b == (start + 1) % 4),
    "fourrooms": ("ArrowLeft", "ArrowRight", lambda e, f: e.unwrapped.agent_dir,
                  lambda start, a, b: a == (start - 1) % 4 and b == (start + 1) % 4),
}  # fmt: skip


def test_paddle_player_returns_the_ball(tmp_path):
    """The scripted paddle player breaks more bricks than random play, and still loses lives."""
    kw = dict(max_episode_steps=300)
    paddle = _record(tmp_path, "breakout", "paddle", policy="paddle", **kw)
    rand = _record(tmp_path, "breakout", "random", policy="random", **kw)

    def rewards(ds):
        return sum(int((ds.arrays(i)["reward"] != 0).sum()) for i in range(len(ds)))

    assert rewards(paddle) > rewards(rand) + 3
    lives = np.concatenate([ds.arrays(i)["lives"] for ds in (paddle,) for i in range(len(ds))])
    assert lives.min() < lives.max()  # it misses too
    with pytest.raises(Exception, match="paddle policy plays"):
        _record(tmp_path, "carracing", "car", policy="paddle", max_episode_steps=5)


@pytest.mark.parametrize("preset", WORLDS)
def test_keys_change_what_happens_the_right_way(preset):
    """From the same state, holding two keys of the preset's keyboard map gives different pictures,
    and each key moves the way its name says (checked on the env's state or picture, not its docs)."""
    p = get_preset(preset)
    key_a, key_b, probe, check = DIRECTIONS[preset]
    envs = [_env(preset), _env(preset)]
    try:
        for _ in range(20):  # leave the start (Atari serve, CarRacing zoom-in) the same way in both
            action = envs[0].explore_action()
            for env in envs:
                frame, *_ = env.step(action)
        start = probe(envs[0], frame)
        frames, probes = [], []
        for env, key in zip(envs, (key_a, key_b), strict=True):
            for _ in range(1 if preset in ("minigrid", "fourrooms") else 8):
                if p.keys_relative:  # Push-T: the key moves the target from where the pusher is
                    action = np.clip(np.asarray(env.unwrapped.agent.position) + 3 * np.asarray(p.keys[key]), 0, 512)
                    action = action.astype(np.float32)
                else:
                    action = p.keys[key]
                frame, *_ = env.step(action)
            frames.append(frame)
            probes.append(probe(env, frame))
        differ = int((frames[0] != frames[1]).any(axis=-1).sum())
        assert differ >= 6, f"holding {key_a!r} or {key_b!r} changes only {differ} pixels"
        assert check(start, *probes), f"{key_a!r} and {key_b!r} do not move as named ({start}, {probes})"
    finally:
        for env in envs:
            env.close()


def _episodes_by_seed(ds: Dataset) -> dict:
    return {e.seed: (ds.frames(i).tobytes(), ds.arrays(i)["action"].tobytes()) for i, e in enumerate(ds.episodes)}


@pytest.mark.parametrize("preset", ["pusht", "doom"])
def test_recording_is_a_function_of_the_seed(tmp_path, preset):
    """Same seed, same bytes; and an episode's content does not depend on how many envs ran."""
    one = _episodes_by_seed(_record(tmp_path, preset, "one", episodes=3))
    again = _episodes_by_seed(_record(tmp_path, preset, "again", episodes=3))
    two = _episodes_by_seed(_record(tmp_path, preset, "two", episodes=3, num_envs=2))
    assert sorted(one) == [0, 1, 2]
    assert one == again
    assert one == two
    other = _episodes_by_seed(_record(tmp_path, preset, "other", episodes=1, seed=7))
    assert other[7][0] != one[0][0]


def test_unknown_env_id_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["record", "--env-id", "NoSuchEnv-v0", "--episodes", "1", "--out", str(tmp_path / "x")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown env id 'NoSuchEnv-v0'" in err
    assert not (tmp_path / "x").exists()


class _NoPixels(gym.Env):
    """Vector observations and no rendering at all."""

    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


class _NoPixelsTakesRenderMode(_NoPixels):
    """Accepts render_mode (so gym.make sets it) but declares no render modes and cannot render."""

    def __init__(self, render_mode=None):
        self.render_mode = render_mode


gym.register("SimulacraTest/NoPixels-v0", entry_point=_NoPixels)
gym.register("SimulacraTest/NoPixelsTakesRenderMode-v0", entry_point=_NoPixelsTakesRenderMode)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("env_id", ["SimulacraTest/NoPixels-v0", "SimulacraTest/NoPixelsTakesRenderMode-v0"])
def test_env_without_pictures_is_a_clear_error(tmp_path, capsys, env_id):
    with pytest.raises(SystemExit) as e:
        main(["record", "--env-id", env_id, "--episodes", "1", "--num-envs", "1", "--out", str(tmp_path / "x")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("simulacra record: error:") and "not images" in err and "rgb_array" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "env_id, source",
    [
        ("ALE/Pong-v5", "obs"),  # image observations
        ("CarRacing-v3", "obs"),  # image observations, continuous (Box) actions
        ("CartPole-v1", "render"),  # vector observations, frames from rgb_array render() (pygame, headless)
    ],
)
def test_generic_env_ids_record(tmp_path, env_id, source):
    out = tmp_path / "g"
    main(["record", "--env-id", env_id, "--episodes", "2", "--num-envs", "1", "--max-episode-steps", "25"]
         + ["--out", str(out)])  # fmt: skip
    ds = Dataset.open(out)
    assert ds.info["env_id"] == env_id and len(ds) == 2
    space = ActionSpace.from_json(ds.info["action_space"]).to_gym()
    env = make_env(env_id)
    try:
        assert env.source == source
    finally:
        env.close()
    for i in range(len(ds)):
        frames = ds.frames(i)
        assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
        assert frames.reshape(len(frames), -1).std(axis=1).min() > 3.0
        assert _changed(frames).mean() >= 0.5
        assert all(space.contains(np.asarray(a, dtype=space.dtype)) for a in ds.arrays(i)["action"])


def test_record_episodes_prints_nothing_and_the_verb_prints_config_and_summary(tmp_path, capsys):
    cfg = RecordConfig(preset="debug", episodes=1, num_envs=1, max_episode_steps=5, out=str(tmp_path / "lib"))
    out = record_episodes(cfg)
    assert capsys.readouterr().out == "" and len(Dataset.open(out)) == 1
    cfg = RecordConfig(preset="debug", episodes=1, num_envs=1, max_episode_steps=5, out=str(tmp_path / "verb"))
    record(cfg)
    printed = capsys.readouterr().out
    config = json.loads(printed[printed.index("{") : printed.rindex("}") + 1])
    assert config["out"] == cfg.out and config["resolved_preset"]["env_id"] == "ALE/Breakout-v5"
    assert printed.rstrip().endswith(f"recorded 1 episodes to {cfg.out}  (next: simulacra data info {cfg.out})")
    lib, verb = Dataset.open(out), Dataset.open(cfg.out)  # the same episode either way
    np.testing.assert_array_equal(lib.frames(0), verb.frames(0))


def test_record_help_names_every_preset():
    """The --preset help is written by hand; it must not fall behind the presets."""
    import inspect

    from simulacra.data.record import RecordConfig
    from simulacra.presets import PRESETS

    src = inspect.getsource(RecordConfig)
    line = next(ln for ln in src.splitlines() if "World preset (" in ln)
    assert all(name in line for name in PRESETS), line
