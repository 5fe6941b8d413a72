"""Ordinary refusals shown as one line in an interactive session.

A plan refusing a bad argument, an axis refusing a target, a force outside the
calibration: at the IPython prompt these print one line (``PlanArgumentError:
count_at_heights: num='3' is a str; expected ...``) instead of bluesky's "Run aborted"
log with its traceback followed by IPython's traceback. Any other error keeps its full
traceback. :func:`install` is called by the profile (``profile/startup``) in IPython
only, never in the queueserver's worker, whose logs keep everything.
"""

from __future__ import annotations

import logging
from typing import Any

from magscope_plans._arguments import PlanRefusal, is_refusal, refusal_line

__all__ = ["RunAbortedRefusalFilter", "install"]


class RunAbortedRefusalFilter(logging.Filter):
    """Drops bluesky's "Run aborted" log record (with its traceback) when the error is an
    ordinary refusal; the prompt shows the refusal's one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and record.getMessage() == "Run aborted" and is_refusal(exc))


def _show(shell: Any, etype, value, tb, tb_offset=None):
    line = refusal_line(value)
    if line is None:  # not a refusal (e.g. a FailedStatus from a camera error)
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)
        return None
    print(line)
    return None


def install(shell: Any) -> None:
    """Show refusals as one line in IPython ``shell``; silence bluesky's "Run aborted"
    traceback for them."""
    from bluesky.utils import FailedStatus

    from magscope_devices._force import NoForceCalibrationError
    from magscope_devices._force_curve import ForceRangeError
    from magscope_devices._motors import LimitError
    from magscope_tracking.zlut import ZLUTMismatchError

    kinds = (
        PlanRefusal, LimitError, ForceRangeError, NoForceCalibrationError, ZLUTMismatchError,
        FailedStatus,
    )
    shell.set_custom_exc(kinds, _show)
    logger = logging.getLogger("bluesky")
    if not any(isinstance(f, RunAbortedRefusalFilter) for f in logger.filters):
        logger.addFilter(RunAbortedRefusalFilter())
