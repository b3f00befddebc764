"""The `simulacra` command: one verb per job, each parsed from a typed config dataclass (tyro)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import tyro

from simulacra.errors import SimulacraError

# Verbs whose issues have not landed yet: listed so users see the whole plan, and say so plainly.
PLANNED = {
    "play": "play a world model in the browser, side by side with the real env",
    "plan": "reach a goal image by planning in the world model's latent space",
    "dream": "train an agent inside the world model, score it in the real env",
}

USAGE = """usage: simulacra VERB [options]      (simulacra VERB --help for each verb's options)

verbs:
  record       record trajectories from a real Gymnasium env into a data set
  data         data sets: info | view | verify | import | export
  train        train a world model (autoencoder + latent dynamics) on a data set
  eval         evaluate a world model against held-out real episodes and baselines
  export       export a trained world's per-frame step to ONNX (fast CPU inference), check and time it
{planned}
presets: {presets}
"""


def _usage() -> str:
    from simulacra.presets import PRESETS

    planned = "\n".join(f"  {k:<12} {v} (not built yet)" for k, v in PLANNED.items())
    return USAGE.format(planned=planned, presets=", ".join(PRESETS))


def _record(args: list[str]) -> None:
    from simulacra.data.record import RecordConfig, record

    cfg = tyro.cli(RecordConfig, args=args, prog="simulacra record")
    out = record(cfg)
    print(f"recorded {cfg.episodes} episodes to {out}  (next: simulacra data info {out})")


def _train(args: list[str]) -> None:
    from simulacra.train import TrainConfig, train

    cfg = tyro.cli(TrainConfig, args=args, prog="simulacra train")
    train(cfg)


def _eval(args: list[str]) -> None:
    from simulacra.eval import EvalConfig, evaluate

    cfg = tyro.cli(EvalConfig, args=args, prog="simulacra eval")
    evaluate(cfg)


def _export(args: list[str]) -> None:
    from simulacra.export import ExportConfig, export_command

    export_command(tyro.cli(ExportConfig, args=args, prog="simulacra export"))


def _data(args: list[str]) -> None:
    from simulacra.data import commands

    sub = {
        "info": (commands.InfoConfig, commands.info),
        "view": (commands.ViewConfig, commands.view),
        "verify": (commands.VerifyConfig, commands.verify),
        "import": (commands.ImportConfig, commands.import_),
        "export": (commands.ExportConfig, commands.export),
    }
    if not args or args[0] not in sub:
        print("usage: simulacra data {info,view,verify,import,export} [options]", file=sys.stderr)
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    cls, fn = sub[args[0]]
    cfg = tyro.cli(cls, args=args[1:], prog=f"simulacra data {args[0]}")
    code = fn(cfg)
    sys.exit(code or 0)


def _planned(verb: str) -> Callable[[list[str]], None]:
    def run(args: list[str]) -> None:
        print(f"simulacra {verb}: not built yet ({PLANNED[verb]}); it lands with its own issue.", file=sys.stderr)
        sys.exit(2)

    return run


VERBS: dict[str, Callable[[list[str]], None]] = {
    "record": _record,
    "data": _data,
    "train": _train,
    "eval": _eval,
    "export": _export,
} | {v: _planned(v) for v in PLANNED}


class _StdoutLines(logging.Handler):
    """Each log record as a plain line on the current sys.stdout (looked up per line, so tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), flush=True)


def _log_to_stdout() -> None:
    log = logging.getLogger("simulacra")
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _StdoutLines) for h in log.handlers):
        log.addHandler(_StdoutLines())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    if argv[0] == "--version":
        from simulacra import __version__

        print(__version__)
        return
    # library code logs (logging.getLogger(__name__)); the command shows those notes as plain lines
    _log_to_stdout()
    if argv[0] not in VERBS:
        print(f"simulacra: unknown verb {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    try:
        VERBS[argv[0]](argv[1:])
    except SimulacraError as e:
        print(f"simulacra {argv[0]}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # `simulacra data info | head`
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        print(f"simulacra {argv[0]}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
