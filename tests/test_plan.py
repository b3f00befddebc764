"""simulacra plan: the planners on worlds whose answer is known, the MPC loop against an oracle latent, the
Push-T task against the real env, the planning world's training and loading, and the verb."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file

from simulacra.errors import SimulacraError
from simulacra.models.gcbc import GCBC, GCBCConfig
from simulacra.models.jepa import JEPA, JEPAConfig, vicreg_terms
from simulacra.plan import planners
from simulacra.plan.agent import MPCConfig, Planner, run_episode
from simulacra.plan.benchmark import RandomFeatures, wilson
from simulacra.plan.tasks import PushT, draw_episodes, locate_agent


# ---- planners on a world whose answer is known -------------------------------------------------------
def _point_world(z_D, actions_NHA):
    """z' = z + a: the best plan is any whose actions sum to goal - start."""
    return z_D + torch.cumsum(actions_NHA, 1)


@pytest.mark.parametrize("name", planners.PLANNERS)
def test_planner_reaches_a_known_goal(name):
    goal = torch.tensor([1.5, -2.0])
    cost = planners.latent_cost(goal)
    g = torch.Generator().manual_seed(0)
    best, info = getattr(planners, name)(
        _point_world, cost, torch.zeros(2), 4, [-1, -1], [1, 1], planners.Search(samples=200, iters=20), g
    )
    assert best.shape == (4, 2)
    assert (best.abs() <= 1 + 1e-6).all(), "a plan left the action bounds"
    assert torch.allclose(best.sum(0), goal, atol=0.15), best.sum(0)
    # one iteration of blind sampling is the baseline the search must beat
    _, blind = planners.cem(
        _point_world, cost, torch.zeros(2), 4, [-1, -1], [1, 1], planners.Search(samples=200, iters=1), g
    )
    assert info["cost"] < blind["cost"] / 5


def test_cem_with_one_elite_stays_finite():
    """One elite has no spread: the search narrows to its floor instead of sampling NaN."""
    goal = torch.tensor([1.5, -2.0])

    def search(iters):
        return planners.cem(_point_world, planners.latent_cost(goal), torch.zeros(2), 4, [-1, -1], [1, 1],
                            planners.Search(samples=32, elites=1, iters=iters), torch.Generator().manual_seed(0))  # fmt: skip

    best, info = search(6)
    assert torch.isfinite(best).all() and info["cost"] < search(1)[1]["cost"], "later iterations still search"


def test_planner_cannot_reach_an_unreachable_goal():
    """Bounds hold: a goal 10 away with 4 steps of at most 1 ends at the boundary, cost > 0."""
    goal = torch.tensor([10.0, 0.0])
    best, info = planners.cem(_point_world, planners.latent_cost(goal), torch.zeros(2), 4, [-1, -1], [1, 1],
                              planners.Search(samples=100, iters=10), torch.Generator().manual_seed(0))  # fmt: skip
    assert (best.abs() <= 1 + 1e-6).all() and best[:, 0].sum() > 3.9
    assert 36.0 - 1e-4 <= info["cost"] < 37.0  # (10 - 4)^2 is the least any in-bounds plan can cost


def test_cem_discrete_finds_the_sequence():
    """A 1-D walk (0: left, 1: stay, 2: right): the goal 3 steps right needs exactly three 'right' of 5 moves
    summing to +3 -- the search must find a sequence with that sum."""

    def rollout(z, onehot_NHA):
        step = onehot_NHA @ torch.tensor([-1.0, 0.0, 1.0])
        return (z + torch.cumsum(step, 1))[..., None]

    best, info = planners.cem_discrete(rollout, planners.latent_cost(torch.tensor([3.0])), torch.zeros(1), 5, 3,
                                       planners.Search(samples=100, iters=10), torch.Generator().manual_seed(0))  # fmt: skip
    assert (best - 1).sum() == 3 and info["cost"] == 0


def test_warm_start_shifts_and_fills():
    prev = torch.arange(10.0).view(5, 2)
    w = planners.warm_start(prev, 2, torch.tensor([-1.0, -1.0]))
    assert w.tolist() == [[4, 5], [6, 7], [8, 9], [-1, -1], [-1, -1]]
    assert planners.warm_start(None, 1, torch.zeros(2)) is None


def test_latent_cost_along_prefers_reaching_sooner():
    goal = torch.zeros(2)
    early = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    late = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])
    assert planners.latent_cost(goal)(early) == planners.latent_cost(goal)(late)
    assert planners.latent_cost(goal, along=1.0)(early) < planners.latent_cost(goal, along=1.0)(late)


def test_wilson_interval():
    lo, hi = wilson(80, 100)
    assert 0.70 < lo < 0.72 and 0.86 < hi < 0.88
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == 1
    assert wilson(0, 0) == (0.0, 1.0)


