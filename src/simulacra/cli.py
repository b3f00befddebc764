"""The `simulacra` command: one verb per job, each parsed from a typed config dataclass (tyro)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable

import tyro

from simulacra.errors import SimulacraError

# Verbs whose issues have not landed yet: listed so users see the whole plan, and say so plainly.
PLANNED = {
    "dream": "train an agent inside the world model, score it in the real env",
}

USAGE = """usage: simulacra VERB [options]      (simulacra VERB --help for each verb's options)

verbs:
  record       record trajectories from a real Gymnasium env into a data set
  data         data sets: info | view | verify | import | export
  train        train a world model (autoencoder + latent dynamics) on a data set
  eval         evaluate a world model against held-out real episodes and baselines
  export       export a trained world's per-frame step to ONNX (fast CPU inference), check and time it
  play         play a trained world in the browser, in real time, beside the real env
  plan         reach a goal image by planning in a world's planning latent, scored in the real env
{planned}
presets: {presets}
errors are one line; --debug (anywhere) or SIMULACRA_DEBUG=1 shows the traceback
"""


def _usage() -> str:
    from simulacra.presets import PRESETS

    planned = "\n".join(f"  {k:<12} {v} (not built yet)" for k, v in PLANNED.items())
    return USAGE.format(planned=planned, presets=", ".join(PRESETS))


# verb -> (module, config class, function): each verb is its typed config plus one function in one module;
# the function prints what the user sees; an int it returns is the exit code (the others return their result)
VERB_TABLE = {
    "record": ("simulacra.data.record", "RecordConfig", "record"),
    "train": ("simulacra.train", "TrainConfig", "train"),
    "eval": ("simulacra.eval", "EvalConfig", "evaluate"),
    "export": ("simulacra.export", "ExportConfig", "export_command"),
    "play": ("simulacra.play", "PlayConfig", "play"),
    "plan": ("simulacra.plan", "PlanConfig", "plan"),
    "data info": ("simulacra.data.commands", "InfoConfig", "info"),
    "data view": ("simulacra.data.commands", "ViewConfig", "view"),
    "data verify": ("simulacra.data.commands", "VerifyConfig", "verify"),
    "data import": ("simulacra.data.commands", "ImportConfig", "import_"),
    "data export": ("simulacra.data.commands", "ExportConfig", "export"),
}
DATA_SUBVERBS = [v.split()[1] for v in VERB_TABLE if v.startswith("data ")]


def _run(verb: str, args: list[str]) -> int:
    module, config, function = VERB_TABLE[verb]
    mod = importlib.import_module(module)
    cfg = tyro.cli(getattr(mod, config), args=args, prog=f"simulacra {verb}")
    result = getattr(mod, function)(cfg)
    code = result if type(result) is int else 0
    if code:
        sys.exit(code)
    return code


def _data(args: list[str]) -> None:
    if not args or args[0] not in DATA_SUBVERBS:
        print(f"usage: simulacra data {{{','.join(DATA_SUBVERBS)}}} [options]", file=sys.stderr)
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    sys.exit(_run(f"data {args[0]}", args[1:]))  # the data sub-verbs always exit with their code


def _planned(verb: str) -> Callable[[list[str]], None]:
    def run(args: list[str]) -> None:
        print(f"simulacra {verb}: not built yet ({PLANNED[verb]}); it lands with its own issue.", file=sys.stderr)
        sys.exit(2)

    return run


VERBS: dict[str, Callable[[list[str]], None]] = (
    {v: (lambda args, v=v: _run(v, args)) for v in VERB_TABLE if " " not in v}
    | {"data": _data}
    | {v: _planned(v) for v in PLANNED}
)


class _StdoutLines(logging.Handler):
    """Each log record as a plain line on the current sys.stdout (looked up per line, so tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), flush=True)


def _log_to_stdout() -> logging.Handler:
    """Show the library's INFO notes while a verb runs; the caller removes the handler afterwards, so
    code that imports simulacra as a library stays silent."""
    log = logging.getLogger("simulacra")
    log.setLevel(logging.INFO)
    handler = _StdoutLines()
    log.addHandler(handler)
    return handler


DEBUG_FLAG = "--debug"
DEBUG_ENV = "SIMULACRA_DEBUG"


def _debug(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether to show tracebacks, argv without --debug): --debug anywhere before a ``--``, or SIMULACRA_DEBUG=1."""
    end = argv.index("--") if "--" in argv else len(argv)
    flagged = DEBUG_FLAG in argv[:end]
    rest = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    return flagged or env, rest


def _verb_name(argv: list[str]) -> str:
    """What the error line names: the verb, and for `data` its sub-verb."""
    if argv[0] == "data" and len(argv) > 1 and argv[1] in DATA_SUBVERBS:
        return f"data {argv[1]}"
    return argv[0]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(e: BaseException) -> str:
    """One line for an exception: a SimulacraError's message; an OSError's file and strerror; anything
    else its type and the first line of its message, with the hint that --debug shows where it came from."""
    if isinstance(e, SimulacraError):
        return _one_line(e)
    if isinstance(e, OSError) and e.strerror:
        files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return _one_line(f"{files}: {e.strerror}" if files else e.strerror)
    if isinstance(e, MemoryError):
        what = "out of memory"
    else:
        lines = [line for line in str(e).splitlines() if line.strip()]
        what = f"{type(e).__name__}: {lines[0].strip()}" if lines else type(e).__name__
    return _one_line(f"{what} (run with {DEBUG_FLAG} for the traceback)")


def _linger_in_a_process_group(seconds: float = 2.0) -> None:
    """torchrun stops every process of a group as soon as one exits with an error. Where all of them fail
    together (rank 0 refused the run folder and told the others), each must get its line out before the first
    exit, so a process of a group waits a moment after saying why it stops."""
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        import time

        time.sleep(seconds)


def main(argv: list[str] | None = None) -> None:
    """The command. Every failure is one line on stderr and a non-zero exit (1; tyro's own argument
    errors 2; an interrupt 130); --debug (or SIMULACRA_DEBUG=1) lets an error's traceback through."""
    debug, argv = _debug(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    if argv[0] == "--version":
        from simulacra import __version__

        print(__version__)
        return
    # library code logs (logging.getLogger(__name__)); the command shows those notes as plain lines
    if argv[0] not in VERBS:
        print(f"simulacra: unknown verb {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    verb = _verb_name(argv)
    handler = _log_to_stdout()
    try:
        VERBS[argv[0]](argv[1:])
    except BrokenPipeError:  # `simulacra data info | head`
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"simulacra {verb}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if debug:
            raise
        print(f"simulacra {verb}: error: {describe(e)}", file=sys.stderr, flush=True)
        _linger_in_a_process_group()
        sys.exit(1)
    finally:
        logging.getLogger("simulacra").removeHandler(handler)


if __name__ == "__main__":
    main()
