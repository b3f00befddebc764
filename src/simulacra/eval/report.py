"""The evaluation report: inline-SVG charts, tables and side-by-side videos in one HTML page, plus a
compact table on stdout. Everything shown is read from the metrics dict written to metrics.json."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simulacra.data.video import grid_frames, write_video
from simulacra.eval import verdict

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
SHOW_H = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LONG_H = (1, 4, 16, 64, 256, 1024)
"""Horizons of the long-rollout filmstrip."""
FILMSTRIP_SCALE = 4
"""Filmstrips are enlarged this many times, nearest neighbour: a 64x64 ball is one or two pixels."""


def _fmt(v, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 10**nd else f"{v:.0f}"
    return str(v)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = (hi - lo) or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (m * step) <= n:
            step *= m
            break
    return [t for t in np.arange(math.ceil(lo / step) * step, hi + step * 1e-9, step)]


def svg_chart(
    title: str, xs, series: dict, ylabel: str = "", hline=None, xlabel="horizon (steps)", w=520, h=260
) -> str:
    """A line chart: series name -> values (None = gap) over xs; optional dashed reference line."""
    vals = [v for ys in series.values() for v in ys if v is not None and np.isfinite(v)]
    if hline is not None:
        vals.append(hline)
    if not vals:
        return f"<p>{html.escape(title)}: no data</p>"
    lo, hi = min(vals), max(vals)
    pad = 0.05 * ((hi - lo) or abs(hi) or 1.0)
    lo, hi = lo - pad, hi + pad
    L, R, T, B = 56, 12, 28, 36
    X = lambda x: L + (x - xs[0]) / max(1e-9, xs[-1] - xs[0]) * (w - L - R)  # noqa: E731
    Y = lambda y: T + (hi - y) / (hi - lo) * (h - T - B)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">']
    out.append(f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{w - L - R}" height="{h - T - B}" fill="none" stroke="#999"/>')
    for t in _nice_ticks(lo, hi):
        out.append(f'<line x1="{L}" x2="{w - R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 4}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:.4g}</text>')
    for t in _nice_ticks(xs[0], xs[-1], 8):
        out.append(f'<text x="{X(t):.1f}" y="{h - B + 14}" text-anchor="middle">{t:.4g}</text>')
    out.append(f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">{ylabel}</text>')
    if hline is not None:
        out.append(
            f'<line x1="{L}" x2="{w - R}" y1="{Y(hline):.1f}" y2="{Y(hline):.1f}" stroke="#555" stroke-dasharray="4 3"/>'
        )
    lw = 30 + 6.5 * max(len(n) for n in series)
    out.append(
        f'<rect x="{L + 4}" y="{T + 3}" width="{lw}" height="{14 * len(series) + 4}" fill="#fff" opacity="0.85"/>'
    )
    for k, (name, ys) in enumerate(series.items()):
        c = COLORS[k % len(COLORS)]
        runs, cur = [], []
        for x, y in zip(xs, ys, strict=False):
            if y is None or not np.isfinite(y):
                runs, cur = (runs + [cur]) if cur else runs, []
            else:
                cur.append(f"{X(x):.1f},{Y(y):.1f}")
        for r in [*runs, cur]:
            if len(r) > 1:
                out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{" ".join(r)}"/>')
            elif r:
                x, y = r[0].split(",")
                out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{c}"/>')
        out.append(f'<rect x="{L + 8}" y="{T + 6 + 14 * k}" width="10" height="3" fill="{c}"/>')
        out.append(f'<text x="{L + 22}" y="{T + 11 + 14 * k}">{html.escape(name)}</text>')
    return "\n".join(out) + "</svg>"


ENDED_STRIPES = ((48, 48, 48), (112, 40, 40))
"""The hatch (dark grey and dark red diagonal stripes) that fills a real panel past its episode's end."""


