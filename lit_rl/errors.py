"""Which exceptions report bad input (a user's mistake, shown as one sentence) and which
report a bug (shown with its traceback).

lit_rl checks its input where it can know it and raises ``ValueError``, ``TypeError``,
``KeyError`` or ``FileNotFoundError`` with a sentence that names the value and the fix; those
raises are recognised by where they come from, so no check needs a special class.
"""

import linecache
from pathlib import Path

INPUT_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, FloatingPointError)
_PACKAGE = Path(__file__).parent


def is_input_error(error: BaseException) -> bool:
    """Whether ``error`` reports bad input rather than a bug: a missing file, jsonargparse's
    report of a class that refused its arguments, or an error lit_rl's own code raised on
    purpose (the innermost frame is a ``raise`` statement in lit_rl)."""
    if not isinstance(error, INPUT_ERRORS):
        return False
    if isinstance(error, FileNotFoundError):  # names the file, whoever raised it
        return True
    if "Does not validate against any of the Union subtypes" in str(error):
        return True
    frame = _innermost_frame(error)
    if frame is None:
        return False
    filename, line = frame
    return Path(filename).is_relative_to(_PACKAGE) and line.startswith("raise")


def _innermost_frame(error: BaseException) -> tuple[str, str] | None:
    traceback = error.__traceback__
    if traceback is None:
        return None
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    code = traceback.tb_frame.f_code
    return code.co_filename, linecache.getline(code.co_filename, traceback.tb_lineno).strip()
