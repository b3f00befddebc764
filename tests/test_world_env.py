"""The world API and the world as a Gymnasium env: Gymnasium's checker, seeded replay, separate noise
streams, step == decode(latent_step), reset from an episode == reset from its frames, the vector env's
autoreset and truncation, and bad inputs at the API's edge."""

from dataclasses import asdict

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_synthetic
from gymnasium.utils.env_checker import check_env

from simulacra.data import Dataset
from simulacra.errors import SimulacraError
from simulacra.models.autoencoder import Autoencoder, AutoencoderConfig
from simulacra.models.dynamics import Dynamics, DynamicsConfig
from simulacra.world import Starts, World, WorldEnv, WorldVectorEnv

FRAME = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_world(space: dict, context: int = 3) -> World:
    """An untrained debug-size world with perturbed weights (zero-initialised convs would make every
    dream equal to its context)."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(channels=16, latent_channels=4, blocks=1))
    dyn = Dynamics(
        DynamicsConfig(context=context, channels=16, channel_mult=(1, 2), cond_dim=32), ae.latent_channels, space
    )
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.05 * torch.randn_like(p))
        dyn.heads[-1].bias[3] = -50.0  # dreams end at the horizon unless a test makes the head fire
    config = {"autoencoder": asdict(ae.cfg), "dynamics": asdict(dyn.cfg), "action_space": space}
    return World(ae, dyn, config | {"frame_shape": [FRAME, FRAME, 3], "fps": 15})


DISCRETE = {"type": "discrete", "n": 4, "start": 0}
BOX = {"type": "box", "shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0], "dtype": "float32"}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "ds"
    make_synthetic(root, lengths=(12, 9, 7), frame=FRAME)
    return Dataset.open(root)


@pytest.fixture(scope="module")
def box_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("box") / "ds"
    make_synthetic(root, lengths=(10, 8), frame=FRAME, discrete=False)
    return Dataset.open(root)


def test_gymnasium_env_checker_passes(ds, box_ds):
    for space, data in ((DISCRETE, ds), (BOX, box_ds)):
        env = WorldEnv(make_world(space), data, max_episode_steps=20)
        assert env.action_space == gym.spaces.Discrete(4) or isinstance(env.action_space, gym.spaces.Box)
        assert env.observation_space == gym.spaces.Box(0, 255, (FRAME, FRAME, 3), np.uint8)
        check_env(env, skip_render_check=False)


def test_registered_id_makes_a_world_env(ds, tmp_path):
    make_world(DISCRETE).save(tmp_path / "w")
    env = gym.make(
        "simulacra.world:simulacra/World-v0", world=str(tmp_path / "w"), starts=str(ds.root), max_episode_steps=5
    )
    obs, _ = env.reset(seed=0)
    assert obs.shape == (FRAME, FRAME, 3) and isinstance(env.unwrapped, WorldEnv)
    check_env(env.unwrapped)


def test_seeded_episode_replays_and_other_seeds_differ(ds):
    env = WorldEnv(make_world(DISCRETE), ds)

    def episode(seed):
        obs, info = env.reset(seed=seed)
        frames = [obs] + [env.step(a)[0] for a in (0, 1, 2, 3, 1)]
        return np.stack(frames), info

    a, ia = episode(7)
    b, ib = episode(7)
    assert np.array_equal(a, b) and ia == ib
    c, _ = episode(8)
    assert not np.array_equal(a, c)


def test_truncation_at_the_horizon_and_termination_from_the_head(ds):
    world = make_world(DISCRETE)
    env = WorldEnv(world, ds, max_episode_steps=3)
    env.reset(seed=0)
    ends = [env.step(0)[2:4] for _ in range(3)]
    assert ends[-1] == (False, True) and not any(t for t, _ in ends[:-1]) and not ends[0][1]
    with torch.no_grad():  # a termination head that always fires
        world.dyn.heads[-1].bias[3] = 50.0
    env = WorldEnv(world, ds, max_episode_steps=3)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(0)
    assert terminated and not truncated


def test_step_equals_decode_of_latent_step(ds):
    world = make_world(DISCRETE)
    frames, actions = world.episode_context(ds, 0, 6)
    s1, f, r, d = world.step(world.reset(frames, actions), [2], world.generator(4))
    s2, z, r2, d2 = world.latent_step(world.reset(frames, actions), [2], world.generator(4))
    assert np.array_equal(world.decode(z), f) and torch.equal(s1.latents, s2.latents)
    assert np.array_equal(r, r2.numpy()) and np.array_equal(d, d2.numpy() > 0.5)


def test_reset_from_episode_equals_reset_from_its_frames(ds):
    world = make_world(DISCRETE)
    K = world.K
    frames, actions = world.episode_context(ds, 1, 5)
    assert frames.shape == (1, K, FRAME, FRAME, 3) and actions.shape == (1, K - 1)
    assert np.array_equal(frames[0], ds.frames(1, 5 - K + 1, 6))
    assert np.array_equal(actions[0], ds.arrays(1)["action"][5 - K + 1 : 5])
    a = world.reset(frames, actions)
    b = world.initial_state(world.encode(ds.frames(1, 3, 6))[None], ds.arrays(1)["action"][3:5][None])
    assert torch.equal(a.latents, b.latents) and torch.equal(a.actions, b.actions) and torch.equal(a.pad, b.pad)
    # at t=0 the context is one frame and the earlier slots are padding
    frames0, actions0 = world.episode_context(ds, 1, 0)
    s0 = world.reset(frames0, actions0)
    assert frames0.shape[1] == 1 and s0.pad[0].tolist() == [True] * (K - 1) + [False]


def test_noise_streams_are_separate(ds):
    """A planner drawing candidates from its own generator does not shift the player's dream."""
    world = make_world(DISCRETE)
    frames, actions = world.episode_context(ds, 0, 6)
    player = world.generator(1)
    alone = world.rollout(world.reset(frames, actions), [[0, 1, 2]], player)[1]
    player, planner = world.generator(1), world.generator(99)
    state = world.reset(frames, actions)
    out = []
    for a in (0, 1, 2):
        cand = world.reset(np.repeat(frames, 8, 0), np.repeat(actions, 8, 0))
        world.rollout(cand, np.random.default_rng(a).integers(0, 4, (8, 5)), planner)  # planning in between
        state, f, _, _ = world.step(state, [a], player)
        out.append(f[0])
    assert np.array_equal(np.stack(out), alone[0])


