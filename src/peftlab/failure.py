"""What a user sees when something fails: one line, with the traceback kept in a file.

A user mistake is a PeftlabError and says what to fix. Anything else (a library error on
an unusual model, a full disk) is still one line on stderr: what failed, how to go on,
and where the traceback was written (the run directory's error.log when there is one);
`--debug` shows the traceback itself.
"""

from __future__ import annotations

import errno
import os
import tempfile
import traceback
from datetime import datetime
from pathlib import Path

ERROR_LOG = "error.log"


def write_traceback(exc: BaseException, folder: Path | None = None) -> Path:
    """Write the exception's traceback to folder/error.log (or a temporary file)."""
    text = "".join(traceback.format_exception(exc))
    stamp = f"{datetime.now():%Y-%m-%d %H:%M:%S}"
    if folder is not None:
        try:
            path = Path(folder) / ERROR_LOG
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"--- {stamp}\n{text}")
            return path
        except OSError:
            pass  # the run directory itself may be what failed: fall back to a temp file
    fd, name = tempfile.mkstemp(prefix="peftlab-error-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"--- {stamp}\n{text}")
    return Path(name)


def describe_os_error(exc: OSError) -> str:
    """An operating-system error as what happened to which file and what to do."""
    where = f" '{exc.filename}'" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        fix = "free some space (or choose another --out) and rerun; a run continues with --resume"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to (--out)"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file stands where a folder is needed; choose another path"
    else:
        fix = "check the path and rerun"
    return f"cannot use{where}: {reason}; {fix}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def traceback_note(exc: BaseException) -> Path | None:
    """The error.log path run() attached to the exception, if any."""
    for note in getattr(exc, "__notes__", []):
        if note.startswith("traceback: "):
            return Path(note.removeprefix("traceback: "))
    return None


def one_line(exc: BaseException) -> str:
    """The line for an unexpected error; its traceback goes to a file first."""
    log = traceback_note(exc) or write_traceback(exc)
    if isinstance(exc, OSError):
        what = describe_os_error(exc)
    else:
        what = (
            f"unexpected {type(exc).__name__}: {first_line(exc)}. This model, data or setting "
            "may be unsupported; please report it with the traceback"
        )
    return f"{what} (traceback: {log}; --debug shows it here)"