# ---- the JEPA and GCBC models ---------------------------------------------------------------------------
def test_vicreg_penalises_collapse():
    collapsed = torch.ones(64, 8)
    spread = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 2
    assert vicreg_terms(collapsed)[0] > 0.9
    assert vicreg_terms(spread)[0] < 0.05
    correlated = torch.randn(64, 1).expand(64, 8) * 2
    assert vicreg_terms(correlated)[1] > 10 * vicreg_terms(spread)[1]


def test_jepa_learns_a_moving_square():
    """Frames of a square moved by the action: the predictor's error falls well below its start, and
    the encodings do not collapse (VICReg variance term near 0)."""
    torch.manual_seed(0)
    cfg = JEPAConfig(action_dim=2, block=1, latent_dim=8, channels=8, hidden=64, layers=2, horizon=2)
    model = JEPA(cfg, (32, 32))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)

    def batch():
        pos = rng.integers(4, 20, size=(32, 2))
        act = rng.integers(-2, 3, size=(32, 2, 2))
        frames = np.zeros((32, 3, 3, 32, 32), np.uint8)
        for b in range(32):
            p = pos[b].copy()
            for t in range(3):
                frames[b, t, :, p[1] : p[1] + 6, p[0] : p[0] + 6] = 255
                if t < 2:
                    p = p + act[b, t]
        return {"frames": torch.from_numpy(frames), "actions": torch.from_numpy(act / 2).float()}

    first = None
    for _ in range(100):
        loss, m = model(batch())
        first = first or m["pred"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["pred"] < first / 3, (first, m)
    assert m["var"] < 0.2


def test_gcbc_output_is_bounded_and_trainable():
    model = GCBC(GCBCConfig(action_dim=4, block=2, channels=8, hidden=32), (32, 32))
    f = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    out = model.act(f, f)
    assert out.shape == (4, 4) and out.abs().max() <= 1
    loss, m = model({"frame": f, "goal": f, "actions": torch.zeros(4, 4)})
    loss.backward()
    assert m["mse"] >= 0 and all(p.grad is not None for p in model.parameters())


# ---- Push-T against the real env -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pusht_data(tmp_path_factory):
    from simulacra.data.record import RecordConfig, record_episodes

    root = tmp_path_factory.mktemp("plan") / "pusht"
    return record_episodes(
        RecordConfig(preset="pusht", episodes=3, seed=5, out=str(root), max_episode_steps=60, num_envs=1)
    )


@pytest.fixture(scope="module")
def pusht_env():
    from simulacra.data.envs import make_env

    task = PushT()
    env = make_env(task.env_id, task.env_kwargs, (64, 64), "auto", None, None, "stretch", task.state_reader)
    yield env
    env.close()


def test_reset_to_reproduces_the_recorded_frame(pusht_data, pusht_env):
    """gym-pusht's legacy state setter moves the block when it turns it; reset_to undoes that, so the
    frame at a recorded state is the recorded frame, pixel for pixel."""
    from simulacra.data.store import Dataset

    ds, task = Dataset.open(pusht_data), PushT()
    s = ds.arrays(1)["state"]
    for t in (0, 17, 40):
        frame = task.reset_to(pusht_env, s[t])
        assert np.array_equal(frame, ds.frames(1, t, t + 1)[0]), t
        assert np.allclose(task.state(pusht_env)[4:7], s[t, 4:7], atol=1e-3)


def test_replaying_the_recording_reaches_its_goal(pusht_data, pusht_env):
    """The oracle row of the protocol: the recorded actions from the start state reach the goal 25 steps
    later (the env is deterministic), random actions mostly do not."""
    from simulacra.data.store import Dataset

    ds, task = Dataset.open(pusht_data), PushT()
    eps = draw_episodes(ds, 6, 25, seed=0)
    replay_wins = 0
    for ep in eps:
        actions = ds.arrays(ep.episode)["action"][ep.start : ep.start + 25]
        task.reset_to(pusht_env, ep.start_state)
        for a in actions:
            pusht_env.step(a)
        replay_wins += task.success(task.state(pusht_env), ep.goal_state)
    assert replay_wins == len(eps)


def test_success_test_and_action_features():
    task = PushT()
    goal = np.array([100, 100, 0, 0, 200, 200, 0.1])
    assert task.success(goal.copy(), goal)
    assert not task.success(goal + [21, 0, 0, 0, 0, 0, 0], goal)
    assert not task.success(goal + [0, 0, 0, 0, 0, 21, 0], goal)
    assert not task.success(goal + [0, 0, 0, 0, 0, 0, math.pi / 9 + 0.01], goal)
    assert task.success(goal + [0, 0, 0, 0, 0, 0, 2 * math.pi], goal), "angles wrap"
    state = np.array([[250.0, 260.0]])
    f = task.features(np.array([[280.0, 230.0]]), state)
    assert np.allclose(f, [[1.0, -1.0]])
    assert np.allclose(task.to_env(f[0], state[0]), [280, 230])
    assert np.allclose(task.to_env(np.array([1.0, 1.0]), np.array([500.0, 500.0])), [512, 512]), "clipped"


def test_agent_is_located_in_the_frame(pusht_data):
    from simulacra.data.store import Dataset

    ds = Dataset.open(pusht_data)
    s, f = ds.arrays(0)["state"], ds.frames(0)
    err = [np.linalg.norm(locate_agent(f[t]) - s[t, :2]) for t in range(0, 60, 5)]
    assert np.median(err) < 6, err


# ---- the MPC loop against an oracle latent --------------------------------------------------------------
class OracleLatent:
    """A 'planning world' that reads Push-T's agent from the frame and moves it by the relative target:
    exact for the agent, blind to the block. Planning with it must put the agent on the goal."""

    def __init__(self):
        self.cfg = JEPAConfig(action_dim=10, block=5, decoder=False)

    def eval(self):
        return self

    def encode(self, frames_BCHW, proprio_BP=None):
        return torch.tensor(np.stack([locate_agent(f.permute(1, 2, 0).numpy()) / 30.0 for f in frames_BCHW]),
                            dtype=torch.float32)  # fmt: skip

    def rollout(self, z_BD, actions_BHA):
        # gym-pusht's critically damped PD controller (kp 100, kv 20, 0.1 s a step) chasing a target d ahead
        # settles at 5 d per second: about half the offset per step
        step = actions_BHA.view(*actions_BHA.shape[:2], 5, 2).sum(2) * 0.5
        return z_BD[:, None] + torch.cumsum(step, 1)


def test_mpc_with_an_oracle_latent_moves_the_agent_to_the_goal(pusht_data, pusht_env):
    from simulacra.data.store import Dataset

    ds, task = Dataset.open(pusht_data), PushT()
    ep = draw_episodes(ds, 1, 25, seed=3)[0]
    cfg = MPCConfig(search=planners.Search(samples=100, elites=10, iters=10))
    planner = Planner(OracleLatent(), task, ep.goal_frame, cfg, seed=0)
    r = run_episode(pusht_env, task, planner, ep, budget=40, judge=False)
    planned = np.linalg.norm(r["final_state"][:2] - ep.goal_state[:2])
    rand = run_episode(pusht_env, task, RandomFeatures(task), ep, budget=40, judge=False)
    at_random = np.linalg.norm(rand["final_state"][:2] - ep.goal_state[:2])
    start = np.linalg.norm(ep.start_state[:2] - ep.goal_state[:2])
    assert planned < PushT.POS_TOL < start, (planned, start)
    assert planned < at_random
    assert len(r["plan_seconds"]) == 8 and planner.plan_at == list(range(0, 40, 5))


def test_planner_is_a_policy():
    from simulacra.world.policy import Policy

    planner = Planner(OracleLatent(), PushT(), np.zeros((64, 64, 3), np.uint8), MPCConfig())
    assert isinstance(planner, Policy)
    frame = np.full((1, 64, 64, 3), 255, np.uint8)
    frame[0, 30:33, 30:33] = (65, 105, 225)
    a = planner.act(frame)  # frames only: the agent is found in the picture
    assert a.shape == (2,) and ((a >= 0) & (a <= 512)).all()


# ---- training, loading, the verb --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plan_run(pusht_data, tmp_path_factory):
    from simulacra.data.store import Dataset
    from simulacra.plan.train import train_planning

    run = tmp_path_factory.mktemp("plan") / "run"
    ds = Dataset.open(pusht_data)
    meta = train_planning(ds, [0, 1], PushT(), run / "plan", None, steps=12, batch_size=8)
    assert meta["steps"] == {"jepa": 12, "gcbc": 12}
    return run


def test_load_planning_round_trip(plan_run):
    from simulacra.plan.train import load_planning

    jepa, gcbc, meta = load_planning(plan_run)
    assert meta["task"] == "pusht" and isinstance(jepa, JEPA) and isinstance(gcbc, GCBC)
    assert not jepa.training


def _copy_run(plan_run, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(plan_run / "plan", dst / "plan", ignore=shutil.ignore_patterns("checkpoints"))
    return dst


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "plan.json").unlink(), "no planning world here"),
        (lambda p: (p / "plan.json").write_text("{nope"), "not valid JSON"),
        (lambda p: (p / "plan.json").write_text("[1, 2]"), "must hold a JSON object"),
        (lambda p: _edit(p, lambda m: m["jepa"].update(extra=1)), "jepa.extra is not a known field"),
        (lambda p: _edit(p, lambda m: m["gcbc"].pop("channels")), "gcbc.channels is missing"),
        (lambda p: _edit(p, lambda m: m["jepa"].update(latent_dim=0)), "jepa.latent_dim must be at least 1"),
        (lambda p: _edit(p, lambda m: m["jepa"].update(latent_dim=32)), "does not hold this model's weights"),
        (lambda p: _edit(p, lambda m: m.update(frame_shape=[60, 60, 3])), "not a multiple of 16"),
        (lambda p: _edit(p, lambda m: m.update(frame_shape="big")), "three positive integers"),
        (lambda p: _edit(p, lambda m: m.update(world="voxel")), "world must be one of vector, cells"),
        (lambda p: _edit(p, lambda m: m.update(world="cells")), "jepa.latent_dim is not a known field"),
        (lambda p: (p / "jepa.safetensors").unlink(), "jepa.safetensors: missing"),
        (lambda p: (p / "gcbc.safetensors").write_bytes(b"\x80\x04pickle"), "does not hold this model's weights"),
        (lambda p: save_file({"x": torch.zeros(1)}, str(p / "jepa.safetensors")), "does not hold this model's weights"),
    ],
)
def test_load_planning_refuses_damaged_runs(plan_run, tmp_path, damage, message):
    from simulacra.plan.train import load_planning

    run = _copy_run(plan_run, tmp_path)
    damage(run / "plan")
    with pytest.raises(SimulacraError, match=message):
        load_planning(run)


