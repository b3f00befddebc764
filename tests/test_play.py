"""simulacra play: sessions replay bit for bit and branch, the server refuses every bad input it should
(one test per rejection) and keeps serving, a fuzzer cannot crash it, and the CLI verb starts and stops."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import time
from contextlib import asynccontextmanager

import numpy as np
import pytest
import websockets
from play_worlds import block_frame, block_x, oracle_world, tiny_world
from websockets.exceptions import ConnectionClosed, InvalidStatus

from simulacra.play.player import Player, decode_image
from simulacra.play.server import CONTROL_KEYS, PlayServer, Rejected, ServerOptions, Starts, check_message
from simulacra.play.session import Session, SessionError, export_video, read, replay
from simulacra.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("w") / "world")


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return oracle_world(tmp_path_factory.mktemp("o") / "world")


def played(world, seed=3, steps=12) -> Session:
    rng = np.random.default_rng(1)
    s = Session(world, np.stack([block_frame(8), block_frame(12)]), np.array([1]), seed=seed)
    for i in range(steps):
        if i == 4:
            s.set(temperature=0.5, sampling_steps=2)
        if i == 8:
            s.restart()
        s.step(int(rng.integers(3)))
    return s


# ---- sessions ---------------------------------------------------------------------------------------
def test_replay_is_bit_identical_and_branch_matches_up_to_k(world):
    frames = []
    s = Session(world, block_frame()[None], seed=7)
    s.set(temperature=0.7)
    for a in [1, 2, 0, 1, 1, 2, 0, 0, 1, 2]:
        frames.append(s.step(a)[0])
    data = s.to_bytes()
    again = []
    r = replay(world, data, on_frame=again.append)
    assert np.array_equal(np.stack(again[1:]), np.stack(frames))  # every frame, bit for bit
    assert r.events == s.events and r.settings == s.settings
    b = replay(world, data, until_step=6)
    assert b.t == 6 and np.array_equal(b.frame, frames[5])
    other = b.step(2)[0]  # and it goes on from there as a session of its own
    assert other.shape == frames[0].shape


def test_replay_follows_settings_and_resets(world):
    s = played(world)
    out = []
    replay(world, s.to_bytes(), on_frame=out.append)
    assert np.array_equal(out[-1], s.frame)
    assert {"set": {"temperature": 0.5, "sampling_steps": 2, "fps": 15.0}} in s.events
    assert sum("context" in e for e in s.events) == 2


def test_sampling_draws_differ_with_seed(world):
    a, b = played(world, seed=1), played(world, seed=2)
    assert not np.array_equal(a.frame, b.frame)  # so bit-identical replay above is not a constant dream


def test_session_file_checks(world, tmp_path):
    s = played(world)
    data = s.to_bytes()
    other = tiny_world()
    other.dyn.heads[-1].bias.data += 1
    with pytest.raises(SessionError, match="played on"):
        replay(other, data)  # another world's weights
    bad = {
        "not a zip": b"hello",
        "truncated": data[: len(data) // 2],
        "pickled": _npz(header=np.array([{"a": 1}], dtype=object)),
        "wrong format": _npz(header=np.frombuffer(json.dumps({"format": "x"}).encode(), np.uint8)),
    }
    for what, blob in bad.items():
        with pytest.raises(SessionError):
            read(blob)
        assert what
    h, ctx = read(data)
    h["events"].append({"a": 1, "path": "/etc/passwd"})
    with pytest.raises(SessionError, match="event"):
        read(_npz(header=np.frombuffer(json.dumps(h).encode(), np.uint8), frames_0=ctx[0][0]))
    with pytest.raises(SessionError, match="branch"):
        replay(world, data, until_step=10_000)
    path = s.save(tmp_path / "s.npz")
    assert read(path.read_bytes())[0]["world"]["sha256"] == s.checksum


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_export_gif_and_mp4(world, tmp_path):
    import imageio.v2 as imageio

    s = played(world, steps=6)
    for fmt in ("gif", "mp4"):
        path = export_video(world, s.to_bytes(), tmp_path / f"s.{fmt}", scale=2)
        frames = imageio.mimread(path) if fmt == "gif" else list(imageio.get_reader(path, format="FFMPEG").iter_data())
        assert len(frames) == 1 + 6  # the start, then one per step
        assert np.asarray(frames[0]).shape[:2] == (64, 64)
    with pytest.raises(SessionError, match="mp4 or .gif"):
        export_video(world, s.to_bytes(), tmp_path / "s.avi")


def test_settings_are_checked(world):
    s = Session(world, block_frame()[None])
    for bad in (
        {"temperature": -1},
        {"sampling_steps": 0},
        {"fps": float("nan")},
        {"colour": 1},
        {"sampling_steps": 1.5},
    ):
        with pytest.raises(SessionError):
            s.set(**bad)


def test_player_policy_handoff_and_image_upload(oracle):
    from PIL import Image

    p = Player(oracle)
    p.start(block_frame()[None])
    x0 = block_x(p.tick(1).dream)
    assert block_x(p.tick(1).dream) > x0  # the human's action moves the block right
    assert p.toggle_policy() == "policy" and p.tick(1).controller == "policy"
    assert p.toggle_policy() == "human"
    buf = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(block_frame(), 3, 0), 5, 1)).save(buf, "PNG")  # 96 x 160: resized
    frame, info = decode_image(buf.getvalue(), oracle.frame_space.shape)
    assert frame.shape == oracle.frame_space.shape and info["native"] == [96, 160]
    with pytest.raises(SessionError):
        decode_image(b"GIF89a not really", oracle.frame_space.shape)


def test_control_keys_never_shadow_a_preset_key():
    for p in PRESETS.values():
        assert not set(p.keys) & set(CONTROL_KEYS), p.name


# ---- the server -------------------------------------------------------------------------------------
@asynccontextmanager
async def serving(world, **kw):
    opts = ServerOptions(**{"port": 0, "real": False, "idle_timeout": 30.0, **kw})
    server = await PlayServer(world, Starts(), opts).start()
    try:
        yield server
    finally:
        await server.close()


def ws_url(server, token=None) -> str:
    return f"ws://127.0.0.1:{server.port}/ws" + (f"?token={token}" if token else "")


async def recv_json(ws, kind: str, timeout: float = 10.0) -> dict:
    """The next text message of ``kind`` (frames in between are skipped)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = await asyncio.wait_for(ws.recv(), end - time.monotonic())
        if isinstance(m, str) and json.loads(m)["type"] == kind:
            return json.loads(m)
    raise TimeoutError(kind)


