"""How a call ends and what Architect gets back: the call-control tools, the outcome, the output
variables, the conversation summary, keypad digits and the call's time limits. No I/O here; the
bridge drives it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from instructions import END_ESCALATION, END_SUCCESS
from model_backend import ToolSpec, Usage

MAX_SUMMARY_CHARS = 4000
MAX_VARIABLE_CHARS = 1000
DTMF_PAUSE_SECONDS = 2.0

CALL_CONTROL_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        END_SUCCESS,
        "End the call because the caller's request has been fully handled.",
        {
            "type": "object",
            "properties": {
                "summary": {"type": "string", "description": "One sentence: what was done for the caller."}
            },
            "required": ["summary"],
        },
    ),
    ToolSpec(
        END_ESCALATION,
        "End the call and hand the caller to a person (they asked, are upset, or you cannot help).",
        {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why a person is needed."}},
            "required": ["reason"],
        },
    ),
)
CALL_CONTROL_NAMES = frozenset({END_SUCCESS, END_ESCALATION})

FAREWELL = "The call is ending now. Say a short, warm goodbye to the caller in one sentence."
TRANSFER_FAREWELL = (
    "The caller is being transferred to a person now. In one sentence, tell them so and thank them."
)
SUMMARY_INSTRUCTIONS = (
    "Summarize the phone conversation so far for the contact-center records. Reply with one JSON "
    'object only, with the keys "topics" (array of strings), "decisions" (array of strings), '
    '"action_items" (array of strings) and "sentiment" ("positive", "neutral" or "negative").'
)


@dataclass(frozen=True)
class Outcome:
    """Why the call ends, as Architect will see it."""

    escalate: bool = False
    reason: str = ""  # ESCALATION_REASON
    summary: str = ""  # COMPLETION_SUMMARY
    farewell: str = FAREWELL


def outcome_from_tool(name: str, arguments: dict[str, Any]) -> Outcome:
    if name == END_ESCALATION:
        reason = str(arguments.get("reason") or "the caller needs a person")
        return Outcome(escalate=True, reason=reason[:MAX_VARIABLE_CHARS], farewell=TRANSFER_FAREWELL)
    return Outcome(summary=str(arguments.get("summary") or "")[:MAX_VARIABLE_CHARS])


def limit_outcome(reason: str) -> Outcome:
    return Outcome(
        summary=f"call ended: {reason}",
        farewell=f"The call has to end now ({reason}). Tell the caller so briefly and say goodbye.",
    )


def parse_arguments(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def summary_json(text: str) -> str:
    """The model's summary as a JSON object text; free text is wrapped in one."""
    stripped = re.sub(r"^```(?:json)?\s*|\s*```$", "", (text or "").strip())
    try:
        value = json.loads(stripped)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        value = {"summary": stripped}
    encoded = json.dumps(value, ensure_ascii=False)
    if len(encoded) > MAX_SUMMARY_CHARS:
        encoded = json.dumps({"summary": stripped[: MAX_SUMMARY_CHARS // 2]}, ensure_ascii=False)
    return encoded


def fallback_summary(note: str) -> str:
    return json.dumps(
        {"topics": [], "decisions": [], "action_items": [], "sentiment": "unknown", "note": note}
    )


def output_variables(
    *,
    usage: Usage,
    duration: float,
    outcome: Outcome | None,
    summary: str | None,
    failure: str | None = None,
    vendor: str = "",
    model: str = "",
) -> dict[str, str]:
    """All fourteen output variables, always strings."""
    variables = usage.as_variables()
    escalate = failure is not None or (outcome is not None and outcome.escalate)
    reason = outcome.reason if outcome is not None else ""
    if failure is not None and not reason:
        reason = f"technical problem: {failure}"
    variables.update(
        CONVERSATION_SUMMARY=summary or fallback_summary("summary unavailable"),
        CONVERSATION_DURATION=str(max(0, round(duration))),
        ESCALATION_REQUIRED="true" if escalate else "false",
        ESCALATION_REASON=reason,
        COMPLETION_SUMMARY=outcome.summary if outcome is not None else "",
        AI_VENDOR=vendor,
        AI_MODEL=model,
    )
    return variables


def empty_output_variables(failure: str | None = None) -> dict[str, str]:
    """For a `disconnect` before any call existed (a protocol error right after the upgrade)."""
    return output_variables(usage=Usage(), duration=0, outcome=None, summary=None, failure=failure)


class DtmfCollector:
    """Keypad digits, collected until `#` or a pause."""

    def __init__(self, pause: float = DTMF_PAUSE_SECONDS) -> None:
        self.pause = pause
        self.digits = ""
        self.last_at = 0.0

    def press(self, digit: str, now: float) -> str | None:
        """Digits to hand to the model now (on `#`), else None."""
        self.last_at = now
        if digit == "#":
            return self.flush()
        self.digits += digit
        return None

    def due(self, now: float) -> str | None:
        """Digits to hand over because the caller paused."""
        if self.digits and now - self.last_at >= self.pause:
            return self.flush()
        return None

    def flush(self) -> str | None:
        digits, self.digits = self.digits, ""
        return digits or None


def dtmf_message(digits: str) -> str:
    """Digits spaced out, so that a voice model reads them one by one."""
    return f"The caller entered {' '.join(digits)} on the keypad."


class CallLimits:
    """`MAX_CALL_DURATION_SECONDS` and `IDLE_TIMEOUT_SECONDS` (no caller speech and no bot audio)."""

    def __init__(self, started: float, max_duration: float, idle_timeout: float) -> None:
        self.started = started
        self.max_duration = max_duration
        self.idle_timeout = idle_timeout
        self.last_activity = started

    def activity(self, now: float) -> None:
        self.last_activity = max(self.last_activity, now)

    def due(self, now: float) -> str | None:
        if now - self.started >= self.max_duration:
            return f"the maximum call duration of {self.max_duration:g} s was reached"
        if now - self.last_activity >= self.idle_timeout:
            return f"no activity for {self.idle_timeout:g} s"
        return None

    def next_check(self) -> float:
        return min(self.started + self.max_duration, self.last_activity + self.idle_timeout)