def _edit(folder, change):
    meta = json.loads((folder / "plan.json").read_text())
    change(meta)
    (folder / "plan.json").write_text(json.dumps(meta))


def test_plan_verb_with_a_goal_image_writes_a_video(plan_run, pusht_data, capsys, tmp_path):
    from PIL import Image

    from simulacra.data.store import Dataset

    goal = tmp_path / "goal.png"
    Image.fromarray(Dataset.open(pusht_data).frames(0, 30, 31)[0]).resize((128, 128)).save(goal)
    code, out, err = run_cli(capsys, "plan", plan_run, "--goal", goal, "--steps", "7", "--iters", "2",
                             "--samples", "16", "--elites", "4", "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    assert "7 env steps with cem" in out and "2 plans" in out
    import imageio.v3 as iio

    video = iio.imread(tmp_path / "o" / "plan-seed0.mp4")
    assert video.shape[0] == 8 and video.shape[2] == 3 * 256 + 8  # real | goal | imagined, 4x, 8 frames


def test_plan_benchmark_table_and_json(plan_run, pusht_data, capsys, tmp_path):
    code, out, err = run_cli(capsys, "plan", plan_run, "--benchmark", "pusht", "--data", pusht_data, "--heldout",
                             pusht_data, "--episodes", "2", "--steps", "6", "--iters", "2", "--samples", "16",
                             "--elites", "4", "--videos", "1", "--out", tmp_path / "b")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "b" / "benchmark-pusht.json").read_text())
    assert set(report["methods"]) == {"cem", "mppi", "gradient", "gcbc", "random"}
    for row in report["methods"].values():
        assert row["episodes"] == 2 and 0 <= row["ci95"][0] <= row["success"] <= row["ci95"][1] <= 1
    assert report["methods"]["cem"]["seconds_per_plan"] > 0
    assert report["methods"]["gcbc"]["seconds_per_plan"] > 0, "GCBC's own inference is timed too"
    assert report["methods"]["random"]["seconds_per_plan"] == 0
    assert (tmp_path / "b" / "benchmark-pusht-cem-0.mp4").is_file()
    for m in ("cem", "gcbc", "random"):
        assert m in out and "success" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--planner", "astar", "--goal", "x.png"], "--planner must be one of"),
        (["--elites", "400", "--goal", "x.png"], "cannot exceed --samples"),
        (["--horizon", "0", "--goal", "x.png"], "--horizon must be a positive integer"),
        (["--cost", "miles", "--goal", "x.png"], "--cost must be distance, steps or pixels"),
        ([], "give --goal IMAGE"),
        (["--goal", "/nonexistent.png"], "no such file"),
        (["--benchmark", "chess"], "no planning task for the preset 'chess'"),
        (["--methods", "cem", "oracle", "--benchmark", "pusht"], "unknown --methods"),
    ],
)
def test_plan_bad_options(plan_run, capsys, args, message):
    code, out, err = run_cli(capsys, "plan", plan_run, *args)
    assert code != 0 and message in err, err