def ended_panel(shape: tuple, step: int) -> np.ndarray:
    """(H, W, 3) frame standing for "no real frame here": hatched, captioned "real ended / at N" (step N)
    (the caption where the frame is large enough for the 6x11 pixel font)."""
    H, W = shape[:2]
    y, x = np.mgrid[:H, :W]
    img = np.where((((x + y) // 4) % 2 == 0)[..., None], ENDED_STRIPES[0], ENDED_STRIPES[1]).astype(np.uint8)
    if H >= 24 and W >= 40:
        pil = Image.fromarray(img)
        d = ImageDraw.Draw(pil)
        font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()  # the crisp bitmap font
        for k, text in enumerate(("real ended", f"at {step}")):
            box = d.textbbox((2, 2 + 11 * k), text, font=font)
            d.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), fill=(0, 0, 0))
            d.text((2, 2 + 11 * k), text, fill=(255, 255, 255), font=font)
        img = np.asarray(pil)
    return img


def past_end(real_THWC: np.ndarray, mask_T: np.ndarray) -> np.ndarray:
    """The real frames of one rollout with every step past the episode's end replaced by `ended_panel`."""
    if mask_T.all():
        return real_THWC
    out = real_THWC.copy()
    out[~mask_T] = ended_panel(real_THWC.shape[1:], int(mask_T.sum()))
    return out


def side_by_side(real_NTHWC: np.ndarray, gen_NTHWC: np.ndarray, mask_NT: np.ndarray) -> list[np.ndarray]:
    """Per rollout: (T, H, 2W+2, 3) real | generated; past the real episode's end the real panel is hatched
    and captioned "real ended at N" (see `ended_panel`)."""
    out = []
    for r, g, m in zip(real_NTHWC, gen_NTHWC, mask_NT, strict=True):
        r = past_end(r, m)
        sep = np.full((*r.shape[:2], 2, 3), 255, np.uint8)
        out.append(np.concatenate([r, sep, g], 2))
    return out


def write_videos(folder: Path, name: str, pairs: list[np.ndarray], fps: int) -> str:
    write_video(folder / f"{name}.mp4", grid_frames(pairs, scale=2), fps)
    return f"{name}.mp4"


def filmstrip(path: Path, real: np.ndarray, gen: np.ndarray, mask: np.ndarray, horizons) -> list[int]:
    """PNG, enlarged FILMSTRIP_SCALE times: per rollout two rows (real, generated) at the given horizons
    (1-based); returns the horizons shown."""
    hs = [h for h in horizons if h <= real.shape[1]]
    rows = []
    for r, g, m in zip(real, gen, mask, strict=True):
        for src in (past_end(r, m), g):
            rows.append(np.concatenate([np.pad(src[h - 1], ((1, 1), (1, 1), (0, 0))) for h in hs], 1))
        rows.append(np.full((3, *rows[-1].shape[1:]), 255, np.uint8))  # between rollouts
    img = np.concatenate(rows, 0)
    k = FILMSTRIP_SCALE
    Image.fromarray(img).resize((img.shape[1] * k, img.shape[0] * k), Image.NEAREST).save(path)
    return hs


class Text(str):
    """A table cell of text (a plain str cell is a row heading)."""


def _cell(c) -> str:
    if isinstance(c, Text):
        return f"<td class='text'>{html.escape(c)}</td>"
    if isinstance(c, str):
        return f"<th>{html.escape(c)}</th>"
    return f"<td>{html.escape(_fmt(c, 4))}</td>"


def _table(rows: list[list], head: list[str] | None = None) -> str:
    th = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>" if head else ""
    return f"<table>{th}{''.join('<tr>' + ''.join(_cell(c) for c in r) + '</tr>' for r in rows)}</table>"


def _horizon_rows(ol: dict) -> tuple[list[int], list[list]]:
    hs = [h for h in SHOW_H if h <= len(ol["psnr"]["model"])]
    rows = [
        [name, *[ol[k][s][h - 1] for h in hs]]
        for name, k, s in [
            ("PSNR model", "psnr", "model"),
            ("PSNR copy-last", "psnr", "copy_last"),
            ("SSIM model", "ssim", "model"),
            ("SSIM copy-last", "ssim", "copy_last"),
        ]
    ]
    rows.append(["sharpness ratio", *[ol["sharpness_ratio"][h - 1] for h in hs]])
    mv = ol.get("psnr_moving")
    if mv and ol.get("motionless_starts"):  # else the same figures as the rows above
        rows += [
            ["PSNR model, moving", *[_at(mv["model"], h) for h in hs]],
            ["PSNR copy, moving", *[_at(mv["copy_last"], h) for h in hs]],
        ]
    return hs, rows


def _at(values: list, h: int):
    return values[h - 1] if len(values) >= h else None


def _speed_rows(sp: dict) -> list[list]:
    rows = []
    for backend, v in sp.items():
        if not isinstance(v, dict):
            continue
        if "error" in v:
            rows.append([backend, "–", "–", v["error"]])
        for b, x in v.items():
            if isinstance(x, dict):
                rows.append([backend, b.removeprefix("batch_"), x["frames_per_s"], x["ms_per_step"]])
    return rows


def _ctl_rows(ctl: dict) -> list[list]:
    if "real" not in ctl:
        return [["skipped", ctl.get("skipped", "")]]
    keys = list(ctl["real"])
    rows = [[label, *[ctl[k].get(x) for x in keys]] for label, k in [
        ("real pairs, group A (IDM training set)", "real_train"),
        ("real pairs, group B", "real"),
        ("generated pairs (t through the autoencoder, predicted t+1), group B", "generated"),
        ("t and t+1 through the autoencoder, group B", "reconstructed"),
        ("real t, generated t+1, group B", "generated_real_first"),
        ("chance (ignores the frames)", "chance"),
    ]]  # fmt: skip
    why = verdict.invalid(ctl)
    shown = (lambda v: v) if why is None else (lambda v: Text("invalid: see the note above"))  # noqa: E731
    return [
        *rows,
        ["ratio generated / real", shown(ctl["ratio"])],
        ["ratio above chance: (generated - chance) / (real - chance)", shown(ctl["ratio_above_chance"])],
        ["ratio generated / through the autoencoder", shown(ctl["ratio_vs_autoencoder"])],
    ]


def _invalid_note(section: dict) -> list[str]:
    """The report's banner for a measurement that failed its own sanity check (none where it passed)."""
    why = verdict.invalid(section)
    return [] if why is None else [f"<p class='invalid'><b>Invalid:</b> {html.escape(why)}</p>"]


def _verdict_rows(vd: dict) -> list[list]:
    return [
        [verdict.BARS.get(k, k), Text(verdict.word(v["pass"])), v["value"], v["threshold"], Text(v["note"])]
        for k, v in vd.items()
    ]


def _motionless_note(ol: dict) -> str:
    n = ol.get("motionless_starts")
    if n is None:
        return ""
    mo = ol["motion"]
    if not n:
        return f"No held-out start is motionless (threshold {mo['threshold']} over {mo['steps']} steps)."
    where = ", ".join(f"segment {g} step {s}" for g, s in ol["motionless"])
    return (
        f"{n} of {ol['rollouts']} held-out starts are motionless: the real frames barely change over the "
        f"first {mo['steps']} steps (mean |Δframe| below {mo['threshold']}), e.g. a game's motionless intro. "
        f"There copy-last is near exact, so PSNR against it means nothing; the 'moving' rows give the PSNR "
        f"over the {ol['psnr_moving']['rollouts']} moving starts only. Motionless: {where} (segments are the "
        "held-out episodes in the order listed above, or its two halves when there is one)."
    )


def _past_end_note(ends: list, shown: int, what: str) -> str:
    past = [(k, e) for k, e in enumerate(ends) if e is not None]
    if not past:
        return f"No {what} rollout runs past the end of its real episode."
    in_video = ", ".join(f"rollout {k + 1}: step {e}" for k, e in past if k < shown)
    return (
        f"{len(past)} of {len(ends)} {what} rollouts run past the end of their real episode; there is no real "
        "frame to compare with after it, so those steps are masked out of every figure that compares with the "
        "real episode, and in the videos and the filmstrip the real panel is hatched (dark grey / red) and "
        "captioned 'real ended / at N' (N: the last step with a real frame)"
        + (f" (shown: {in_video})." if in_video else ".")
    )


def write_html(path: Path, m: dict) -> None:
    ol, ctl, dr, sp, mc = m["open_loop"], m["controllability"], m["drift"], m["speed"], m["machine"]
    hs = list(range(1, len(ol["psnr"]["model"]) + 1))
    show, rows = _horizon_rows(ol)
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>simulacra eval</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "td{text-align:right}th{text-align:left;background:#f6f6f6}svg{margin:4px}.note{color:#a40}"
        "td.text{text-align:left}.invalid{color:#b00}</style>",
        f"<h1>simulacra eval — {e(m['run'])}</h1>",
        *_verdict_parts(m),
        f"<p>{e(m['date'])} on {e(mc['node'])} ({e(mc['platform'])}, torch {e(mc['torch'])}, "
        f"{mc['threads']} threads, {e(mc['device'])}); took {m.get('seconds')} s.</p>",
        f"<p>Held-out data: <b>{e(m['heldout']['kind'])}</b> {e(m['heldout']['path'])}, episodes "
        f"{m['heldout']['episodes']}, {m['heldout']['frames']} frames (groups A / B: segments "
        f"{m['heldout'].get('split_a')} / {m['heldout'].get('split_b')}). {ol['rollouts']} open-loop rollouts of "
        f"{len(hs)} steps, each from K={m['K']} real context frames, with the true actions.</p>",
        *[f"<p class='note'>{e(n)}</p>" for n in m["heldout"]["notes"]],
        "<h2>Open loop (true actions)</h2>",
        f"<p>{e(ol['what'])}. Copy-last = predict the last context frame forever. PSNR per frame on [0,1] RGB, "
        f"capped at {ol['psnr_cap_db']} dB; SSIM 11x11 Gaussian (σ 1.5); sharpness ratio = mean var(Laplacian of "
        "luma) of generated frames / of the real frames at the same horizon (&lt;1: blurrier than reality).</p>",
        svg_chart("PSNR (dB)", hs, {"model": ol["psnr"]["model"], "copy last frame": ol["psnr"]["copy_last"]}, "dB"),
        svg_chart("SSIM", hs, {"model": ol["ssim"]["model"], "copy last frame": ol["ssim"]["copy_last"]}, "SSIM"),
        svg_chart("sharpness: generated / real", hs, {"model": ol["sharpness_ratio"]}, "ratio", 1.0),
        _table(rows, ["horizon", *show]),
        f"<p class='note'>{e(_motionless_note(ol))}</p>",
        f"<p class='note'>{e(_past_end_note(ol.get('real_ended_at', []), _shown(m), 'open-loop'))}</p>",
        "<h2>Controllability</h2>",
        *_invalid_note(ctl),
        f"<p>{e(ctl.get('what', ''))}</p>",
        _table(_ctl_rows(ctl), ["IDM scored on", *ctl.get("real", {})]),
        _table(
            [
                [f"PSNR, true actions (mean over h 1..{ctl['delta_horizon']})", ctl["psnr_true_actions"]],
                ["PSNR, uniformly random actions (same starts, same noise)", ctl["psnr_random_actions"]],
                ["ΔPSNR (true - random)", ctl["delta_psnr"]],
            ]
        ),
        *_fidelity_parts(m),
        "<h2>Drift</h2>",
        *_invalid_note(dr),
        f"<p>{e(dr.get('what', dr.get('skipped', '')))}</p>",
        _table([[k, v if not isinstance(v, list) else str(v)] for k, v in dr.items() if k not in CURVES]),
    ]
    if "real_ended_at" in dr:
        parts.append(
            f"<p class='note'>{e(_past_end_note(dr['real_ended_at'], _shown(m), 'drift'))} {e(dr['past_end'])}.</p>"
        )
    if dr.get("distance_curve"):
        xs = list(range(1, len(dr["distance_curve"]) + 1))
        curve = {"generated": dr["distance_curve"]}
        parts.append(
            svg_chart(
                "RMSE to the nearest real frame (dashed: real frames)", xs, curve, "RMSE", dr["distance_real"], "step"
            )
        )
        curve = {"generated / real pool": dr["sharpness_curve"]}
        parts.append(svg_chart("sharpness vs the real pool", xs, curve, "ratio", 1.0, "step"))
    parts += [
        "<h2>Speed (world.step, decoded frames)</h2>",
        _table(_speed_rows(sp), ["backend", "batch", "frames/s", "ms/step"]),
    ]
    if sp.get("note"):
        parts.append(f"<p>{e(sp['note'])}</p>")
    parts.append("<h2>Real | generated</h2>")
    for f in m["files"].get("videos", []):
        parts.append(f"<p>{e(f)}<br><video src='{e(f)}' controls loop autoplay muted></video></p>")
    for f in m["files"].get("images", []):
        cols = ", ".join(str(h) for h in m["files"].get("horizons", {}).get(f, SHOW_H))
        parts.append(
            f"<p>{e(f)} ({FILMSTRIP_SCALE}x, nearest neighbour): per rollout a real row, then a generated row; "
            f"columns: steps {cols}<br><img src='{e(f)}' style='image-rendering:pixelated;max-width:100%'></p>"
        )
    parts.append(
        "<p>Past the end of a real episode the real panel is hatched and captioned 'real ended at N' (step N): "
        "nothing real is left to show or compare with there.</p>"
    )
    parts.append(f"<h2>Config</h2><pre>{e(json.dumps({**m['config'], 'seeds': m['seeds']}, indent=1))}</pre>")
    path.write_text("\n".join(parts))


