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
from collections.abc import Callable, Sequence

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


def _flag_error_text(err: BaseException, argv: Sequence[str]) -> str:
    """One line for an error raised while absl parses the flags (config files included)."""
    from pconv_jax import config as config_lib
    if isinstance(err, KeyError):  # config_flags: an override of a key the config lacks
        overrides = [a.split(".", 1)[1] for a in argv
                     if a.startswith("--") and "." in a.split("=", 1)[0]]
        return config_lib.unknown_key_message(err, overrides)
    text = str(err)
    if "Error whilst parsing config file" in text:  # config_flags wraps get_config's error
        flag = text.split(":", 1)[0]
        last = [line for line in text.splitlines() if line.strip()][-1]
        return f"{flag}: {last.split(': ', 1)[-1]}"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _load_config_flags() -> None:
    """Loads every config-file flag now, so that a missing or broken file fails at parse time."""
    from ml_collections import config_flags
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if not config_flags.config_flags.is_config_flag(flag) or flag.value is None:
            continue
        try:
            flag.value.keys()  # a config that failed to load raises on any access
        except OSError as err:
            path = config_flags.get_config_filename(flag)
            reason = ("does not exist" if not os.path.isfile(path) else
                      f"cannot be loaded: {str(err.__cause__ or err).splitlines()[-1].strip()}")
            raise OSError(f"--{name}: config file {path!r} {reason}") from err


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing with this module's error handling (for `app.run(flags_parser=...)`)."""
    try:
        try:
            rest = flags.FLAGS(argv)
        except AttributeError as err:  # config_flags: an override of a key the config lacks
            raise KeyError(err.args[0] if err.args else str(err)) from err
        _load_config_flags()
        return rest
    except (flags.Error, *USER_ERRORS) as err:
        if "--debug" in argv or debug_enabled():
            raise
        fail(_flag_error_text(err, argv))


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


def run(main: Callable[[Sequence[str]], None]) -> None:
    """`absl.app.run(main)` with the error handler above, for flag parsing and `main` alike."""
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
    app.run(guarded, flags_parser=parse_flags)