def test_steps_cost_needs_a_world_that_counts_steps():
    from simulacra.errors import SimulacraError
    from simulacra.plan.tasks import FourRooms

    jepa = JEPA(JEPAConfig(action_dim=15, block=5, channels=8, hidden=32, layers=1, proprio_dim=2, decoder=False))
    with pytest.raises(SimulacraError, match="needs a world that counts steps"):
        Planner(jepa, FourRooms(), np.zeros((64, 64, 3), np.uint8), MPCConfig(cost="steps"))
    with pytest.raises(SimulacraError, match="needs a world that decodes"):
        Planner(jepa, FourRooms(), np.zeros((64, 64, 3), np.uint8), MPCConfig(cost="pixels"))


def test_plan_refuses_a_goal_that_is_not_a_picture(plan_run, capsys, tmp_path):
    bad = tmp_path / "goal.png"
    bad.write_bytes(b"not a picture at all")
    code, _, err = run_cli(capsys, "plan", plan_run, "--goal", bad)
    assert code != 0 and "--goal" in err


def test_plan_on_a_run_without_a_planning_world(capsys, tmp_path):
    code, _, err = run_cli(capsys, "plan", tmp_path, "--goal", tmp_path / "g.png")
    assert code != 0 and "no planning world here" in err, err


def test_draw_episodes_needs_state(tmp_path):
    from conftest import make_synthetic

    from simulacra.data.store import Dataset

    make_synthetic(tmp_path / "ds")
    with pytest.raises(SimulacraError, match="no state per frame"):
        draw_episodes(Dataset.open(tmp_path / "ds"), 3)