CURVES = ("what", "distance_curve", "sharpness_curve", "past_end", "real_ended_at", "valid", "invalid_reason", "at")


def _fidelity_parts(m: dict) -> list[str]:
    """Motion, state probes, events, the clip discriminator and the long horizons (simulacra.eval.fidelity)."""
    e = html.escape
    parts = ["<h2>Motion</h2>"]
    mo = m.get("motion") or {}
    if mo.get("ratio"):
        xs = list(range(1, len(mo["ratio"]) + 1))
        parts += [
            f"<p>{e(mo['what'])}.</p>",
            svg_chart("motion: generated / real change", xs, {"model": mo["ratio"]}, "ratio", 1.0),
        ]
    st = m.get("state") or {}
    parts += ["<h2>State probes</h2>", *_invalid_note(st), f"<p>{e(st.get('what', st.get('skipped', '')))}</p>"]
    if st.get("fidelity"):
        xs = list(range(1, len(st["fidelity"]) + 1))
        parts.append(svg_chart("state fidelity (1 = as right as reality; 0 = copy-last)", xs,
                               {"model": st["fidelity"], "real frames (probe's ceiling)": st["oracle_fidelity"]}, "fidelity", 0.0))  # fmt: skip
        parts.append(svg_chart("probe error (sd)", xs, {"model": st["error"]["model"], "copy last frame": st["error"]["copy_last"],
                                                        "real frames": st["error"]["real"]}, "sd"))  # fmt: skip
    if st.get("r2_validation"):
        parts.append(
            f"<p>Kept ({len(st.get('kept', []))} of {st.get('variables')}): {e(', '.join(st.get('kept', [])[:40]))}</p>"
        )
        parts.append(
            _table([[k, v] for k, v in st["r2_validation"].items()], ["variable", "R² on real validation frames"])
        )
    ev = m.get("events") or {}
    parts += ["<h2>Events</h2>", f"<p>{e(ev.get('what', ev.get('skipped', '')))}.</p>"]
    rows = []
    for kind, sec in ev.items():
        if not isinstance(sec, dict):
            continue
        if "skipped" in sec:
            rows.append([kind, sec.get("real_teacher_forced"), None, None, None, Text(sec["skipped"])])
            continue
        for mode in ("teacher_forced", "open_loop"):
            s_, b = sec[mode], sec[f"{mode}_base_rate"]
            rows.append([f"{kind}, {mode.replace('_', ' ')}", s_["real"], s_["predicted"], s_["precision"], s_["recall"],
                         Text(f"precision {_fmt(b['precision'])}, recall {_fmt(b['recall'])}")])  # fmt: skip
    if rows:
        parts.append(_table(rows, ["event", "real", "predicted", "precision", "recall", "base-rate guesser"]))
    cl = m.get("clips") or {}
    parts += ["<h2>Clip discriminator</h2>", *_invalid_note(cl), f"<p>{e(cl.get('what', cl.get('skipped', '')))}.</p>"]
    if "model" in cl:
        rows = [[name, s_["accuracy"], Text(f"{s_['interval95'][0]:.2f}-{s_['interval95'][1]:.2f}"), s_["real_clips"], s_["generated_clips"]]
                for name, s_ in (("model (real vs generated)", cl["model"]), ("copy-last (calibration)", cl["copy_last"]))]  # fmt: skip
        parts.append(_table(rows, ["clips", "accuracy", "95% interval", "real", "other"]))
    lh, dr = m.get("long_horizon") or {}, m.get("drift") or {}
    parts.append("<h2>Long horizons</h2>")
    rows = [[f"step {c}", a.get("distance_ratio"), a.get("sharpness_ratio"), (lh.get("probe_in_range") or {}).get(c),
             ((lh.get("critic") or {}).get({"256": "500", "1024": "1000"}.get(c, "")) or {}).get("accuracy")]
            for c, a in (dr.get("at") or {}).items()]  # fmt: skip
    if rows:
        parts.append(_table(rows, ["", "nearest-real distance ratio", "sharpness ratio", "probe in real range",
                                   "discriminator (clips at 500 / 1,000)"]))  # fmt: skip
        parts.append(f"<p>{e(lh.get('probe_what', ''))}. {e(lh.get('critic_what', ''))}. Probe readings of real frames "
                     f"in range: {_fmt((lh.get('probe_in_range') or {}).get('real'))}.</p>")  # fmt: skip
    return parts


