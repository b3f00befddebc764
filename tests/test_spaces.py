"""Action spaces: one typed description, its JSON (as stored in info.json), Gymnasium, checks, sampling."""

import json

import gymnasium as gym
import numpy as np
import pytest

from simulacra.cli import main
from simulacra.spaces import TOLERANCE, ActionSpace, ActionSpaceError

DISCRETE = ActionSpace.discrete(5, start=-2)
BOX = ActionSpace.box([-1.0, 0.0], [1.0, 512.0])
INF_BOX = ActionSpace.box([-np.inf, 0.0, -1.0], [np.inf, np.inf, 1.0])


# ---- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [DISCRETE, ActionSpace.discrete(4), BOX, INF_BOX, ActionSpace.none()])
def test_json_round_trip(space):
    d = json.loads(json.dumps(space.to_json()))  # through text, as info.json stores it (inf as Infinity)
    assert ActionSpace.from_json(d) == space


@pytest.mark.parametrize("space", [DISCRETE, BOX, INF_BOX])
def test_gymnasium_round_trip(space):
    g = space.to_gym()
    assert ActionSpace.from_gym(g) == space
    assert ActionSpace.from_json(ActionSpace.from_gym(g).to_json()).to_gym() == g


def test_gymnasium_spaces_convert_as_expected():
    g = gym.spaces.Discrete(5, start=-2)
    assert ActionSpace.from_gym(g) == DISCRETE and DISCRETE.to_gym() == g and DISCRETE.to_gym().start == -2
    b = gym.spaces.Box(np.array([-np.inf, 0.0, -1.0], np.float32), np.array([np.inf, np.inf, 1.0], np.float32))
    assert ActionSpace.from_gym(b) == INF_BOX and np.isinf(INF_BOX.to_gym().low[0])
    assert ActionSpace.from_gym(None) == ActionSpace.none()
    with pytest.raises(ActionSpaceError, match="action-free"):
        ActionSpace.none().to_gym()


def test_json_is_the_stored_format():
    """The exact bytes recorded data sets hold in info.json, so old data sets and new ones agree."""
    assert json.dumps(ActionSpace.from_gym(gym.spaces.Discrete(4)).to_json()) == (
        '{"type": "discrete", "n": 4, "start": 0}'
    )
    box = gym.spaces.Box(np.zeros(2, np.float32), np.full(2, 512, np.float32))
    assert json.dumps(ActionSpace.from_gym(box).to_json()) == (
        '{"type": "box", "shape": [2], "low": [0.0, 0.0], "high": [512.0, 512.0], "dtype": "float32"}'
    )
    assert ActionSpace.none().to_json() == {"type": "none"}
    assert ActionSpace.from_json(None) == ActionSpace.none()
    # written before start and dtype were always stored: still readable
    assert ActionSpace.from_json({"type": "discrete", "n": 3}) == ActionSpace.discrete(3)


# ---- validation ---------------------------------------------------------------------------------
def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "actions, says",
    [
        ([0, 2.7], "2.7 at index 1 is outside"),
        ([True, False], "must be numbers"),
        ([0.0, np.nan], "nan at index 1 is outside"),
        ([1, 3], "3 at index 1 is outside"),  # start -2, n 5: -2..2
        ([-3], "-3 at index 0 is outside"),
        (np.zeros((2, 2)), "expected actions of shape (2,)"),
        (["a", "b"], "must be numbers"),
    ],
)
def test_discrete_validate_rejects_with_one_line(actions, says):
    with pytest.raises(ActionSpaceError) as e:
        DISCRETE.validate(actions, batch_shape=(len(actions),))
    assert says in _one_line(e)


def test_discrete_validate_accepts_in_range():
    got = DISCRETE.validate([-2, 0, 2.0], batch_shape=(3,))
    assert got.dtype == np.int64 and got.tolist() == [-2, 0, 2]
    assert DISCRETE.validate(np.int32(1)).shape == ()


@pytest.mark.parametrize(
    "actions, says",
    [
        ([[0.0, 0.0], [1.5, 0.0]], "[1.5, 0.0] at index 1 is outside"),
        ([[0.0, -1.0]], "at index 0 is outside"),
        ([[np.nan, 1.0]], "is outside"),
        ([[np.inf, 1.0]], "is outside"),
        (np.zeros((2, 3)), "has shape (2,)"),
        (np.zeros(2), "expected actions of shape (1, 2)"),
        ([[True, False]], "must be numbers"),
    ],
)
def test_box_validate_rejects_with_one_line(actions, says):
    with pytest.raises(ActionSpaceError) as e:
        BOX.validate(actions, batch_shape=(1,) if np.ndim(actions) == 1 else (len(actions),))
    assert says in _one_line(e)