@pytest.fixture(scope="module")
def both_run(pusht_data, tmp_path_factory):
    """`train --planning`: a pixel world and, beside it, the planning world that `plan` and `play` load."""
    from simulacra.cli import main

    out = tmp_path_factory.mktemp("both") / "run"
    main([str(a) for a in ("train", "--data", pusht_data, "--out", out, "--size", "debug", "--dyn-steps", "2",
                           "--no-tensorboard", "--planning", "--plan-minutes", "0.05", "--holdout", "0.34")])  # fmt: skip
    return out


def test_train_planning_trains_both_worlds_into_one_run(both_run):
    from simulacra.plan.train import load_planning
    from simulacra.world import World

    World.load(both_run)
    jepa, _, meta = load_planning(both_run)
    assert meta["task"] == "pusht" and jepa.cfg.proprio_dim == 2
    assert meta["steps"]["jepa"] >= 1
    train_eps = json.loads((both_run / "config.json").read_text())["train_episodes"]
    assert len(train_eps) == 2, "the planning world trains on the pixel world's training episodes only"


def _png_b64(frame) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_play_hands_control_to_the_planner_toward_an_uploaded_goal(both_run, pusht_data):
    """In `simulacra play` Enter hands control to the run's planner, once the page has given it a goal."""
    import asyncio
    import base64

    import websockets
    from test_play import recv_json, ws_url

    from simulacra.data.store import Dataset
    from simulacra.play import PlayConfig, policy_factory
    from simulacra.play.server import PlayServer, ServerOptions, Starts
    from simulacra.world import World

    world = World.load(both_run, backend="torch")
    make, name = policy_factory(PlayConfig(plan_samples=16, plan_iters=2), world)
    assert name.startswith("the planner (pusht")
    ds = Dataset.open(pusht_data)
    start, goal = ds.frames(0, 5, 6)[0], ds.frames(0, 30, 31)[0]

    async def go():
        server = await PlayServer(world, Starts(), ServerOptions(port=0, real=False), make).start()
        try:
            async with websockets.connect(ws_url(server), origin=f"http://127.0.0.1:{server.port}") as ws:
                hello = await recv_json(ws, "hello")
                assert hello["policy"] == {"name": "planner (cem)", "takes_goal": True, "has_goal": False}
                await recv_json(ws, "error")  # no data set, no real env: the page is told to upload a start
                await ws.send(json.dumps({"type": "start", "source": "image", "data": _png_b64(start)}))
                await ws.send(json.dumps({"type": "control", "op": "policy"}))
                err = await recv_json(ws, "error")
                assert "no goal yet" in err["reason"]  # and the human keeps control
                await ws.send(json.dumps({"type": "goal", "data": base64.b64encode(b"GIF89a not really").decode()}))
                assert "picture" in (await recv_json(ws, "error"))["reason"]
                await ws.send(json.dumps({"type": "goal", "data": _png_b64(goal)}))
                assert (await recv_json(ws, "policy"))["has_goal"] is True
                await ws.send(json.dumps({"type": "control", "op": "policy"}))
                assert (await recv_json(ws, "state"))["controller"] == "policy"
                await asyncio.sleep(1.0)  # the planner drives a few frames
        finally:
            await server.close()
        return server

    asyncio.run(asyncio.wait_for(go(), 120))
    # the planner itself, at the player level: it plans from the dream's frames and acts in the world's space
    from simulacra.play.player import Player

    p = Player(world, policy=make(world))
    p.start(start[None])
    with pytest.raises(SimulacraError, match="no goal yet"):
        p.toggle_policy()
    p.policy.set_goal(goal)
    assert p.toggle_policy() == "policy"
    for _ in range(6):
        assert p.tick(None).controller == "policy"
    assert p.policy.plan_at == [0, 5], "a plan every 5 steps"
    a = np.asarray(p.session.events[-1]["a"])
    assert a.shape == (2,) and ((a >= 0) & (a <= 512)).all(), "an absolute Push-T target, in the world's space"


