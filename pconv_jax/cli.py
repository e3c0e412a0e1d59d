"""What every command shares: absl's `app.run`, one error handler, and prompt exits.

Every command (`train.py`, `eval.py`, `inpaint.py`, `python -m pconv_jax.<package>.<module>`)
defines its flags with `absl.flags` and starts with `cli.run(main)`. Errors a user can cause (a
bad config value, a missing or unreadable file, an incompatible checkpoint, a non-finite loss, a
bad weight file, a full disk) print one line, `error: <message>`, and exit with status 1;
`--debug` or `PCONV_JAX_DEBUG=1` shows the traceback instead.

`--help` lists the flags the command defines (also those defined in the project's modules, e.g.
`--debug`). The console shows the command's own output and warnings only: the libraries' log
(JAX, Orbax, TensorFlow, grain: INFO lines, TensorFlow's start-up lines, Orbax's notes) is
hidden unless `--verbose` is given; their errors always show.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import traceback
import zipfile
from collections.abc import Callable, Mapping, Sequence

from absl import app, flags

_DEBUG = flags.DEFINE_bool("debug", False, "show the full traceback of an error")
_VERBOSE = flags.DEFINE_bool("verbose", False, "also show the libraries' log (JAX, Orbax, "
                             "TensorFlow, grain)")

# The error types a user's input or machine can cause; anything else is a bug and keeps its
# traceback. OSError covers missing files, permissions and a full disk; ArithmeticError the
# non-finite loss check (FloatingPointError).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, RecursionError,
    ArithmeticError, MemoryError,
)
try:  # safetensors is a dependency, but keep the handler importable without it
    from safetensors import SafetensorError
    USER_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover
    pass

EXIT_ERROR = 1


def debug_enabled() -> bool:
    """True when `--debug` was given or `PCONV_JAX_DEBUG` is set to a non-empty, non-0 value."""
    env = os.environ.get("PCONV_JAX_DEBUG", "")
    return (flags.FLAGS.is_parsed() and _DEBUG.value) or env not in ("", "0")


def error_message(err: BaseException) -> str:
    """The one line printed for `err` (KeyError's repr quotes are dropped)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return f"error: {text}"


def exit_now(status: int) -> None:
    """Flushes the standard streams and exits at once.

    A normal interpreter exit can wait forever on threads that libraries left running (input
    pipelines, Orbax); after an error nothing is left to finish, so the process ends here.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def fail(message: str) -> None:
    """Prints `error: <message>` and exits at once with status 1."""
    print(f"error: {message}", file=sys.stderr)
    exit_now(EXIT_ERROR)


def check_renamed_flags(argv: Sequence[str], renamed: Mapping[str, str]) -> None:
    """ValueError naming the new spelling of a flag in `argv` that `renamed` lists (old -> new),
    e.g. `--method telea` -> 'use --config.eval.method=telea'."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            return
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in renamed:
            if not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                value = argv[i + 1]
            raise ValueError(f"--{name} is now --{renamed[name]}: use "
                             f"--{renamed[name]}={value or '...'}")


def parse_flags(argv: Sequence[str], renamed: Mapping[str, str] | None = None) -> list[str]:
    """absl's flag parsing (`config.parse_flags`: config files and overrides too) with this
    module's error handling (for `app.run(flags_parser=...)`); `renamed`: old flag -> new."""
    from pconv_jax import config as config_lib
    try:
        check_renamed_flags(argv, renamed or {})
        return config_lib.parse_flags(flags.FLAGS, argv)
    except (flags.Error, *USER_ERRORS) as err:
        if "--debug" in argv or debug_enabled():
            raise
        text = error_message(err).removeprefix("error: ").strip()
        fail(text.splitlines()[0] if text else type(err).__name__)


def _list_own_flags_in_help() -> None:
    """Makes every flag the project defines a key flag of the main module (what `--help` lists).

    absl lists only flags defined in the main module: not those a command defines in a library
    module (`inpaint.py` runs `pconv_jax.inference.inpaint`'s flags) nor `--debug`/`--verbose`.
    """
    main_module = sys.argv[0]
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if module == main_module or module.split(".")[0] == "pconv_jax":
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(main_module, flag)


def _library_name(path: str) -> str | None:
    """The installed package a source file belongs to; None for the project and scripts."""
    parts = path.replace(os.sep, "/").split("/")
    for folder in ("site-packages", "dist-packages"):
        if folder in parts[:-1]:
            return parts[parts.index(folder) + 1]
    return None


class _LibraryLogFilter(logging.Filter):
    """Drops the libraries' log records below ERROR (Orbax's) or below WARNING (the others).

    The project's records pass, and clu's: it writes the training's metrics and progress lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        library = _library_name(record.pathname)
        if library in (None, "pconv_jax", "clu") or record.levelno >= logging.ERROR:
            return True
        # Orbax warns about options set on purpose (e.g. "read only" on every restore).
        return record.levelno >= logging.WARNING and not library.startswith("orbax")


def quiet_library_logs() -> None:
    """Hides the libraries' log (see `_LibraryLogFilter`) and TensorFlow's C++ start-up lines."""
    # Read when TensorFlow loads (no command imports it before `main`): INFO lines off, and the
    # oneDNN notice, which TensorFlow prints before its log level applies (TensorFlow only
    # writes event files and reads records here: its oneDNN math kernels do not matter).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    for handler in logging.getLogger().handlers:  # absl's handler: every logger ends there
        if not any(isinstance(f, _LibraryLogFilter) for f in handler.filters):
            handler.addFilter(_LibraryLogFilter())


def run(main: Callable[[Sequence[str]], None], renamed: Mapping[str, str] | None = None
        ) -> None:
    """`absl.app.run(main)` with the error handler above, for flag parsing and `main` alike.

    `renamed`: {old flag: new flag} of the command; an old one is a one-line error naming the
    new spelling.
    """
    def guarded(argv: Sequence[str]) -> None:
        if not _VERBOSE.value:
            quiet_library_logs()
        try:
            main(argv)
        except app.UsageError:
            raise  # absl prints the usage
        except Exception as err:
            if isinstance(err, USER_ERRORS) and not debug_enabled():
                fail(error_message(err).removeprefix("error: "))
            traceback.print_exc()  # a bug (or --debug): the traceback, then a prompt exit too
            exit_now(EXIT_ERROR)
    _list_own_flags_in_help()
    app.run(guarded, flags_parser=lambda argv: parse_flags(argv, renamed))