@pytest.mark.parametrize("space", [BOX, DISCRETE])
def test_ragged_actions_are_one_line_errors(space):
    """NumPy refuses to make an array of a ragged list (play's fuzzer sent one): one line, not a ValueError."""
    with pytest.raises(ActionSpaceError) as e:
        space.validate([[0.0, [1.0, 2.0]]])
    assert "regular array" in _one_line(e)


def test_box_validate_accepts_in_range_and_within_the_tolerance():
    got = BOX.validate(np.array([[-1.0, 0.0], [1.0, 512.0], [0.25, 100]], np.float64), batch_shape=(3,))
    assert got.dtype == np.float32 and got.shape == (3, 2)
    BOX.validate([[1 + TOLERANCE / 2, 512.0]])  # a float32 round trip's worth outside: still inside
    with pytest.raises(ActionSpaceError):
        BOX.validate([[1 + TOLERANCE * 5, 512.0]])
    assert INF_BOX.validate([[1e30, 1e30, 0.0]]).shape == (1, 3)  # infinite bounds take any finite number


def test_action_free_space_takes_no_actions():
    with pytest.raises(ActionSpaceError, match="action-free"):
        ActionSpace.none().validate([0])


# ---- sampling and scaling -----------------------------------------------------------------------
def test_sample_stays_in_bounds_and_is_reproducible():
    for space in (DISCRETE, BOX, INF_BOX):
        a = space.sample(np.random.default_rng(3), (500,))
        assert a.dtype == space.dtype and a.shape == (500, *space.event_shape)
        space.validate(a, batch_shape=(500,))
        np.testing.assert_array_equal(a, space.sample(np.random.default_rng(3), (500,)))
        assert not np.array_equal(a, space.sample(np.random.default_rng(4), (500,)))
    low, high = INF_BOX.finite_bounds()
    a = INF_BOX.sample(np.random.default_rng(0), (500,))
    assert (a >= low).all() and (a <= high).all() and low.tolist() == [-1, 0, -1] and high.tolist() == [1, 1, 1]
    assert set(DISCRETE.sample(np.random.default_rng(0), (500,)).tolist()) == {-2, -1, 0, 1, 2}


def test_sample_draws_what_the_recorder_always_drew():
    """Recorded data sets stay byte-identical: the same random numbers, in the same order."""
    old, new = np.random.default_rng([5, 0x5EED]), np.random.default_rng([5, 0x5EED])
    assert [int(-2 + old.integers(5)) for _ in range(200)] == [int(DISCRETE.sample(new)) for _ in range(200)]
    g = BOX.to_gym()
    old, new = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(50):
        np.testing.assert_array_equal(old.uniform(g.low, g.high).astype(np.float32), BOX.sample(new))
    assert old.random() == new.random()


def test_normalize_maps_bounds_to_minus_one_and_one():
    np.testing.assert_allclose(BOX.normalize(np.array([[-1.0, 0.0], [1.0, 512.0], [0.0, 256.0]])),
                               [[-1, -1], [1, 1], [0, 0]], atol=1e-6)  # fmt: skip
    assert DISCRETE.normalize(np.array([-2, 0, 2])).tolist() == [0, 2, 4]
    low, high = INF_BOX.finite_bounds()
    np.testing.assert_allclose(INF_BOX.normalize(np.stack([low, high])), [[-1, -1, -1], [1, 1, 1]], atol=1e-6)


# ---- what simulacra cannot learn ----------------------------------------------------------------
def test_multi_discrete_is_refused_with_one_line():
    with pytest.raises(ActionSpaceError) as e:
        ActionSpace.from_gym(gym.spaces.MultiDiscrete([3, 2]))
    assert "MultiDiscrete" in _one_line(e)
    with pytest.raises(ActionSpaceError) as e:
        ActionSpace.from_json({"type": "multi_discrete", "nvec": [3, 2]})
    assert "MultiDiscrete" in _one_line(e)
    for bad in ({"type": "tuple"}, {"type": "discrete"}, {"n": 3}, {"type": "box", "low": [1], "high": [0]}):
        with pytest.raises(ActionSpaceError) as e:
            ActionSpace.from_json(bad)
        _one_line(e)


class _MultiDiscreteEnv(gym.Env):
    """Pictures, but a MultiDiscrete action space."""

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full((16, 16, 3), 100, np.uint8), {}

    def step(self, action):
        return np.full((16, 16, 3), 100, np.uint8), 0.0, False, False, {}


gym.register("SimulacraTest/MultiDiscrete-v0", entry_point=_MultiDiscreteEnv)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_record_refuses_a_multi_discrete_env_with_one_line(tmp_path, capsys):
    args = ["record", "--env-id", "SimulacraTest/MultiDiscrete-v0", "--episodes", "1", "--num-envs", "1"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(tmp_path / "x")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("simulacra record: error:") and "MultiDiscrete" in err
    assert not (tmp_path / "x").exists()
