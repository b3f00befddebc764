"""The play server: one page over HTTP and one WebSocket per browser tab, a thin layer over ``Player``.

Safety, as a local server reachable from any page the user visits must be:
* it binds 127.0.0.1 unless told otherwise; bound elsewhere it requires a token (printed once) on the page
  and on the socket;
* the HTTP ``Host`` and the WebSocket ``Origin`` must name this server (DNS rebinding, cross-site
  WebSocket hijacking), as Jupyter checks them;
* a message is JSON of a known type with known fields of the right types, within its size and the
  connection's rate; anything else gets an error naming the reason and the connection keeps serving;
* no message names a file: starts are episodes of the data set the server was started with, an uploaded
  picture (size-limited, decoded by PIL with a pixel limit) or a reset of the real env; sessions are
  uploaded and downloaded as bytes.

Frames go out as binary messages: byte 0 is the kind (1 frame, 2 session file, 3 video), bytes 1-4 the
length of a JSON header (little-endian), then the header, then the payload (for a frame the dream's RGB
bytes, then reality's when the header says so).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import secrets
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from simulacra.errors import SimulacraError
from simulacra.play.player import Player, decode_image, look_note
from simulacra.play.session import Settings, export_video, world_checksum
from simulacra.spaces import ActionSpaceError
from simulacra.world.world import World

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
CONTROL_KEYS = {"Enter": "policy", "Escape": "pause", ".": "step", "Home": "reset", "End": "resync"}
"""Keys the page keeps for itself; no preset's key map may use them."""
MESSAGE_LIMIT = 4096
"""Bytes of any message that carries no upload."""
KIND_FRAME, KIND_SESSION, KIND_VIDEO = 1, 2, 3

FIELDS = {
    "input": {"seq": int, "action": object},
    "control": {"op": str},
    "settings": {"temperature": float, "sampling_steps": int, "fps": float},
    "start": {"source": str, "episode": int, "t": int, "seed": int, "data": str},
    "save": {},
    "load": {"data": str, "step": int},
    "branch": {"step": int},
    "export": {"format": str},
    "goal": {"data": str},
    "ping": {"t": float},
}
OPS = ("pause", "resume", "step", "reset", "resync", "policy")


class Rejected(Exception):
    """A message the server refuses: its reason goes back to the client, and the connection lives on."""


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    allow_hosts: tuple[str, ...] = ()
    token: str | None = None
    max_sessions: int = 4
    idle_timeout: float = 300.0
    max_upload: int = 2 << 20
    max_session_file: int = 16 << 20
    rate: float = 120.0
    burst: float = 240.0
    real: bool = True


@dataclass
class Starts:
    """What a session may start from: the episodes of one data set (by index), pictures, real resets."""

    dataset: object | None = None
    episodes: list[int] = field(default_factory=list)
    reference: np.ndarray | None = None
    """A few training frames (N, H, W, 3): an uploaded picture is compared with them."""


class _Bucket:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst, self.level, self.t = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level < 1:
            return False
        self.level -= 1
        return True


