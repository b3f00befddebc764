"""State readers: which env gets which reader, what a reader that fails or changes its names does, and
the user's own reader by module:function."""

import gymnasium as gym
import numpy as np
import pytest

from simulacra.data import state
from simulacra.data.envs import FrameEnv
from simulacra.errors import SimulacraError


class Toy(gym.Env):
    """Image observations; a numeric ``state`` attribute that a reader can see, or none."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, with_state=True):
        self.with_state, self.t = with_state, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.state = np.array([0.0, 1.0]) if self.with_state else None
        return np.zeros((8, 8, 3), np.uint8), {"lives": 3}

    def step(self, action):
        self.t += 1
        if self.with_state:
            self.state = self.state + action
        return np.zeros((8, 8, 3), np.uint8), 0.0, False, False, {"lives": 3 - self.t // 2}


def flaky(env, obs, info):
    """A user's reader that forgets a variable on odd steps and fails on the third."""
    t = env.unwrapped.t
    if t == 3:
        raise RuntimeError("boom")
    return {"a": float(t)} if t % 2 else {"a": float(t), "b": 2.0 * t}


def test_auto_picks_a_reader_by_env_family():
    assert state.auto_reader("ALE/Breakout-v5") == "ale_ram"
    assert state.auto_reader("MiniWorld-FourRooms-v0") == "miniworld"
    assert state.auto_reader("MiniGrid-DoorKey-8x8-v0") == "minigrid"
    assert state.auto_reader("CarRacing-v3") == "car_racing"
    assert state.auto_reader("mymodule:Thing-v0") == "generic"


def test_generic_reads_a_state_attribute_or_a_vector_observation_and_never_an_image():
    env = Toy()
    obs, info = env.reset(seed=0)
    assert state.generic(env, obs, info) == {"state_0": 0.0, "state_1": 1.0}  # the image is not a state
    assert state.generic(env, np.array([0.5]), info) == {"obs_0": 0.5}  # a vector observation comes first
    blind = Toy(with_state=False)
    obs, info = blind.reset(seed=0)
    assert state.generic(blind, obs, info) == {}  # an image is not a state
    assert state.generic(blind, np.array([0.5, -1.0]), {}) == {"obs_0": 0.5, "obs_1": -1.0}
    assert state.generic(blind, 3, {}) == {"obs_0": 3.0}  # FrozenLake's cell


def test_frame_env_records_state_and_lives_and_carries_missing_values_forward():
    env = FrameEnv(Toy(), (8, 8), "obs", state_reader=flaky)
    env.reset(seed=0)
    assert env.extras == {"state": {"a": 0.0, "b": 0.0}, "lives": 3}
    env.step(1)  # t=1: 'b' missing: it keeps its last value
    assert env.extras["state"] == {"a": 1.0, "b": 0.0} and env.extras["lives"] == 3
    env.step(1)  # t=2: both present
    assert env.extras["state"] == {"a": 2.0, "b": 4.0} and env.extras["lives"] == 2
    env.step(1)  # t=3: the reader fails: recording goes on, the values stay
    assert env.extras["state"] == {"a": 2.0, "b": 4.0}
    env.reset(seed=1)  # a new episode starts from what its first frame gives
    assert env.extras["state"] == {"a": 0.0, "b": 0.0}


def test_state_reader_specs():
    assert state.resolve_reader("none", "x") is None
    assert state.resolve_reader("simulacra.data.state:observation", "x") is state.observation
    for bad in ("bogus", "no_such_module_q:f", "simulacra.data.state:nope"):
        with pytest.raises(SimulacraError):
            state.check_spec(bad)
    state.check_spec("auto")
    state.check_spec("ale_ram")


def test_stack_needs_every_name_on_every_frame():
    rows = [{"a": 1.0, "b": 2.0}, {"b": 3.0, "a": 4.0}]
    np.testing.assert_array_equal(state.stack(rows, ["a", "b"]), [[1, 2], [4, 3]])
    assert state.stack([{"a": 1.0}, {}], ["a"]) is None
    assert state.stack(rows, []) is None
