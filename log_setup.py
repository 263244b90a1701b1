"""Logging: every line carries the session and conversation ids of the call it belongs to.

The ids live in context variables; asyncio copies the context into every task a session starts,
so records created in any of its tasks carry them without loggers being passed around.
"""

from __future__ import annotations

import contextvars
import logging
import sys

session_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="-")
conversation_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("conversation_id", default="-")

TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s session=%(session_id)s conversation=%(conversation_id)s %(message)s"
)

_base_factory = logging.getLogRecordFactory()


def _record_with_call_ids(*args, **kwargs) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.session_id = session_id_var.get()
    record.conversation_id = conversation_id_var.get()
    return record


def install_call_context() -> None:
    """Make every log record carry the current call's ids (idempotent)."""
    logging.setLogRecordFactory(_record_with_call_ids)


def configure_logging(level: str, fmt: str, stream=None) -> logging.Handler:
    install_call_context()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The websockets library logs request headers (API keys included) at DEBUG.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return handler