def _shown(m: dict) -> int:
    """How many rollouts the videos show."""
    return int((m.get("config") or {}).get("videos", 0))


def _verdict_parts(m: dict) -> list[str]:
    vd = m.get("verdict")
    if not vd:
        return []
    return [
        "<h2>Verdict</h2>",
        _table(_verdict_rows(vd), ["bar", "verdict", "value", "threshold", "note"]),
    ]


def print_summary(m: dict) -> None:
    ol, ctl, dr, sp = m["open_loop"], m["controllability"], m["drift"], m["speed"]
    show, rows = _horizon_rows(ol)
    w = max(16, *(len(r[0]) + 1 for r in rows))
    for r in [["horizon", *show], *rows]:
        print(f"{r[0]:<{w}}" + "".join(f" {_fmt(v, 4):>8}" for v in r[1:]))
    if ol.get("motionless_starts"):
        print(
            f"open loop: {ol['motionless_starts']} of {ol['rollouts']} starts are motionless (copy-last is near "
            f"exact there): PSNR over the {ol['psnr_moving']['rollouts']} moving ones in the 'moving' rows"
        )
    if ol.get("rollouts_past_end"):
        print(
            f"open loop: {ol['rollouts_past_end']} of {ol['rollouts']} rollouts run past their real episode's end:"
            " those steps are masked out of the means (videos: hatched, 'real ended at N')"
        )
    if "real" in ctl:
        key = ctl["metric"]
        why = verdict.invalid(ctl)
        ratio = (
            f"ratio {_fmt(ctl['ratio'])} (above chance {_fmt(ctl.get('ratio_above_chance'))})"
            if why is None
            else f"ratio invalid: {why}"
        )
        print(
            f"controllability: IDM {key} real {_fmt(ctl['real'][key])} | generated {_fmt(ctl['generated'][key])}"
            f" | through AE {_fmt(ctl['reconstructed'][key])} | chance {_fmt(ctl['chance'][key])} | {ratio}"
        )
    print(f"ΔPSNR true - random actions (h 1..{ctl.get('delta_horizon')}): {_fmt(ctl.get('delta_psnr'))} dB")
    if dr.get("steps"):
        print(
            f"drift {dr['steps']} steps: sharpness ratio at end {_fmt(dr['sharpness_ratio_end'])}; nearest-real RMSE"
            f" generated {_fmt(dr['distance_end'])} vs real {_fmt(dr['distance_real'])} (x{_fmt(dr['distance_ratio'])})"
        )
    _print_fidelity(m)
    print("speed (frames/s): " + " | ".join(f"{r[0]} b{r[1]} {_fmt(r[2], 4)}" for r in _speed_rows(sp)))


