"""What every command shares: absl's `app.run`, one error handler, and prompt exits.

Every command (`train.py`, `eval.py`, `inpaint.py`, `python -m pconv_jax.<package>.<module>`)
defines its flags with `absl.flags` and starts with `cli.run(main)`. Errors a user can cause (a
bad config value, a missing or unreadable file, an incompatible checkpoint, a non-finite loss, a
bad weight file, a full disk) print one line, `error: <message>`, and exit with status 1;
`--debug` or `PCONV_JAX_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Sequence

from absl import app, flags

_DEBUG = flags.DEFINE_bool("debug", False, "show the full traceback of an error")

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

    A normal interpreter exit can wait forever on threads that libraries left running (tf.data,
    Orbax); after an error nothing is left to finish, so the process ends here.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run(main: Callable[[Sequence[str]], None]) -> None:
    """`absl.app.run(main)` with the error handler above."""
    def guarded(argv: Sequence[str]) -> None:
        try:
            main(argv)
        except USER_ERRORS as err:
            if debug_enabled():
                raise
            print(error_message(err), file=sys.stderr)
            exit_now(EXIT_ERROR)
    app.run(guarded)
