"""Envs stepping in lockstep for the recorder: in worker processes (the recorder always uses them, even for
one env, so a stuck env can be stopped), or in this process for one env (``in_process``, for library use).

Why not Gymnasium's AsyncVectorEnv: its start-up waits for the workers without a timeout, so an env
that hangs while it is built (an OpenGL renderer in a forked process does) hangs the recorder silently.
Here every start-up, reset and step has a deadline; past it the workers are killed and a one-line
SimulacraError names the env and suggests a fix. Workers also die with the recorder (PDEATHSIG on
Linux, and end-of-file on their pipe), so a killed recording leaves no orphans; they ignore Ctrl-C from
the moment they start (it reaches the whole process group, and is the recorder's to handle: the recorder
stops them), so an interrupt prints no worker tracebacks.

Envs can step in lockstep (all of them) or a subset (``mask``): a resumed recording replays the
schedule of the interrupted one, where envs start at different points of it.

The calls an env sees are those AsyncVectorEnv made (reset(seed, options=None) first, then
reset(seed, options={}) for each new episode, step(action)), so recordings stay byte-identical.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait

import numpy as np

from simulacra.errors import SimulacraError

log = logging.getLogger(__name__)

GL_MODULES = ("pyglet", "OpenGL", "moderngl", "glfw", "mujoco")
"""Modules whose presence after building an env means it renders with OpenGL: such envs hang in forked
worker processes (Mesa's software renderer after fork), so their workers are spawned instead."""


class EnvTimeout(SimulacraError):
    """An env did not answer within its deadline."""


def uses_opengl(env_id: str) -> bool:
    """Whether ``env_id`` (after one was built in this process) renders with OpenGL."""
    return env_id.startswith("MiniWorld-") or any(m in sys.modules for m in GL_MODULES)


# ---- a deadline for code running in this process -------------------------------------------------
@contextmanager
def deadline(seconds: float, message: Callable[[], str]) -> Iterator[None]:
    """Raise EnvTimeout(message()) if the body runs longer than ``seconds`` (SIGALRM, main thread only;
    elsewhere the body runs without a deadline)."""
    usable = (
        seconds
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise EnvTimeout(message())

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """SIGINT ignored in this process while the body starts worker processes (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- the worker process --------------------------------------------------------------------------
def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _describe(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg if isinstance(e, SimulacraError) else f"{type(e).__name__}: {msg}"


def _worker(conn: Connection, make: Callable, parent_ends: list) -> None:
    _die_with_parent()
    for c in parent_ends:  # (fork) ends inherited from the parent: closing them lets EOF reach us
        c.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the recorder's to handle
    env = None
    try:
        env = make()
        conn.send(("ok", None))
        while True:
            cmd, data = conn.recv()
            if cmd == "reset":
                obs, _ = env.reset(seed=data[0], options=data[1])
                conn.send(("ok", (obs, getattr(env, "extras", None))))
            elif cmd == "act":
                conn.send(("ok", env.explore_action()))
            elif cmd == "step":
                obs, reward, terminated, truncated, _ = env.step(data)
                conn.send(("ok", (obs, reward, terminated, truncated, getattr(env, "extras", None))))
            elif cmd == "close":
                break
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except BaseException as e:
        with suppress(OSError, ValueError):
            conn.send(("error", (_describe(e), traceback.format_exc())))
    finally:
        if env is not None:
            with suppress(Exception):
                env.close()
        with suppress(OSError, ValueError):
            conn.send(("closed", None))


# ---- the pool ------------------------------------------------------------------------------------
class EnvPool:
    """``n`` envs from ``make`` (a picklable thunk), stepped in lockstep.

    ``in_process`` runs one env here (deadlines by SIGALRM); otherwise each env has a worker process
    started with ``context`` ("fork", "spawn", "forkserver" or None for the platform's default).
    ``start_timeout`` bounds building the envs, ``step_timeout`` each reset, action and step.
    """

    def __init__(
        self,
        make: Callable,
        n: int,
        env_id: str,
        *,
        in_process: bool,
        context: str | None = None,
        start_timeout: float = 60.0,
        step_timeout: float = 30.0,
    ):
        self.make, self.num_envs, self.env_id = make, n, env_id
        self.in_process, self.context = in_process, context
        self.start_timeout, self.step_timeout = start_timeout, step_timeout
        self.env = None
        self.procs: list = []
        self.conns: list[Connection] = []
        self.first_reset = True
        self.extras: list[dict | None] = [None] * n
        """Per env: its true state and lives at its latest frame (FrameEnv.extras; None for other envs)."""
        try:
            self._start()
        except BaseException:
            self.close(kill=True)
            raise

    # ---- start-up ------------------------------------------------------------------------------
    def _hint(self) -> str:
        if self.in_process or self.num_envs == 1:
            return "raise --env-timeout if it is just slow"
        return "try --num-envs 1 (a single env process), or raise --env-timeout if it is just slow"

    def _start(self) -> None:
        if self.in_process:
            with deadline(self.start_timeout, lambda: self._late("did not start", self.start_timeout)):
                self.env = self.make()
            return
        ctx = mp.get_context(self.context)
        with _ctrl_c_ignored():  # inherited (fork), and seen by a spawned interpreter as it starts
            self._start_workers(ctx)
        self._gather([None] * self.num_envs, self.start_timeout, "did not start")

    def _start_workers(self, ctx) -> None:
        parent_ends = []
        for k in range(self.num_envs):
            parent, child = ctx.Pipe()
            pass_ends = parent_ends + [parent] if ctx.get_start_method() == "fork" else []
            proc = ctx.Process(
                target=_worker, args=(child, self.make, pass_ends), name=f"simulacra-env-{k}", daemon=True
            )
            proc.start()
            child.close()
            parent_ends.append(parent)
            self.procs.append(proc)
            self.conns.append(parent)

    def _late(self, what: str, seconds: float) -> str:
        return f"env {self.env_id} {what} within {seconds:g} s (--env-timeout); {self._hint()}"

    # ---- talking to the workers ----------------------------------------------------------------
    def _gather(self, results: list, seconds: float, what: str) -> list:
        """Wait for one reply from every worker that owes one (results[k] is None until it comes)."""
        pending = {c: k for k, c in enumerate(self.conns) if results[k] is None}
        end = time.monotonic() + seconds
        while pending:
            left = end - time.monotonic()
            ready = wait(list(pending), timeout=max(0.0, left)) if left > 0 else []
            if not ready:
                raise EnvTimeout(self._late(what, seconds))
            for c in ready:
                k = pending.pop(c)
                try:
                    status, value = c.recv()
                except (EOFError, OSError):
                    code = self.procs[k].exitcode
                    raise SimulacraError(
                        f"env {self.env_id}: its worker process {k} died"
                        f"{'' if code is None else f' (exit code {code})'}; {self._hint()}"
                    ) from None
                if status == "error":
                    message, trace = value
                    log.debug("env worker %d failed:\n%s", k, trace)
                    raise SimulacraError(f"env {self.env_id}: {message}")
                if status == "closed":
                    raise SimulacraError(f"env {self.env_id}: its worker process {k} stopped; {self._hint()}")
                results[k] = ("ok", value)
        return [r[1] if r is not None else None for r in results]

    def _ask(self, cmds: list, what: str) -> list:
        """Send cmds[k] (or nothing, if None) to worker k; the replies of those asked, None for the rest."""
        results: list = []
        for c, cmd in zip(self.conns, cmds, strict=True):
            if cmd is not None:
                try:
                    c.send(cmd)
                except (BrokenPipeError, OSError):
                    raise SimulacraError(f"env {self.env_id}: a worker process died; {self._hint()}") from None
            results.append(None if cmd is not None else ("skip", None))
        replies = self._gather(results, self.step_timeout, what)
        return [r if cmd is not None else None for r, cmd in zip(replies, cmds, strict=True)]

    def _here(self, fn: Callable, what: str):
        with deadline(self.step_timeout, lambda: self._late(what, self.step_timeout)):
            return fn()

    # ---- the vector-env calls the recorder makes -----------------------------------------------
    def reset(self, seeds: list[int], mask: np.ndarray | None = None) -> list:
        """Reset env k with seeds[k] where mask[k] (all when None); the first frames of those reset."""
        options = None if self.first_reset else {}
        self.first_reset = False
        mask = np.ones(self.num_envs, bool) if mask is None else mask
        if self.in_process:
            out = [
                self._here(lambda: (self.env.reset(seed=seeds[0], options=options)[0], self._extras()), "did not reset")
            ]
        else:
            cmds = [("reset", (seeds[k], options)) if mask[k] else None for k in range(self.num_envs)]
            out = self._ask(cmds, "did not reset")
        for k, o in enumerate(out):
            if o is not None:
                self.extras[k] = o[1]
        return [None if o is None else o[0] for o in out]

    def _extras(self) -> dict | None:
        return getattr(self.env, "extras", None)

    def explore_actions(self, mask: np.ndarray | None = None) -> list:
        """Env k's exploration policy's next action where mask[k] (all when None); None for the others."""
        if self.in_process:
            return [self._here(self.env.explore_action, "did not choose an action")]
        mask = np.ones(self.num_envs, bool) if mask is None else mask
        cmds = [("act", None) if mask[k] else None for k in range(self.num_envs)]
        return self._ask(cmds, "did not choose an action")

    def step(self, actions, mask: np.ndarray | None = None):
        """(frames, rewards float64, terminated, truncated) after env k takes actions[k], for the envs
        where mask[k] (all when None); the others do not step (frame None, reward 0, flags False)."""
        mask = np.ones(self.num_envs, bool) if mask is None else mask
        if self.in_process:
            out = [self._here(lambda: (*self.env.step(actions[0])[:4], self._extras()), "did not finish a step")]
        else:
            cmds = [("step", actions[k]) if mask[k] else None for k in range(self.num_envs)]
            out = self._ask(cmds, "did not finish a step")
        for k, o in enumerate(out):
            if o is not None:
                self.extras[k] = o[4]
        out = [o if o is not None else (None, 0.0, False, False, None) for o in out]
        obs = [o[0] for o in out]
        rew = np.array([o[1] for o in out], dtype=np.float64)
        term = np.array([o[2] for o in out], dtype=np.bool_)
        trunc = np.array([o[3] for o in out], dtype=np.bool_)
        return obs, rew, term, trunc

    def close(self, kill: bool = False) -> None:
        """Close the envs; workers that do not exit within a few seconds (or at once with ``kill``) are
        terminated, then killed. Never leaves a worker process behind."""
        if self.env is not None:
            env, self.env = self.env, None
            with suppress(Exception):
                env.close()
        if not kill:
            for c in self.conns:
                with suppress(OSError, ValueError):
                    c.send(("close", None))
        end = time.monotonic() + (0 if kill else 5)
        for p in self.procs:
            p.join(timeout=max(0.0, end - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []
