"""Play in real browsers: sustained frames/s and key-to-frame latency, one session and several at once.

Starts `simulacra play RUN` as a user would, opens N headless Chromium pages (Debian's chromium, driven by
Playwright) that each start from a real env reset, set the target rate, and tap the preset's keys for
--seconds. Per session it reports the frames/s the page received and the p50 / p95 latency from a key
press to the first frame that took it (measured in the page). Bars (issue 13): one session >= 30 frames/s
at p95 <= 50 ms; four sessions >= 15 frames/s each. The browsers share the host's CPU with the server, as
they would on a laptop.

    python benchmarks/play_latency.py RUN [--sessions 1 4] [--fps 30] [--seconds 20] [--backend auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(url: str, n: int, fps: float, seconds: float) -> list[dict]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        pages = []
        for _ in range(n):
            pg = browser.new_context(bypass_csp=True, viewport={"width": 900, "height": 700}).new_page()
            pg.goto(url)
            pg.wait_for_function("window.simulacra.frames > 0", timeout=60000)
            pg.fill("#s-fps", str(fps))
            pg.dispatch_event("#s-fps", "change")
            pages.append(pg)
        keys = list(pages[0].evaluate("Object.keys(window.simulacra.hello.controls.keys)"))
        time.sleep(2.0)  # the new rate takes hold
        start = [pg.evaluate("[window.simulacra.frames, window.simulacra.latencies.length]") for pg in pages]
        t0, i = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            k = keys[i % len(keys)]
            for pg in pages:
                pg.keyboard.down(k)
            time.sleep(0.15)
            for pg in pages:
                pg.keyboard.up(k)
            time.sleep(0.15)
            i += 1
        dt = time.perf_counter() - t0
        out = []
        for pg, (f0, l0) in zip(pages, start, strict=True):
            frames, lat = pg.evaluate("[window.simulacra.frames, window.simulacra.latencies]")
            lat = sorted(lat[l0:]) if len(lat) > l0 else sorted(lat)
            q = lambda a, f: a[min(len(a) - 1, int(f * len(a)))] if a else None  # noqa: E731
            out.append({"fps": (frames - f0) / dt, "p50_ms": q(lat, 0.5), "p95_ms": q(lat, 0.95), "inputs": len(lat)})
        browser.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--fps", type=float, default=30.0, help="target rate each page asks for")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default="benchmarks/results/play_latency.json")
    args = ap.parse_args()
    sim = Path(sys.executable).with_name("simulacra")
    rows = []
    for n in args.sessions:
        port = free_port()
        cmd = [
            str(sim),
            "play",
            args.run,
            "--port",
            str(port),
            "--backend",
            args.backend,
            "--max-sessions",
            str(max(n, 4)),
        ]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in server.stdout:  # wait for the URL
                if "open http" in line:
                    url = line.split("open ", 1)[1].strip()
                    break
            else:
                raise SystemExit("simulacra play did not start")
            per = measure(url, n, args.fps, args.seconds)
        finally:
            server.terminate()
            server.wait(30)
        fps = [r["fps"] for r in per]
        p95 = max(r["p95_ms"] or float("inf") for r in per)
        p50 = max(r["p50_ms"] or float("inf") for r in per)
        bar = (min(fps) >= 30 and p95 <= 50) if n == 1 else min(fps) >= 15
        rows.append(
            {
                "sessions": n,
                "target_fps": args.fps,
                "fps_min": min(fps),
                "fps_mean": sum(fps) / n,
                "p50_ms": p50,
                "p95_ms": p95,
                "bar": bar,
                "per_session": per,
            }
        )
        print(
            f"{n} session(s): frames/s min {min(fps):.1f} mean {sum(fps) / n:.1f} (target {args.fps:.0f}) | key->frame p50 {p50:.0f} ms p95 {p95:.0f} ms (worst session) | bar {'PASS' if bar else 'FAIL'}",
            flush=True,
        )
    host = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    print(f"host: {host['cpu']}, {host['cores']} cores; server and browsers share it")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"run": args.run, "backend": args.backend, "seconds": args.seconds, "host": host, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
