"""What a simulated model says, shared by every model simulator so that one scenario can be
played against each backend: scripted answers in order, and fixed ones for the connector's own
requests (greeting, holding phrase, farewell, summary).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Turn:
    """One scripted answer: speech, one or more function calls, an MCP call, or an MCP approval
    request."""

    say: str | None = None
    seconds: float | None = None  # audio length; by default from the text (about 14 characters/s)
    call: str | None = None
    arguments: dict[str, Any] | None = None
    calls: list[tuple[str, dict[str, Any]]] | None = None  # several function calls in one answer
    more: list[Turn] | None = None  # further spoken items of the same answer, after this one
    mcp: dict[str, Any] | None = None  # {"server_label", "name", "arguments", "output"|"error"}
    approval: dict[str, Any] | None = None  # {"server_label", "name", "arguments"}

    def audio_seconds(self) -> float:
        if self.seconds is not None:
            return self.seconds
        return max(0.6, len(self.say or "") / 14)

    def function_calls(self) -> list[tuple[str, dict[str, Any]]]:
        """The (name, arguments) of every function call this answer makes, in order."""
        if self.calls:
            return list(self.calls)
        return [(self.call, self.arguments or {})] if self.call else []


DEFAULT_SUMMARY = {
    "topics": ["simulated call"],
    "decisions": [],
    "action_items": [],
    "sentiment": "neutral",
}


@dataclass
class Script:
    """Scripted behaviour: answers in order for ordinary turns, fixed ones for the connector's own."""

    turns: list[Turn] = field(default_factory=list)
    default: Turn = field(default_factory=lambda: Turn(say="Sure, I can help with that."))
    farewell: Turn = field(default_factory=lambda: Turn(say="Thank you for calling. Goodbye!"))
    filler: Turn = field(default_factory=lambda: Turn(say="One moment, please."))
    first: Turn | None = None  # every session's first ordinary answer (before `turns`)
    summary_text: str = json.dumps(DEFAULT_SUMMARY)
    summary_delay: float = 0.0
    caller_transcripts: list[str] = field(default_factory=list)

    def answer(self, purpose: str | None, instructions: str | None, first: bool = False) -> Turn:
        if purpose == "greeting":
            quoted = re.findall(r'"([^"]+)"', instructions or "")
            return Turn(say=quoted[-1] if quoted else "Hello! How can I help you today?")
        if purpose in ("farewell", "filler"):
            return self.farewell if purpose == "farewell" else self.filler
        if first and self.first is not None:
            return self.first
        return self.turns.pop(0) if self.turns else self.default