def check_message(raw, max_upload: int) -> dict:
    """The message as a dict of checked fields, or Rejected with the reason."""
    if isinstance(raw, bytes | bytearray | memoryview):
        raise Rejected("binary messages are not accepted; send JSON text")
    upload = len(raw) > MESSAGE_LIMIT
    if upload and len(raw) > max_upload * 4 // 3 + MESSAGE_LIMIT:
        raise Rejected(f"message of {len(raw)} bytes is over the upload limit ({max_upload} bytes)")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise Rejected("message is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise Rejected("message must be a JSON object with a 'type'")
    kind = msg["type"]
    if kind not in FIELDS:
        raise Rejected(f"unknown message type {kind[:40]!r}; types: {', '.join(FIELDS)}")
    if upload and kind not in ("start", "load", "goal"):
        raise Rejected(f"message of {len(raw)} bytes is over the {MESSAGE_LIMIT}-byte limit for {kind!r}")
    allowed = FIELDS[kind]
    for k, v in msg.items():
        if k == "type":
            continue
        if k not in allowed:
            raise Rejected(f"unknown field {k[:40]!r} in {kind!r} (no message takes a file path)")
        want = allowed[k]
        if want is int and not (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**62):
            raise Rejected(f"{kind}.{k} must be a whole number")
        if want is float and not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
            raise Rejected(f"{kind}.{k} must be a number")
        if want is str and not isinstance(v, str):
            raise Rejected(f"{kind}.{k} must be a string")
    return msg


def _b64(text: str, limit: int, what: str) -> bytes:
    if len(text) > limit * 4 // 3 + 8:
        raise Rejected(f"{what} is over the {limit}-byte limit")
    try:
        data = base64.b64decode(text.split(",", 1)[-1], validate=True)
    except ValueError:
        raise Rejected(f"{what} is not base64") from None
    if len(data) > limit:
        raise Rejected(f"{what} is {len(data)} bytes; the limit is {limit}")
    return data


def pack(kind: int, header: dict, *payloads: bytes) -> bytes:
    h = json.dumps(header).encode()
    return b"".join([struct.pack("<BI", kind, len(h)), h, *payloads])


def key_map(world: World) -> dict:
    """The page's controls: the preset's key map (or digits for a world recorded without one)."""
    space, preset = world.action_space, world.config.get("preset") or {}
    keys = dict(preset.get("keys") or {})
    relative = bool(preset.get("keys_relative"))
    noop = preset.get("noop_action", 0 if space.kind == "discrete" else None)
    if not keys and space.kind == "discrete":
        keys = {str(i): space.start + i for i in range(min(space.n, 10))}
    if space.kind == "box" and noop is None:
        lo, hi = space.finite_bounds()
        noop = ((lo + hi) / 2).tolist()
    return {
        "keys": keys,
        "relative": relative,
        "noop": noop,
        "control": CONTROL_KEYS,
        "space": space.to_json(),
    }


class PlayServer:
    def __init__(self, world: World, starts: Starts, opts: ServerOptions, policy_factory=None):
        self.world, self.starts, self.opts = world, starts, opts
        self.checksum = world_checksum(world)
        self.policy_factory = policy_factory
        self.sessions: set = set()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simulacra-play")
        self.page = resources.files("simulacra.play").joinpath("static/index.html").read_bytes()
        self.port = opts.port
        self._server = None
        self.preset = world.config.get("preset") if opts.real else None

    # ---- HTTP: Host, token, the one page -------------------------------------------------------------
    def allowed_hosts(self) -> set[str]:
        names = {"127.0.0.1", "localhost", "[::1]", *self.opts.allow_hosts}
        if self.opts.host not in ("0.0.0.0", "::", *LOOPBACK):
            names.add(self.opts.host)
        return {f"{n}:{self.port}" for n in names} | ({n for n in names} if self.port == 80 else set())

    def _token_ok(self, path: str) -> bool:
        if self.opts.token is None:
            return True
        got = parse_qs(urlsplit(path).query).get("token", [""])[0]
        return hmac.compare_digest(got.encode(), self.opts.token.encode())

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        host = request.headers.get("Host", "")
        if host not in self.allowed_hosts():
            return connection.respond(403, f"Host {host[:80]!r} is not this server\n")
        if not self._token_ok(request.path):
            return connection.respond(403, "missing or wrong token: open the URL the server printed\n")
        route = urlsplit(request.path).path
        if route == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and origin.removeprefix("http://") not in self.allowed_hosts():
                return connection.respond(403, f"Origin {origin[:80]!r} may not open this server's socket\n")
            return None  # the WebSocket handshake goes on
        if route in ("/", "/index.html"):
            headers = Headers(
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(self.page))),
                    ("Cache-Control", "no-store"),
                    ("X-Content-Type-Options", "nosniff"),
                    (
                        "Content-Security-Policy",
                        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'",
                    ),
                ]
            )
            return Response(200, "OK", headers, self.page)
        return connection.respond(404, "not found\n")

    # ---- one browser tab -----------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        if len(self.sessions) >= self.opts.max_sessions:
            await self._send_error(
                ws,
                f"server busy: {len(self.sessions)} sessions are open (limit {self.opts.max_sessions}); try again later",
            )
            await ws.close(1013, "server busy")
            return
        tab = _Tab(self, ws)
        self.sessions.add(tab)
        try:
            await tab.run()
        finally:
            self.sessions.discard(tab)
            tab.closed = True
            if tab.player is not None:
                await asyncio.get_running_loop().run_in_executor(self.executor, tab.player.close)

    async def _send_error(self, ws, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "error", "reason": reason}))

    async def start(self):
        self._server = await serve(
            self.handler,
            self.opts.host,
            self.opts.port,
            process_request=self.process_request,
            max_size=self.opts.max_session_file * 4 // 3 + MESSAGE_LIMIT,
            compression=None,
            server_header=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self) -> str:
        host = self.opts.host if self.opts.host not in ("0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.opts.token}" if self.opts.token else "")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.executor.shutdown(wait=True)