async def recv_frame(ws, timeout: float = 10.0) -> tuple[dict, np.ndarray]:
    end = time.monotonic() + timeout
    while True:
        m = await asyncio.wait_for(ws.recv(), end - time.monotonic())
        if isinstance(m, bytes) and m[0] == 1:
            hl = struct.unpack("<I", m[1:5])[0]
            h = json.loads(m[5 : 5 + hl])
            return h, np.frombuffer(m[5 + hl :], np.uint8)[: 32 * 32 * 3].reshape(32, 32, 3)


async def started(ws):
    """A client that has its hello and a session (started from a picture: the test server has no data)."""
    hello = await recv_json(ws, "hello")
    await recv_json(ws, "error")  # no start without data or a real env: the page is told so
    await ws.send(json.dumps({"type": "start", "source": "image", "data": _png(block_frame())}))
    await recv_frame(ws)
    return hello


def _png(frame) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_page_and_socket_serve_and_frames_follow_keys(oracle):
    async def go():
        async with serving(oracle) as server:
            async with websockets.connect(ws_url(server), origin=f"http://127.0.0.1:{server.port}") as ws:
                hello = await started(ws)
                assert hello["controls"]["keys"] == {"ArrowRight": 1, "ArrowLeft": 2}
                await ws.send(json.dumps({"type": "input", "seq": 5, "action": 1}))
                xs = []
                for _ in range(4):
                    h, f = await recv_frame(ws)
                    xs.append(block_x(f))
                assert xs[-1] > xs[0] and h["seq"] == 5  # the frames move the way the key says, and ack it
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
            head = await reader.read(200)
            writer.close()
            assert head.startswith(b"HTTP/1.1 200")

    run(go())