def test_vector_env_autoresets_on_the_next_step(ds):
    world = make_world(DISCRETE)
    venv = WorldVectorEnv(world, 3, ds, max_episode_steps=2)
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, FRAME, FRAME, 3) and obs.dtype == np.uint8 and "episode" in info
    assert venv.single_action_space == gym.spaces.Discrete(4) and venv.action_space.shape == (3,)
    _, _, term, trunc, _ = venv.step(np.array([0, 1, 2]))
    assert not term.any() and not trunc.any()
    _, _, term, trunc, _ = venv.step(np.array([0, 1, 2]))
    assert trunc.all() and not term.any()
    obs, reward, term, trunc, info = venv.step(np.array([3, 3, 3]))  # the reset step
    assert (reward == 0).all() and not term.any() and not trunc.any() and info["_episode"].all()
    for i in range(3):  # each env's observation is the last frame of its new start
        e, t = info["episode"][i], info["t"][i]
        assert np.array_equal(obs[i], ds.frames(int(e), int(t), int(t) + 1)[0])
    # one batched world call equals the single env stepped with the same draws
    venv2 = WorldVectorEnv(world, 1, ds, max_episode_steps=50)
    env = WorldEnv(world, ds, max_episode_steps=50)
    o1, _ = venv2.reset(seed=5)
    o2, _ = env.reset(seed=5)
    assert np.array_equal(o1[0], o2)
    for a in (1, 2, 0):
        assert np.array_equal(venv2.step(np.array([a]))[0][0], env.step(a)[0])