class _ShiftTask:
    """The play tests' oracle world as a task: one-hot (stay, right, left) per env step."""

    name, feature_dim, low, high, discrete = "shift", 3, 0.0, 1.0, True

    def to_env(self, feature, agent_xy=None) -> int:
        return int(np.argmax(feature))

    def agent_xy(self, env, frame=None):
        return np.zeros(2)


def test_pixel_world_plans_toward_a_goal_picture(tmp_path):
    """The planners search in a pixel world through the same interface: with the oracle world (the block
    moves one 4 px cell per key) the planned keys bring the block onto the goal picture's."""
    from play_worlds import block_frame, block_x, oracle_world

    from simulacra.plan.pixel import PixelPlanningWorld

    world = oracle_world(tmp_path / "w")
    search = planners.Search(samples=16, elites=4, iters=3)
    for cost in ("distance", "pixels"):  # the pixel world's encoding is its picture: both are pixel distance
        model = PixelPlanningWorld(world, _ShiftTask(), block=2)
        planner = Planner(
            model, _ShiftTask(), block_frame(20), MPCConfig(horizon=2, replan=2, search=search, cost=cost)
        )
        frames, gen = [block_frame(12)], world.generator(0)
        state = world.reset(frames[0][None, None])
        for _ in range(6):
            state, f, _, _ = world.step(state, np.array([planner.act(np.stack(frames))]), gen)
            frames.append(f[0])
        assert block_x(frames[-1]) == block_x(block_frame(20)), (cost, [block_x(f) for f in frames])
        assert model.frames_dreamed == 3 * (3 * 16 + 1) * 4, "3 plans x (3 x 16 candidates + the plan) x 4 steps"
    z = model.encode(torch.from_numpy(block_frame(8)).permute(2, 0, 1)[None])
    assert np.array_equal(model._frames(z)[0], block_frame(8)), "encode / decode is the frame itself"


def test_plan_verb_in_the_pixel_world(both_run, pusht_data, capsys, tmp_path):
    from PIL import Image

    from simulacra.data.store import Dataset

    goal = tmp_path / "goal.png"
    Image.fromarray(Dataset.open(pusht_data).frames(0, 30, 31)[0]).save(goal)
    code, out, err = run_cli(capsys, "plan", both_run, "--goal", goal, "--model", "pixel", "--steps", "5",
                             "--samples", "4", "--elites", "2", "--iters", "1", "--horizon", "2",
                             "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    assert "5 env steps with cem" in out and (tmp_path / "o" / "plan-seed0.mp4").is_file()
    for args, message in ((["--model", "voxel"], "--model must be planning or pixel"),
                          (["--model", "pixel", "--cost", "steps"], "--cost steps needs the cell world")):  # fmt: skip
        code, _, err = run_cli(capsys, "plan", both_run, "--goal", goal, *args)
        assert code != 0 and message in err, err


def test_play_policy_options(both_run, pusht_data, capsys, tmp_path):
    from PIL import Image

    from simulacra.data.store import Dataset

    goal = tmp_path / "goal.png"
    Image.fromarray(Dataset.open(pusht_data).frames(0, 30, 31)[0]).save(goal)
    code, out, err = run_cli(capsys, "play", both_run, "--goal", goal, "--port", 0, "--seconds", 0.3,
                             "--backend", "torch", "--no-real")  # fmt: skip
    assert code == 0, err
    assert "Enter hands control to the planner (pusht, toward --goal)" in out
    code, out, err = run_cli(capsys, "play", both_run, "--policy", "random", "--port", 0, "--seconds", 0.3,
                             "--backend", "torch", "--no-real")  # fmt: skip
    assert code == 0 and "Enter hands control to random actions" in out, err
    # a run without a planning world: --goal and --policy planner are refused in one line, before serving
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(both_run / "world", bare / "world")
    shutil.copy(both_run / "config.json", bare / "config.json")
    for args, message in (
        (["--goal", goal], "--goal needs a planning world"),
        (["--policy", "planner"], "no planning world here"),
        (["--goal", tmp_path / "missing.png"], "--goal needs a planning world"),
        (["--plan-samples", "0"], "--plan-samples and --plan-iters must be positive"),
    ):
        code, _, err = run_cli(capsys, "play", bare, "--port", 0, "--seconds", 0.1, "--backend", "torch", *args)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, "play", both_run, "--goal", tmp_path / "missing.png", "--port", 0,
                           "--seconds", 0.1, "--backend", "torch")  # fmt: skip
    assert code != 0 and "no such file" in err, err


def test_train_planning_refuses_a_world_without_a_task(capsys, tmp_path):
    from conftest import make_synthetic

    make_synthetic(tmp_path / "ds", frame=64)
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "ds", "--out", tmp_path / "run", "--size", "debug",
                           "--planning")  # fmt: skip
    assert code != 0 and "no planning task for the preset" in err
    assert not (tmp_path / "run").exists(), "refused before anything was trained or written"