async def _http_status(server, path="/", host=None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{server.port}'}\r\n\r\n".encode())
    head = await reader.read(400)
    writer.close()
    return head


def test_rejects_foreign_origin(oracle):
    async def go():
        async with serving(oracle) as server:
            with pytest.raises(InvalidStatus) as e:
                async with websockets.connect(ws_url(server), origin="http://evil.example"):
                    pass
            assert e.value.response.status_code == 403

    run(go())


def test_rejects_spoofed_host(oracle):
    async def go():
        async with serving(oracle) as server:
            head = await _http_status(server, host=f"rebind.example:{server.port}")
            assert head.startswith(b"HTTP/1.1 403") and b"is not this server" in head

    run(go())


def test_rejects_missing_or_wrong_token(oracle):
    async def go():
        async with serving(oracle, token="s3cret") as server:
            for token in (None, "wrong"):
                with pytest.raises(InvalidStatus):
                    async with websockets.connect(ws_url(server, token)):
                        pass
                head = await _http_status(server, "/" + (f"?token={token}" if token else ""))
                assert head.startswith(b"HTTP/1.1 403")
            assert (await _http_status(server, "/?token=s3cret")).startswith(b"HTTP/1.1 200")
            async with websockets.connect(ws_url(server, "s3cret")) as ws:
                assert (await recv_json(ws, "hello"))["type"] == "hello"

    run(go())


def test_rejections_keep_the_connection_serving(oracle):
    """Oversized, garbage, binary, an action outside the space, a path: each gets its reason, and the
    same connection still plays afterwards."""

    async def go():
        async with serving(oracle, max_upload=4096) as server, websockets.connect(ws_url(server)) as ws:
            await started(ws)
            cases = [
                (json.dumps({"type": "input", "seq": 1, "action": 1, "pad": "x" * 5000}), "limit"),
                ("\x00\xff{garbage", "not JSON"),
                (b"\x01\x02\x03", "binary"),
                (json.dumps({"type": "input", "seq": 1, "action": 7}), "outside the action space"),
                (json.dumps({"type": "input", "seq": 1, "action": [1, 2]}), "shape"),
                (json.dumps({"type": "start", "source": "image", "path": "/etc/passwd"}), "file path"),
                (json.dumps({"type": "start", "source": "episode", "episode": 0}), "not one this server offers"),
                (json.dumps({"type": "start", "source": "image", "data": "A" * 8000}), "limit"),
                (json.dumps({"type": "control", "op": "rm -rf"}), "control.op"),
                (json.dumps({"type": "settings", "fps": 1e9}), "fps"),
                (json.dumps([1, 2]), "JSON object"),
                (json.dumps({"type": "load", "data": "not base64!"}), "base64"),
                (json.dumps({"type": "load", "data": base64.b64encode(b"PK junk").decode()}), "not a session"),
                (json.dumps({"type": "goal", "data": _png(block_frame())}), "takes no goal"),
                (json.dumps({"type": "goal", "path": "/etc/passwd"}), "file path"),
            ]
            for msg, reason in cases:
                await ws.send(msg)
                err = await recv_json(ws, "error", timeout=3)
                assert reason in err["reason"], (msg[:60], err)
            await ws.send(json.dumps({"type": "input", "seq": 9, "action": 2}))
            for _ in range(3):
                h, _ = await recv_frame(ws)
            assert h["seq"] == 9

    run(go())


def test_message_over_the_socket_limit_closes_only_that_connection(oracle):
    async def go():
        async with serving(oracle, max_session_file=1024, max_upload=1024) as server:
            good = await websockets.connect(ws_url(server))
            async with good:
                await started(good)
                async with websockets.connect(ws_url(server), max_size=None) as bad:
                    await recv_json(bad, "hello")
                    await bad.send("x" * 10_000)
                    with pytest.raises(ConnectionClosed) as e:
                        while True:
                            await bad.recv()
                    assert e.value.rcvd.code == 1009  # message too big
                await good.send(json.dumps({"type": "control", "op": "step"}))
                assert (await recv_json(good, "state"))["paused"] is True

    run(go())


def test_session_limit_says_busy(oracle):
    async def go():
        async with serving(oracle, max_sessions=1) as server:
            async with websockets.connect(ws_url(server)) as first:
                await recv_json(first, "hello")
                async with websockets.connect(ws_url(server)) as second:
                    err = await recv_json(second, "error")
                    assert "server busy" in err["reason"]
                    with pytest.raises(ConnectionClosed):
                        await second.recv()
            await asyncio.sleep(0.2)
            async with websockets.connect(ws_url(server)) as third:  # the slot is free again
                assert (await recv_json(third, "hello"))["type"] == "hello"

    run(go())


def test_too_frequent_messages_are_dropped_with_a_reason(oracle):
    async def go():
        async with serving(oracle, rate=5, burst=5) as server, websockets.connect(ws_url(server)) as ws:
            await recv_json(ws, "hello")
            assert "no start" in (await recv_json(ws, "error"))["reason"]
            for i in range(30):
                await ws.send(json.dumps({"type": "ping", "t": i}))
            err = await recv_json(ws, "error")
            assert "too many messages" in err["reason"]

    run(go())


def test_idle_session_times_out(oracle):
    async def go():
        async with serving(oracle, idle_timeout=0.5) as server, websockets.connect(ws_url(server)) as ws:
            await recv_json(ws, "hello")
            assert "no start" in (await recv_json(ws, "error"))["reason"]
            err = await recv_json(ws, "error", timeout=15)
            assert "idle" in err["reason"]
            with pytest.raises(ConnectionClosed):
                await ws.recv()

    run(go())


def test_save_load_and_branch_over_the_socket(oracle):
    async def go():
        async with serving(oracle) as server, websockets.connect(ws_url(server)) as ws:
            await started(ws)
            await ws.send(json.dumps({"type": "control", "op": "pause"}))
            await recv_json(ws, "state")
            await ws.send(json.dumps({"type": "input", "seq": 1, "action": 1}))
            for _ in range(5):
                await ws.send(json.dumps({"type": "control", "op": "step"}))
                await recv_json(ws, "state")
            await ws.send(json.dumps({"type": "save"}))
            while True:
                m = await ws.recv()
                if isinstance(m, bytes) and m[0] == 2:
                    break
            hl = struct.unpack("<I", m[1:5])[0]
            data = m[5 + hl :]
            header, _ = read(data)
            assert sum("a" in e for e in header["events"]) >= 5
            await ws.send(json.dumps({"type": "load", "data": base64.b64encode(data).decode(), "step": 2}))
            h, f = await recv_frame(ws)
            assert h["t"] == 2
            rights = sum(e["a"] == 1 for e in [e for e in header["events"] if "a" in e][:2])
            assert block_x(f) == block_x(block_frame()) + 4 * rights  # the branch is the saved dream at step 2

    run(go())


def test_check_message_catalogue():
    for raw in ['{"type": 1}', '{"type": "input", "seq": true}', '{"type": "settings", "fps": "9"}', "[]", "null"]:
        with pytest.raises(Rejected):
            check_message(raw, 1024)
    assert check_message('{"type": "input", "seq": 3, "action": [0.5, 1]}', 1024)["seq"] == 3


# ---- fuzzing ----------------------------------------------------------------------------------------
def test_fuzzed_messages_never_crash_the_server(oracle):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=10,
    )
    types = st.sampled_from(["input", "control", "settings", "start", "save", "load", "branch", "export", "ping", "x"])
    fields = st.dictionaries(
        st.sampled_from(
            [
                "seq",
                "action",
                "op",
                "temperature",
                "sampling_steps",
                "fps",
                "source",
                "episode",
                "t",
                "seed",
                "data",
                "step",
                "format",
                "path",
            ]
        ),
        json_values,
        max_size=4,
    )
    messages = st.one_of(
        st.builds(lambda t, f: json.dumps({"type": t, **f}), types, fields),
        st.text(max_size=60),
        st.binary(max_size=60),
    )

    async def session():
        async with serving(oracle, rate=10_000, burst=10_000) as server:
            good = await websockets.connect(ws_url(server))
            async with good:
                await started(good)

                @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
                @given(st.lists(messages, min_size=1, max_size=5))
                def fuzz(batch):
                    async def send():
                        async with websockets.connect(ws_url(server)) as ws:
                            await recv_json(ws, "hello")
                            for m in batch:
                                await ws.send(m)
                            await ws.send(json.dumps({"type": "ping", "t": 1}))
                            await recv_json(ws, "pong")  # still answering after whatever came before

                    fut = asyncio.run_coroutine_threadsafe(send(), loop)
                    fut.result(30)

                loop = asyncio.get_running_loop()
                await asyncio.to_thread(fuzz)
                await good.send(json.dumps({"type": "ping", "t": 2}))
                assert (await recv_json(good, "pong"))["t"] == 2  # the well-behaved client was served throughout

    asyncio.run(asyncio.wait_for(session(), 600))