def test_starts_from_stacks_options_and_callables(ds):
    world = make_world(DISCRETE)
    stacks = np.stack([ds.frames(0, 0, 3), ds.frames(1, 2, 5)])
    env = WorldEnv(world, stacks)
    obs, info = env.reset(seed=0)
    assert any(np.array_equal(obs, s[-1]) for s in stacks) and "start" in info
    given = ds.frames(2, 1, 4)
    obs, _ = env.reset(options={"frames": given, "actions": ds.arrays(2)["action"][1:3]})
    assert np.array_equal(obs, given[-1])
    env = WorldEnv(world, lambda rng: (ds.frames(0, 4, 7), None))
    assert np.array_equal(env.reset()[0], ds.frames(0, 6, 7)[0])
    with pytest.raises(SimulacraError, match="no starts"):
        WorldEnv(world).reset()
    with pytest.raises(SimulacraError, match="episodes"):
        Starts(ds, world, episodes=[])


def test_bad_actions_and_frames_are_one_line_errors(ds):
    world = make_world(DISCRETE)
    env = WorldEnv(world, ds)
    env.reset(seed=0)
    for bad, msg in ((2.7, "outside"), (True, "numbers"), (float("nan"), "outside"), (4, "outside"), (-1, "outside")):
        with pytest.raises(SimulacraError, match=msg):
            env.step(bad)
    with pytest.raises(SimulacraError, match="uint8"):
        world.reset(ds.frames(0, 0, 2)[None] / 255.0)
    with pytest.raises(SimulacraError, match="0..255"):
        world.reset(ds.frames(0, 0, 2)[None].astype(np.int32) + 300)
    with pytest.raises(SimulacraError, match="frames are"):
        world.reset(np.zeros((1, 2, 8, 8, 3), np.uint8))
    with pytest.raises(SimulacraError, match="batch of frame stacks"):
        world.reset(ds.frames(0, 0, 2))
    box = make_world(BOX)
    state = box.reset(ds.frames(0, 0, 2)[None])
    with pytest.raises(SimulacraError, match="outside"):
        box.step(state, [[0.0, 1.5]], box.generator(0))
    box.step(state, [[0.0, 1.0 + 1e-6]], box.generator(0))  # within the tolerance


def test_with_options_shares_weights_and_leaves_the_world_alone(ds):
    world = make_world(DISCRETE)
    cold = world.with_options(temperature=0.0, context_noise=0.0)
    assert cold.dyn.cfg.temperature == 0.0 and world.dyn.cfg.temperature == 1.0
    assert cold.dyn.out[-1].weight is world.dyn.out[-1].weight
    frames, actions = world.episode_context(ds, 0, 6)
    # no noise at all: the flow from the noise mean, the same whatever the seed
    a = cold.step(cold.reset(frames, actions), [1], cold.generator(1))[1]
    b = cold.step(cold.reset(frames, actions), [1], cold.generator(2))[1]
    assert np.array_equal(a, b)
    with pytest.raises(SimulacraError, match="temperature"):
        world.with_options(temperature=float("nan"))


def test_world_saves_and_loads_bit_exact_and_refuses_bad_files(tmp_path, ds):
    world = make_world(DISCRETE)
    world.save(tmp_path / "w")
    loaded = World.load(tmp_path / "w")
    frames, actions = world.episode_context(ds, 0, 6)
    a = world.rollout(world.reset(frames, actions), [[1, 2, 3]], world.generator(0))[1]
    b = loaded.rollout(loaded.reset(frames, actions), [[1, 2, 3]], loaded.generator(0))[1]
    assert np.array_equal(a, b)
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "w").iterdir())
    (tmp_path / "w" / "world.json").write_text("[1, 2]")
    with pytest.raises(SimulacraError, match="JSON object"):
        World.load(tmp_path / "w")
    world.save(tmp_path / "w")
    with torch.no_grad():
        world.dyn.out[-1].bias[0] = float("nan")
    world.save(tmp_path / "nan")
    with pytest.raises(SimulacraError, match="non-finite"):
        World.load(tmp_path / "nan")
    (tmp_path / "w" / "dynamics.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SimulacraError, match="cannot load"):
        World.load(tmp_path / "w")
    with pytest.raises(SimulacraError, match="backend"):
        World.load(tmp_path / "w", backend="tensorrt")