# ---- navigation: MiniGrid FourRooms --------------------------------------------------------------------
@pytest.fixture(scope="module")
def rooms_data(tmp_path_factory):
    from simulacra.data.record import RecordConfig, record_episodes

    root = tmp_path_factory.mktemp("plan") / "rooms"
    return record_episodes(
        RecordConfig(preset="fourrooms", episodes=3, seed=7, out=str(root), max_episode_steps=40, num_envs=1)
    )


def test_fourrooms_reset_to_rebuilds_the_recorded_state(rooms_data):
    """The recording's seed rebuilds the layout, the agent's cell and heading are set: the frame is the
    recorded one, and replaying the recorded actions reaches the goal cell 25 steps later."""
    from simulacra.data.envs import make_env
    from simulacra.data.store import Dataset
    from simulacra.plan.tasks import FourRooms

    ds, task = Dataset.open(rooms_data), FourRooms()
    env = make_env(task.env_id, task.env_kwargs, (64, 64), "render", None, None, "stretch", task.state_reader)
    try:
        for ep in draw_episodes(ds, 4, 10, seed=0):
            assert ep.seed == ds.episodes[ep.episode].seed
            frame = task.reset_to(env, ep.start_state, ep.seed)
            assert np.array_equal(frame, ds.frames(ep.episode, ep.start, ep.start + 1)[0])
            assert np.array_equal(task.agent_xy(None, ep.goal_frame), ep.goal_state[:2]), "found in the picture"
            for a in ds.arrays(ep.episode)["action"][ep.start : ep.start + 10]:
                env.step(int(a))
            assert task.success(task.state(env), ep.goal_state)
        wrong = task.reset_to(env, ep.start_state, (ep.seed or 0) + 1)  # another seed: another layout
        assert not np.array_equal(wrong, ds.frames(ep.episode, ep.start, ep.start + 1)[0])
    finally:
        env.close()


def test_fourrooms_features_and_success():
    from simulacra.plan.tasks import FourRooms

    task = FourRooms()
    f = task.features(np.array([2, 0, 1]), np.zeros((3, 3)))
    assert f.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert [task.to_env(row) for row in f] == [2, 0, 1]
    assert task.success(np.array([3, 4, 0]), np.array([3, 4, 2])), "the heading does not count"
    assert not task.success(np.array([3, 5, 0]), np.array([3, 4, 0]))


def test_planner_plans_discrete_actions(rooms_data):
    """On a discrete task the planner searches categorical sequences (cem_discrete) and answers with
    env actions of the space; the queued plan is one-hot features."""
    from simulacra.data.store import Dataset
    from simulacra.plan.tasks import FourRooms

    ds, task = Dataset.open(rooms_data), FourRooms()
    jepa = JEPA(JEPAConfig(action_dim=15, block=5, channels=8, hidden=32, layers=1, proprio_dim=2, decoder=False))
    frame = ds.frames(0, 0, 1)
    planner = Planner(jepa, task, frame[0], MPCConfig(search=planners.Search(samples=16, elites=4, iters=2)))
    a = planner.act(frame, np.array([3.0, 3.0]))
    assert isinstance(a, int) and 0 <= a < 3
    assert all(sorted(q.tolist()) == [0, 0, 1] for q in planner.queue)