def _print_fidelity(m: dict) -> None:
    mo, st, ev, cl, dr = (m.get(k) or {} for k in ("motion", "state", "events", "clips", "drift"))
    if mo.get("ratio"):
        print(
            "motion ratio (generated / real change) @1,4,16,64: "
            + " ".join(_fmt(_at(mo["ratio"], h)) for h in (1, 4, 16, 64))
        )
    if "fidelity" in st:
        print(f"state fidelity @1,4,16,64: {' '.join(_fmt(_at(st['fidelity'], h)) for h in (1, 4, 16, 64))} "
              f"({len(st['kept'])} of {st['variables']} variables read by the probe)")  # fmt: skip
    elif st:
        print(f"state probe: {verdict.invalid(st) or st.get('skipped')}")
    for kind in ("reward", "termination", "life_loss"):
        sec = ev.get(kind) or {}
        if "teacher_forced" in sec:
            tf = sec["teacher_forced"]
            print(f"{kind} events, teacher-forced: {tf['real']} real, {tf['predicted']} predicted, precision "
                  f"{_fmt(tf['precision'])} recall {_fmt(tf['recall'])}")  # fmt: skip
    if "model" in cl:
        print(f"clip discriminator: {cl['model']['accuracy']:.0%} on model clips, {cl['copy_last']['accuracy']:.0%} on copy-last clips"
              + ("" if verdict.invalid(cl) is None else " (invalid)"))  # fmt: skip
    for c, a in (dr.get("at") or {}).items():
        print(
            f"drift step {c}: nearest-real distance ratio {_fmt(a['distance_ratio'])}, sharpness {_fmt(a['sharpness_ratio'])}"
        )


def print_verdict(m: dict) -> None:
    """The verdict per bar, one line each: PASS / FAIL / n/a, the figure against its threshold, and why."""
    vd = m.get("verdict") or {}
    if not vd:
        return
    print("verdict:")
    for k, v in vd.items():
        fig = "" if v["value"] is None else f" {_fmt(v['value'], 4)} (needs {_fmt(v['threshold'], 4)})"
        print(f"  {verdict.word(v['pass']):<4} {verdict.BARS.get(k, k)}:{fig} — {v['note']}")