# ---- the verb ---------------------------------------------------------------------------------------
def test_play_verb_serves_then_stops(world, capsys, monkeypatch):
    from conftest import assert_one_line_error, run_cli

    code, out, _ = run_cli(capsys, "play", world.path, "--port", 0, "--seconds", 0.5, "--backend", "torch")
    assert code == 0 and "open http://127.0.0.1:" in out and "real env off" in out
    code, out, _ = run_cli(
        capsys, "play", world.path, "--host", "0.0.0.0", "--port", 0, "--seconds", 0.3, "--backend", "torch"
    )
    assert code == 0 and "?token=" in out and "printed once" in out  # off loopback: a token, shown once
    code, _, err = run_cli(capsys, "play", world.path, "--port", 70000)
    assert_one_line_error(code, err, "--port")
    monkeypatch.setenv("SIMULACRA_NO_PLAY", "1")
    code, out, _ = run_cli(capsys, "play", world.path)
    assert code == 0 and "skipped" in out


def test_real_env_beside_the_dream_and_resync():
    """Breakout's real env runs beside a (64x64, untrained) dream on the same actions; resync restarts the
    dream from reality's last frames."""
    from dataclasses import asdict

    from play_worlds import tiny_world as _tiny

    from simulacra.world import World

    small = _tiny()
    preset = PRESETS["breakout"].to_dict()
    cfg = {
        **small.config,
        "frame_shape": [64, 64, 3],
        "action_space": {"type": "discrete", "n": 4, "start": 0},
        "preset": preset,
    }
    from simulacra.models.dynamics import Dynamics

    dyn = Dynamics(small.dyn.cfg, small.ae.cfg.grid_channels, cfg["action_space"])
    world = World(small.ae, dyn, cfg | {"dynamics": asdict(dyn.cfg)})
    p = Player(world, preset=preset)
    first = p.start_real(seed=5)
    ticks = [p.tick(a) for a in (1, 2, 2, 3, 0)]
    assert all(t.real is not None and t.divergence is not None for t in ticks)
    assert first.shape == ticks[0].real.shape == (64, 64, 3)
    frame = p.resync()
    assert np.array_equal(frame, p.real.frames[-1])  # the dream goes on from reality's last frame
    assert p.session.events[-1] == {"context": 1}
    p.close()


def test_a_picture_unlike_the_training_frames_gets_a_note(oracle):
    from simulacra.play.player import look_note

    ref = np.stack([block_frame(x) for x in (4, 12, 20)])
    assert look_note(block_frame(8), ref, [32, 32], oracle.frame_space.shape) == []
    bright = np.full((32, 32, 3), 200, np.uint8)
    notes = look_note(bright, ref, [90, 320], oracle.frame_space.shape)
    assert len(notes) == 2 and "another shape" in notes[0] and "unlike the training frames" in notes[1]