class _Tab:
    """The server side of one page: its player, the held action, the frame loop and the message loop."""

    def __init__(self, server: PlayServer, ws: ServerConnection):
        self.server, self.ws, self.world = server, ws, server.world
        self.keys = key_map(self.world)
        self.player: Player | None = None  # made on the worker thread (a real env takes a while to start)
        self.settings = Settings.of(self.world)
        self.action = self._noop()
        self.seq = 0
        self.fresh_input = False
        self.paused = False
        self.closed = False
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.bucket = _Bucket(server.opts.rate, server.opts.burst)
        self.last_message = time.monotonic()
        self.last_rate_error = 0.0

    def _noop(self):
        space = self.world.action_space
        if space.kind == "none":
            return None
        return space.validate(np.asarray(self.keys["noop"]), ())

    async def call(self, fn, *args):
        """Run a player call on the world's worker thread, one at a time per tab."""
        async with self.lock:
            return await asyncio.get_running_loop().run_in_executor(self.server.executor, fn, *args)

    def _make_player(self, preset: dict | None) -> Player:
        server = self.server
        policy = server.policy_factory(self.world) if server.policy_factory else None
        return Player(self.world, preset=preset, policy=policy, checksum=server.checksum)

    async def run(self) -> None:
        try:
            self.player = await self.call(self._make_player, self.server.preset)
        except (SimulacraError, OSError, ImportError) as e:  # the real env would not start: dream without it
            await self.server._send_error(self.ws, f"the real env did not start ({e}); dreaming without it")
            self.player = await self.call(self._make_player, None)
        await self.ws.send(json.dumps(self._hello()))
        try:
            await self._default_start()
        except SimulacraError as e:
            await self.server._send_error(self.ws, f"no start: {e}")
        frames = asyncio.create_task(self._frames())
        idle = asyncio.create_task(self._idle())
        try:
            async for raw in self.ws:
                self.last_message = time.monotonic()
                if not self.bucket.take():
                    if self.last_message - self.last_rate_error > 1:
                        self.last_rate_error = self.last_message
                        await self.server._send_error(
                            self.ws, f"too many messages (limit {self.server.opts.rate:.0f}/s); some were dropped"
                        )
                    continue
                try:
                    await self._handle(
                        check_message(raw, max(self.server.opts.max_upload, self.server.opts.max_session_file))
                    )
                except Rejected as e:
                    await self.server._send_error(self.ws, str(e))
                except (SimulacraError, ActionSpaceError) as e:
                    await self.server._send_error(self.ws, str(e))
        except ConnectionClosed:
            pass
        finally:
            frames.cancel()
            idle.cancel()

    def _hello(self) -> dict:
        ds = self.server.starts.dataset
        return {
            "type": "hello",
            "world": self.world.path.parent.name if self.world.path else "world",
            "frame_shape": list(self.world.frame_space.shape),
            "controls": self.keys,
            "settings": asdict(self.settings),
            "starts": {
                "episodes": [[i, int(ds.episodes[i].length)] for i in self.server.starts.episodes] if ds else [],
                "real": self.player.real is not None,
                "image": True,
            },
            "limits": {"upload": self.server.opts.max_upload, "session_file": self.server.opts.max_session_file},
            "backend": self.world.backend,
            "policy": self._policy_state(),
        }

    def _policy_state(self) -> dict:
        p = self.player.policy
        return {
            "name": getattr(p, "name", None),
            "takes_goal": hasattr(p, "set_goal"),
            "has_goal": bool(getattr(p, "has_goal", False)),
        }

    async def _default_start(self) -> None:
        if self.player.real is not None:
            await self.call(self.player.start_real, 0, self.settings)
        elif self.server.starts.dataset is not None and self.server.starts.episodes:
            await self._start_episode(self.server.starts.episodes[0], self.world.K - 1)
        else:
            raise SimulacraError("no data set and no real env to start from; upload a picture")
        await self._send_frame(None, self.player.session.frame)

    async def _start_episode(self, episode: int, t: int) -> None:
        ds = self.server.starts.dataset
        if ds is None or episode not in self.server.starts.episodes:
            raise Rejected(f"episode {episode} is not one this server offers")
        L = ds.episodes[episode].length
        if not 0 <= t <= L:
            raise Rejected(f"episode {episode} has steps 0..{L}, not {t}")
        frames, actions = self.world.episode_context(ds, episode, t)
        await self.call(
            self.player.start,
            frames[0],
            None if actions is None else actions[0],
            {"source": "episode", "episode": episode, "t": t},
            self.settings,
        )

    async def _handle(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "ping":
            await self.ws.send(json.dumps({"type": "pong", "t": msg.get("t")}))
        elif kind == "input":
            if self.world.action_space.kind != "none":
                if "action" not in msg:
                    raise Rejected("input needs an 'action'")
                action = self.world.action_space.validate(np.asarray(msg["action"]), ())
                self.fresh_input |= not np.array_equal(action, self.action)
                self.action = action
            self.seq = int(msg.get("seq", self.seq))
            self.wake.set()
        elif kind == "control":
            await self._control(msg.get("op", ""))
        elif kind == "settings":
            changes = {k: v for k, v in msg.items() if k != "type"}
            self.settings = self.settings.replace(**changes)
            if self.player.session is not None:
                await self.call(lambda: self.player.session.set(**changes))
            await self.ws.send(json.dumps({"type": "settings", **asdict(self.settings)}))
            self.wake.set()
        elif kind == "start":
            await self._start(msg)
        elif kind == "save":
            self.player._need()
            data = await self.call(self.player.session.to_bytes)
            await self.ws.send(pack(KIND_SESSION, {"steps": self.player.session.t, "bytes": len(data)}, data))
        elif kind == "load":
            data = _b64(msg.get("data", ""), self.server.opts.max_session_file, "session file")
            await self.call(self.player.load, data, msg.get("step"))
            self.settings = self.player.session.settings
            await self._after_start()
        elif kind == "branch":
            self.player._need()
            data = await self.call(self.player.session.to_bytes)
            await self.call(self.player.load, data, msg.get("step", self.player.session.t))
            await self._after_start()
        elif kind == "goal":
            await self._goal(msg)
        elif kind == "export":
            fmt = msg.get("format", "gif")
            if fmt not in ("gif", "mp4"):
                raise Rejected("export format is 'gif' or 'mp4'")
            self.player._need()
            data = await self.call(self._export, fmt)
            await self.ws.send(pack(KIND_VIDEO, {"format": fmt, "bytes": len(data)}, data))

    def _export(self, fmt: str) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"session.{fmt}"
            export_video(self.world, self.player.session.to_bytes(), path)
            return path.read_bytes()

    async def _start(self, msg: dict) -> None:
        source = msg.get("source")
        if source == "episode":
            await self._start_episode(int(msg.get("episode", 0)), int(msg.get("t", 0)))
        elif source == "env":
            if self.player.real is None:
                raise Rejected("this server runs no real env")
            await self.call(self.player.start_real, int(msg.get("seed", 0)) % 2**31, self.settings)
        elif source == "image":
            data = _b64(msg.get("data", ""), self.server.opts.max_upload, "picture")
            fit = (self.world.config.get("preset") or {}).get("fit", "stretch")
            frame, info = await self.call(decode_image, data, self.world.frame_space.shape, fit)
            notes = look_note(frame, self.server.starts.reference, info["native"], self.world.frame_space.shape)
            await self.call(
                self.player.start, frame[None], None, {"source": "image", "native": info["native"]}, self.settings
            )
            for n in notes:
                await self.ws.send(json.dumps({"type": "notice", "text": n}))
        else:
            raise Rejected("start.source is 'episode', 'env' or 'image'")
        await self._after_start()

    async def _goal(self, msg: dict) -> None:
        """A goal picture for the planner that Enter hands control to."""
        policy = self.player.policy
        if not hasattr(policy, "set_goal"):
            raise Rejected("the policy of this server takes no goal (start play on a run with a planning world)")
        data = _b64(msg.get("data", ""), self.server.opts.max_upload, "goal picture")
        frame, _ = await self.call(decode_image, data, self.world.frame_space.shape)
        await self.call(policy.set_goal, frame)
        await self.ws.send(json.dumps({"type": "policy", **self._policy_state()}))
        await self.ws.send(json.dumps({"type": "notice", "text": "goal set: Enter hands control to the planner"}))

    async def _after_start(self) -> None:
        self.action = self._noop()
        await self._send_frame(None, self.player.session.frame)
        self.wake.set()

    async def _control(self, op: str) -> None:
        if op not in OPS:
            raise Rejected(f"control.op is one of {', '.join(OPS)}")
        if op == "pause":
            self.paused = not self.paused
        elif op == "resume":
            self.paused = False
        elif op == "step":
            self.paused = True
            await self._tick()
        elif op == "reset":
            await self.call(self.player.reset)
            await self._after_start()
        elif op == "resync":
            await self.call(self.player.resync)
            await self._send_frame(None, self.player.session.frame)
        elif op == "policy":
            await self.call(self.player.toggle_policy)
        await self.ws.send(json.dumps({"type": "state", "paused": self.paused, "controller": self.player.controller}))
        self.wake.set()

    async def _tick(self) -> None:
        if self.player.session is None:
            return
        seq, t0 = self.seq, time.perf_counter()
        tick = await self.call(self.player.tick, self.action)
        await self._send_frame(tick, tick.dream, seq=seq, ms=(time.perf_counter() - t0) * 1000)
        if tick.terminated:
            self.paused = True
            await self.ws.send(
                json.dumps({"type": "notice", "text": "the dream ended (termination head); reset to go on"})
            )
            await self.ws.send(json.dumps({"type": "state", "paused": True, "controller": self.player.controller}))

    async def _send_frame(self, tick, dream: np.ndarray, seq: int | None = None, ms: float | None = None) -> None:
        real = None if tick is None else tick.real
        if tick is None and self.player.real_synced and self.player.real is not None and len(self.player.real.frames):
            real = self.player.real.frames[-1]
        header = {
            "t": self.player.session.t,
            "seq": seq,
            "ms": ms,
            "reward": None if tick is None else tick.reward,
            "divergence": None if tick is None else tick.divergence,
            "controller": self.player.controller,
            "real": real is not None,
            "paused": self.paused,
        }
        payload = [np.ascontiguousarray(dream).tobytes()]
        if real is not None:
            payload.append(np.ascontiguousarray(real).tobytes())
        await self.ws.send(pack(KIND_FRAME, header, *payload))

    async def _frames(self) -> None:
        """The frame loop: one step per period of the target rate. A changed input is not left waiting
        for the next period: once half a period has passed since the last frame, the next one comes at
        once, so key-to-frame latency stays under about half a period plus one step."""
        loop = asyncio.get_running_loop()
        next_t = last = loop.time()
        try:
            while not self.closed:
                if self.paused or self.player.session is None:
                    self.wake.clear()
                    await self.wake.wait()
                    next_t = loop.time()
                    continue
                period = 1.0 / self.settings.fps
                due = min(next_t, last + period / 2) if self.fresh_input else next_t
                now = loop.time()
                if now < due:
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), due - now)
                    continue
                early, self.fresh_input, last = due < next_t, False, now
                try:
                    await self._tick()
                except (SimulacraError, ValueError, RuntimeError) as e:  # the dream pauses; the page hears why
                    log.warning("play: a step failed: %s", e)
                    self.paused = True
                    await self.server._send_error(self.ws, f"the dream paused: a step failed ({e})")
                next_t = now + period if early else max(next_t + period, loop.time() - period)
        except ConnectionClosed:
            pass

    async def _idle(self) -> None:
        timeout = self.server.opts.idle_timeout
        while True:
            await asyncio.sleep(min(timeout, 5.0))
            if time.monotonic() - self.last_message > timeout:
                await self.server._send_error(self.ws, f"idle for {timeout:.0f} s: the session was closed")
                await self.ws.close(1000, "idle")
                return


def new_token() -> str:
    return secrets.token_urlsafe(24)
