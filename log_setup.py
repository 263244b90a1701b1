"""Logging: every line carries the session and conversation ids, and no secret ever gets out.

The ids live in context variables; asyncio copies the context into every task a session starts,
so records created in any of its tasks carry them without loggers being passed around.

`SecretMasker` sits in the formatter, after the whole line (exception text included) is built,
so no logger, level or library can print a configured secret: API keys, client secrets, the
OpenAI key, MCP credentials, and the OAuth tokens learned at run time.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import datetime
import json
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable

session_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="-")
conversation_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("conversation_id", default="-")

TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s session=%(session_id)s conversation=%(conversation_id)s %(message)s"
)
MASK = "***"
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words
MAX_RUNTIME_SECRETS = 16  # OAuth tokens: the last few are enough

_base_factory = logging.getLogRecordFactory()


def _record_with_call_ids(*args, **kwargs) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.session_id = session_id_var.get()
    record.conversation_id = conversation_id_var.get()
    return record


def install_call_context() -> None:
    """Make every log record carry the current call's ids (idempotent)."""
    logging.setLogRecordFactory(_record_with_call_ids)


class SecretMasker:
    """Replaces every known secret in a finished log line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._static: set[str] = set()
        self._runtime: deque[str] = deque(maxlen=MAX_RUNTIME_SECRETS)
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self._static.update(_forms(secret))
        self._compile()

    def add(self, secret: str) -> None:
        """A secret learned at run time (an OAuth token)."""
        if len(secret) >= MIN_SECRET_CHARS and secret not in self._runtime:
            self._runtime.append(secret)
            self._compile()

    def _compile(self) -> None:
        values = sorted(
            {s for s in self._static | set(self._runtime) if len(s) >= MIN_SECRET_CHARS},
            key=len,
            reverse=True,
        )
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def mask(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text


def _forms(secret: str) -> set[str]:
    """The secret, and its base64-decoded text when it is printable (client secrets are base64)."""
    forms = {secret}
    try:
        decoded = base64.b64decode(secret, validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return forms
    if decoded.isprintable():
        forms.add(decoded)
    return forms


class RefusalLog:
    """One WARNING per reason every `interval` seconds, saying how many were left unlogged: a
    flood of bad requests must not flood the log. `flush()`, called periodically, tells the count
    a flood left behind once its interval is over, even if no refusal of that reason follows."""

    def __init__(
        self, logger: logging.Logger, interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock  # reasons are a small fixed set: the two maps stay small
        self._last: dict[str, float] = {}
        # reason -> (how many were held back, the latest of them: message and arguments)
        self._quiet: dict[str, tuple[int, str, tuple[object, ...]]] = {}

    def warning(self, reason: str, message: str, *args: object) -> None:
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            held = self._quiet.get(reason, (0,))[0]
            self._quiet[reason] = (held + 1, message, args)
            return
        held = self._quiet.pop(reason, (0,))[0]
        self._log(reason, now, held, message, args)

    def flush(self) -> None:
        """Log, for every reason whose interval is over, the latest refusal held back and how
        many more there were."""
        now = self.clock()
        for reason, (held, message, args) in list(self._quiet.items()):
            if now - self._last[reason] >= self.interval:
                del self._quiet[reason]
                self._log(reason, now, held - 1, message, args)

    def _log(self, reason: str, now: float, more: int, message: str, args: tuple[object, ...]) -> None:
        last = self._last.get(reason)
        self._last[reason] = now
        if more:
            message += " (and %d more in the last %.0f s)"
            args = (*args, more, now - last if last is not None else self.interval)
        self.logger.warning(message, *args)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "session_id": getattr(record, "session_id", "-"),
            "conversation_id": getattr(record, "conversation_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class MaskingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter, masker: SecretMasker) -> None:
        super().__init__()
        self.inner = inner
        self.masker = masker

    def format(self, record: logging.LogRecord) -> str:
        return self.masker.mask(self.inner.format(record))


def configure_logging(
    level: str, fmt: str, masker: SecretMasker | None = None, stream=None
) -> logging.Handler:
    install_call_context()
    handler = logging.StreamHandler(stream or sys.stderr)
    inner = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(MaskingFormatter(inner, masker or SecretMasker()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The websockets library logs request headers (API keys included) at DEBUG: masked anyway,
    # and kept quiet.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return handler