def test_cell_world_learns_the_rooms_and_plans_through_them(rooms_data, tmp_path):
    """FourRooms' default world is the cell world: it trains through train_planning (world = cells in
    plan.json), loads back the same, reads the agent from frames, follows recorded actions open-loop
    far better than standing still, and plans discrete actions as a Planner's world."""
    from simulacra.data.store import Dataset
    from simulacra.models.cell_world import CellWorld, CellWorldConfig
    from simulacra.plan.tasks import FourRooms
    from simulacra.plan.train import load_planning, train_planning

    ds, task = Dataset.open(rooms_data), FourRooms()
    cfg = CellWorldConfig(channels=8, hidden=16, unroll=5, decoder=False)
    meta = train_planning(ds, list(range(len(ds))), task, tmp_path / "plan", None, steps=200, batch_size=16,
                          jepa_cfg=cfg)  # fmt: skip
    assert meta["world"] == "cells" and meta["jepa"]["grid"] == 19
    world, _, _ = load_planning(tmp_path)
    assert isinstance(world, CellWorld)
    s = ds.arrays(0)["state"]
    frames = torch.from_numpy(np.array(ds.frames(0))).permute(0, 3, 1, 2)
    feats = torch.from_numpy(task.features(ds.arrays(0)["action"], s[:-1]))
    with torch.no_grad():
        z = world.encode(frames)
        read = world.position(z) * task.PROPRIO_SCALE
        assert (read - torch.from_numpy(s[:, :2]).float()).abs().sum(-1).mean() < 0.5
        T = (len(feats) // 5) * 5
        ahead = world.rollout(z[:1], feats[:T].reshape(1, -1, 15))[0]  # every 5th step, open-loop
    cells = world.position(ahead) * task.PROPRIO_SCALE
    true = torch.from_numpy(s[5 : T + 1 : 5, :2]).float()
    off, stay = (cells - true).abs().sum(-1).mean(), (true - torch.from_numpy(s[0, :2]).float()).abs().sum(-1).mean()
    assert off < 0.5 * stay, (float(off), float(stay))
    planner = Planner(
        world, task, ds.frames(0, 5, 6)[0], MPCConfig(search=planners.Search(samples=8, elites=2, iters=2))
    )
    act = planner.act(ds.frames(0, 0, 1), None)
    assert isinstance(act, int) and 0 <= act < 3 and planner.imagined[0].shape == (5, world.state_dim)


def test_cell_world_mode_rollout_is_the_distribution_s_most_likely_path():
    """With sharp rules, following each state's most likely move ("mode") lands where pushing the whole
    distribution ("mean") puts its mass; and expanded (shared) starts roll out as copied ones."""
    from simulacra.models.cell_world import CellWorld, CellWorldConfig

    torch.manual_seed(0)
    world = CellWorld(CellWorldConfig(channels=4, hidden=8, decoder=False)).eval()
    with torch.no_grad():
        world.rule[-1].weight.zero_()  # the same sharp random rule in every cell
        world.rule[-1].bias.copy_(100 * torch.randn_like(world.rule[-1].bias))
        z = world.encode(torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8))
        z[:, world.map_dim :] = 0
        z[:, world.map_dim + 9 * 19 + 9] = 1  # the centre cell, facing east: 5 steps cannot leave the map
        acts = torch.nn.functional.one_hot(torch.randint(0, 3, (6, 5)), 3).float().reshape(6, 1, 15)
        mode = world.rollout(z.expand(6, -1), acts)
        assert torch.equal(mode, world.rollout(z.repeat(6, 1), acts))
        world.cfg.rollout = "mean"
        mean = world.rollout(z.expand(6, -1), acts)
    assert torch.allclose(world.position(mode), world.position(mean), atol=0.05)


def test_cell_world_counts_steps_by_its_own_rule():
    """steps_to is a breadth-first search over the world's rule: with a rule that always moves east and
    keeps the heading, only the cells west of the goal in its row reach it, each in its distance."""
    from simulacra.models.cell_world import MOVES, CellWorld, CellWorldConfig

    world = CellWorld(CellWorldConfig(channels=4, hidden=8, decoder=False)).eval()
    nm, nh = len(MOVES), 4
    bias = torch.full((3, nh, nm + nh), -100.0)
    bias[:, :, 1] = 100.0  # east
    for h in range(nh):
        bias[:, h, nm + h] = 100.0  # keep facing h
    with torch.no_grad():
        world.rule[-1].weight.zero_()
        world.rule[-1].bias.copy_(bias.flatten())
        z = world.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))[0]
        z[world.map_dim :] = 0
        z[world.map_dim + 5 * 19 + 10] = 1  # the goal: x 10, y 5
        dist = world.steps_to(z).view(nh, 19, 19)
    far = nh * 19 * 19
    assert dist[:, 5, :11].tolist() == [[10.0 - x for x in range(11)]] * nh
    assert (dist[:, 5, 11:] == far).all() and (dist[:, :5] == far).all() and (dist[:, 6:] == far).all()
    cost = world.steps_cost(z, along=0.0)
    one_hot = torch.zeros(2, 1, world.state_dim)
    one_hot[0, 0, world.map_dim + 5 * 19 + 7] = 1  # 3 steps west of the goal
    one_hot[1, 0, world.map_dim + 2 * 19 + 7] = 1  # another row: never
    assert cost(one_hot).tolist() == [3.0, float(far)]


def test_cell_world_refuses_data_it_cannot_learn(pusht_data, rooms_data, tmp_path):
    """A task without headings, and a recorded cell outside the grid, stop with one line each."""
    from simulacra.data.store import Dataset
    from simulacra.errors import SimulacraError
    from simulacra.models.cell_world import CellWorldConfig
    from simulacra.plan.tasks import FourRooms, PushT
    from simulacra.plan.train import cell_states, train_planning

    with pytest.raises(SimulacraError, match="records no heading"):
        train_planning(Dataset.open(pusht_data), [0], PushT(), tmp_path / "p", None, steps=1,
                       jepa_cfg=CellWorldConfig(action_dim=10, feature_dim=2))  # fmt: skip
    with pytest.raises(SimulacraError, match="outside the 5 x 5 grid"):
        cell_states(Dataset.open(rooms_data), [0], FourRooms(), grid=5)


def test_cell_world_refuses_mismatched_sizes():
    from simulacra.models.cell_world import CellWorldConfig

    assert dict(CellWorldConfig(action_dim=10, block=5, feature_dim=3).problems())["action_dim"]
    assert dict(CellWorldConfig(position_scale=0).problems())["position_scale"]
    assert dict(CellWorldConfig(rollout="sample").problems())["rollout"]
