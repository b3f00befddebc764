"""The play page in a real browser (Debian's chromium, driven by Playwright): it shows frames, the held key
moves the block the way the key says, the readouts fill in, a saved session downloads and loads again at
its step, and Enter hands control to the policy and back.

Chromium is Debian's package (Playwright's own browser download cannot work here). Without it this test
skips, unless SIMULACRA_REQUIRE_BROWSER=1 (as .ci/run sets), where it fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading

import numpy as np
import pytest
from play_worlds import FRAME, block_frame, block_x, oracle_world

from simulacra.play.server import PlayServer, ServerOptions, Starts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM and os.environ.get("SIMULACRA_REQUIRE_BROWSER") != "1":
    pytest.skip("no chromium (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Background:
    """The play server on its own event loop in a thread, as `simulacra play` runs it."""

    def __init__(self, world, starts, policy_factory=None):
        self.loop = asyncio.new_event_loop()
        self.server = PlayServer(world, starts, ServerOptions(port=0, real=False), policy_factory)
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


class GoalSeeker:
    """A goal-taking policy for the oracle world, as the planner is one: it steps the block toward the
    goal picture's block, so the page's goal box and handoff can be checked without a planning world."""

    name = "goal seeker"

    def __init__(self):
        self.goal = None

    @property
    def has_goal(self) -> bool:
        return self.goal is not None

    def set_goal(self, frame) -> None:
        self.goal = block_x(frame)

    def reset(self, seed=None) -> None:
        pass

    def act(self, frames_THWC):
        x = block_x(frames_THWC[-1])
        return 0 if abs(x - self.goal) < 2 else (1 if x < self.goal else 2)


@pytest.fixture
def page(tmp_path, request):
    """The page on a server whose policy is random actions, or (parametrised "goal") a goal seeker."""
    from playwright.sync_api import sync_playwright

    world = oracle_world(tmp_path / "world")
    starts = Starts(reference=block_frame()[None])
    goal = getattr(request, "param", "random") == "goal"
    bg = Background(world, starts, (lambda w: GoalSeeker()) if goal else None)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # bypass_csp: Playwright evaluates its wait predicates as strings, which the page's CSP (rightly) forbids
        pg = browser.new_context(accept_downloads=True, bypass_csp=True).new_page()
        pg.goto(bg.server.url())
        pg.wait_for_function("window.simulacra.hello !== null", timeout=20000)
        yield pg, tmp_path
        browser.close()
    bg.stop()


def dream(pg) -> np.ndarray:
    return np.array(pg.evaluate("Array.from(window.simulacra.lastDream)"), np.uint8).reshape(FRAME, FRAME, 3)


def frames_after(pg, n: int) -> None:
    start = pg.evaluate("window.simulacra.frames")
    pg.wait_for_function(f"window.simulacra.frames >= {start + n}", timeout=20000)


def test_page_plays_saves_loads_and_hands_over(page):
    from PIL import Image

    pg, tmp = page
    assert not pg.is_visible("#goalbox")  # random actions take no goal: no goal box
    Image.fromarray(block_frame()).save(tmp / "start.png")
    pg.set_input_files("#st-img", str(tmp / "start.png"))  # the server has no data set: start from a picture
    frames_after(pg, 3)
    x0 = block_x(dream(pg))
    pg.keyboard.down("ArrowRight")
    frames_after(pg, 3)
    pg.keyboard.up("ArrowRight")
    frames_after(pg, 2)
    x1 = block_x(dream(pg))
    assert x1 > x0, (x0, x1)  # right arrow: the block went right
    pg.keyboard.down("ArrowLeft")
    frames_after(pg, 2)
    pg.keyboard.up("ArrowLeft")
    frames_after(pg, 2)
    assert block_x(dream(pg)) < x1

    # the readouts: frames/s and key-to-frame latency (p50 / p95) are numbers
    assert int(pg.inner_text("#fps")) > 0
    p50, p95 = (float(v) for v in pg.inner_text("#lat").split("/"))
    assert 0 <= p50 <= p95

    # save (a download), then load it back: the dream continues from the saved step
    pg.keyboard.down("ArrowRight")
    frames_after(pg, 3)
    pg.keyboard.press("Escape")  # pause
    pg.keyboard.up("ArrowRight")
    pg.wait_for_function("window.simulacra.paused === true")
    with pg.expect_download() as dl:
        pg.click("#b-save")
    path = tmp / "session.npz"
    dl.value.save_as(path)
    saved_at = pg.evaluate("window.simulacra.savedSteps")
    assert pg.evaluate("window.simulacra.header.t") == saved_at  # paused: the last frame is the saved step
    before = dream(pg)
    assert not np.array_equal(before, block_frame())
    n = pg.evaluate("window.simulacra.frames")
    pg.click("#b-reset")
    pg.wait_for_function(f"window.simulacra.frames > {n}", timeout=20000)
    assert np.array_equal(dream(pg), block_frame())  # back at the start
    n = pg.evaluate("window.simulacra.frames")
    pg.set_input_files("#ld-file", str(path))
    pg.wait_for_function(f"window.simulacra.frames > {n}", timeout=20000)
    assert pg.evaluate("window.simulacra.header.t") == saved_at
    assert np.array_equal(dream(pg), before)  # the replayed dream is the saved one, bit for bit

    # Enter gives the controls to the policy, Enter takes them back
    pg.keyboard.press("Escape")  # resume
    pg.keyboard.press("Enter")
    pg.wait_for_function("window.simulacra.header && window.simulacra.header.controller === 'policy'", timeout=20000)
    pg.keyboard.press("Enter")
    pg.wait_for_function("window.simulacra.header.controller === 'human'", timeout=20000)
    assert pg.evaluate("window.simulacra.errors.filter(e => !e.startsWith('no start')).length") == 0


@pytest.mark.parametrize("page", ["goal"], indirect=True)
def test_page_sets_the_planner_s_goal_and_hands_over(page):
    """For a policy that takes a goal (the planner), Enter is refused until a goal is set (an uploaded
    picture, or "this frame"), then the policy drives toward it."""
    from PIL import Image

    pg, tmp = page
    assert pg.is_visible("#goalbox") and "none yet" in pg.inner_text("#goal-state")
    Image.fromarray(block_frame(12)).save(tmp / "start.png")
    pg.set_input_files("#st-img", str(tmp / "start.png"))
    frames_after(pg, 2)
    pg.keyboard.press("Enter")
    pg.wait_for_function("window.simulacra.errors.some(e => e.includes('no goal yet'))", timeout=20000)
    assert pg.evaluate("window.simulacra.controller") == "human"
    Image.fromarray(block_frame(24)).save(tmp / "goal.png")
    pg.set_input_files("#goal-img", str(tmp / "goal.png"))
    pg.wait_for_function("window.simulacra.policy.has_goal === true", timeout=20000)
    pg.keyboard.press("Enter")
    pg.wait_for_function("window.simulacra.header.controller === 'policy'", timeout=20000)
    pg.wait_for_function(f"window.simulacra.frames > {pg.evaluate('window.simulacra.frames') + 6}", timeout=20000)
    assert abs(block_x(dream(pg)) - block_x(block_frame(24))) < 2  # it went to the uploaded goal
    pg.keyboard.press("Enter")  # back to the human, who moves the block left; "this frame" is the new goal
    pg.wait_for_function("window.simulacra.header.controller === 'human'", timeout=20000)
    pg.keyboard.down("ArrowLeft")
    frames_after(pg, 3)
    pg.keyboard.up("ArrowLeft")
    frames_after(pg, 2)
    here = block_x(dream(pg))
    count = "window.simulacra.notices.filter(n => n.startsWith('goal set')).length"
    before = pg.evaluate(count)
    pg.click("#b-goal-now")
    pg.wait_for_function(f"{count} > {before}", timeout=20000)
    pg.keyboard.press("Enter")
    pg.wait_for_function("window.simulacra.header.controller === 'policy'", timeout=20000)
    frames_after(pg, 4)
    assert abs(block_x(dream(pg)) - here) < 2  # the policy holds the block at the frame chosen as its goal
