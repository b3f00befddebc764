"""Named worlds: which env, how its frames are made, how it is explored and how a person plays it.

A preset is data. Anything not named here still records with ``--env-id`` and generic defaults (see
:func:`simulacra.data.record.resolve_preset`: frames letterboxed to 64x64, a 1000-step cap, a sticky random
explorer, and per env family the settings a world model needs, e.g. no sticky actions on ALE).
Keyboard maps use browser ``KeyboardEvent.key`` names; for Box actions they give a *delta* applied
to the current action (``keys_relative``), for discrete ones the action index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simulacra.errors import SimulacraError


@dataclass(frozen=True)
class WorldPreset:
    name: str
    """Short name used on the command line (``--preset NAME``)."""
    env_id: str
    """Gymnasium id of the real environment."""
    env_kwargs: dict = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make``."""
    frame_source: str = "auto"
    """Where frames come from: 'obs', 'obs:KEY', 'render' or 'auto' (first image found)."""
    resolution: int = 64
    """Frames are stored as resolution x resolution RGB."""
    fit: str = "stretch"
    """How a picture of another aspect ratio becomes a square frame: 'stretch' (resize whatever its shape:
    every preset, as they always did), 'pad' (keep the aspect ratio, black bars: ``--env-id``'s default)
    or 'crop' (keep the aspect ratio, cut the edges); see simulacra.data.envs."""
    max_episode_steps: int = 1000
    """Episodes are truncated after this many steps."""
    policy: str = "random"
    """Exploration policy name (see simulacra.data.policies)."""
    policy_kwargs: dict = field(default_factory=dict)
    """Arguments of the exploration policy."""
    keys: dict[str, Any] = field(default_factory=dict)
    """Keyboard map for play: key -> action (discrete) or action delta (Box, keys_relative)."""
    keys_relative: bool = False
    """Whether key values are deltas added to the current action (continuous control)."""
    noop_action: Any = 0
    """Discrete: action sent when no key is pressed. Relative (Box) keys: the starting action; with no
    key pressed the current action is kept, so a pusher stays where it is."""
    state: str = "auto"
    """Where the env's true state per frame comes from, for the eval's state probes: 'auto' (by env family:
    ALE RAM, CarRacing's car, ViZDoom's game variables, Push-T's poses, MiniGrid / MiniWorld's agent, an
    unwrapped numeric ``state``), 'none', a reader of simulacra.data.state or 'module:function'."""
    fps: int = 15
    """Playback rate of recorded frames (previews, play)."""
    description: str = ""
    """One line for `simulacra record --help` and data set info."""

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, WorldPreset] = {
    p.name: p
    for p in [
        WorldPreset(
            name="breakout",
            env_id="ALE/Breakout-v5",
            # no sticky actions (as the Atari 100k setting of IRIS/DIAMOND): the recorded action is the
            # executed one, so a world model can learn what each key does
            env_kwargs={"frameskip": 4, "repeat_action_probability": 0.0},
            max_episode_steps=1000,
            # the paddle player returns the ball, so bricks break and lives are lost in the data (random
            # play breaks 1-2 bricks an episode): a world must see the events it is to predict
            policy="paddle",
            policy_kwargs={"sticky": 0.75},
            keys={"ArrowLeft": 3, "ArrowRight": 2, " ": 1},
            description="Atari Breakout (ALE v5, frameskip 4, no sticky actions), noisy scripted paddle player",
        ),
        WorldPreset(
            name="pong",
            env_id="ALE/Pong-v5",
            env_kwargs={"frameskip": 4, "repeat_action_probability": 0.0},
            max_episode_steps=1000,
            policy_kwargs={"sticky": 0.75},
            keys={"ArrowUp": 2, "ArrowDown": 3, " ": 1},
            description="Atari Pong (ALE v5, frameskip 4, no sticky actions)",
        ),
        WorldPreset(
            name="carracing",
            env_id="CarRacing-v3",
            env_kwargs={"continuous": False},
            max_episode_steps=1000,
            policy="carracing",
            keys={"ArrowRight": 1, "ArrowLeft": 2, "ArrowUp": 3, "ArrowDown": 4},  # car_racing: 1 = steer right
            fps=30,
            description="Box2D CarRacing, discrete actions, scripted track-following explorer with noise",
        ),
        WorldPreset(
            name="doom",
            env_id="VizdoomTakeCover-v1",
            # objects_info_enabled: the explorer reads fireball positions (frames are unchanged)
            env_kwargs={"frame_skip": 4, "objects_info_enabled": True},
            frame_source="obs:screen",
            max_episode_steps=500,
            policy="takecover",
            policy_kwargs={"sticky": 0.8},
            keys={"ArrowRight": 1, "ArrowLeft": 2},
            fps=9,
            description="ViZDoom Take Cover (dodge fireballs; the World Models Doom task), frame skip 4, dodging explorer",
        ),
        WorldPreset(
            name="pusht",
            env_id="gym_pusht/PushT-v0",
            env_kwargs={"obs_type": "pixels"},
            max_episode_steps=300,
            policy="pusht",
            keys={
                "ArrowLeft": [-16.0, 0.0],
                "ArrowRight": [16.0, 0.0],
                "ArrowUp": [0.0, -16.0],
                "ArrowDown": [0.0, 16.0],
            },
            keys_relative=True,
            noop_action=[256.0, 256.0],  # start at the centre; no key = keep the current target
            fps=10,
            description="Push-T (gym-pusht pixels), scripted explorer that pushes the T block around",
        ),
        WorldPreset(
            name="crafter",
            env_id="simulacra/Crafter-v0",
            max_episode_steps=1000,
            # mostly moves and 'do' (uniform choice sleeps often, and sleepers die to zombies at once)
            policy_kwargs={"sticky": 0.5, "weights": [1, 3, 3, 3, 3, 3, 0.1, *[0.5] * 4, *[0.25] * 6]},
            keys={
                "a": 1,
                "d": 2,
                "w": 3,
                "s": 4,
                " ": 5,
                "Tab": 6,
                "r": 7,
                "t": 8,
                "f": 9,
                "p": 10,
                "1": 11,
                "2": 12,
                "3": 13,
                "4": 14,
                "5": 15,
                "6": 16,
            },  # fmt: skip
            fps=10,
            description="Crafter open-world survival (17 actions)",
        ),
        WorldPreset(
            name="fourrooms",
            env_id="MiniGrid-FourRooms-v0",
            env_kwargs={"max_steps": 200},
            frame_source="render",
            max_episode_steps=200,
            policy="minigrid",
            # walks to random cells by breadth-first search (through the gaps); random steps only turn or go
            policy_kwargs={"sticky": 0.3, "weights": [1, 1, 2, 0, 0, 0, 0]},
            keys={"ArrowLeft": 0, "ArrowRight": 1, "ArrowUp": 2},
            noop_action=6,
            fps=6,
            description="MiniGrid FourRooms, full rendered view, explorer walking between rooms (plan's navigation task)",
        ),
        WorldPreset(
            name="minigrid",
            env_id="MiniGrid-DoorKey-8x8-v0",
            frame_source="render",
            max_episode_steps=300,
            policy="minigrid",
            policy_kwargs={"sticky": 0.3},
            keys={"ArrowLeft": 0, "ArrowRight": 1, "ArrowUp": 2, "p": 3, "d": 4, " ": 5},
            noop_action=6,
            fps=6,
            description="MiniGrid DoorKey 8x8, full rendered view, explorer that fetches the key and opens the door",
        ),
    ]
}
PRESETS["debug"] = WorldPreset(
    **{**PRESETS["breakout"].to_dict(), "name": "debug", "max_episode_steps": 40, "description": "CI: tiny Breakout"}
)


def get_preset(name: str) -> WorldPreset:
    if name not in PRESETS:
        raise SimulacraError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
