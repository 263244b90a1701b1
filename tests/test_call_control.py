"""Call control without I/O: outcomes, output variables, summaries, keypad digits, limits."""

from __future__ import annotations

import json

import pytest

from call_control import (
    CALL_CONTROL_TOOLS,
    CallLimits,
    DtmfCollector,
    empty_output_variables,
    fallback_summary,
    limit_outcome,
    outcome_from_tool,
    output_variables,
    parse_arguments,
    summary_json,
)
from model_backend import Usage
from simulators.realtime_simulator import RealtimeValidator

ALL_FOURTEEN = {
    "CONVERSATION_SUMMARY",
    "CONVERSATION_DURATION",
    "TOTAL_INPUT_TEXT_TOKENS",
    "TOTAL_INPUT_CACHED_TEXT_TOKENS",
    "TOTAL_INPUT_AUDIO_TOKENS",
    "TOTAL_INPUT_CACHED_AUDIO_TOKENS",
    "TOTAL_OUTPUT_TEXT_TOKENS",
    "TOTAL_OUTPUT_AUDIO_TOKENS",
    "ESCALATION_REQUIRED",
    "ESCALATION_REASON",
    "COMPLETION_SUMMARY",
    "TOTAL_BILLED_SECONDS",
    "AI_VENDOR",
    "AI_MODEL",
}


def test_tool_definitions_are_valid_realtime_tools():
    tools = [
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
        for t in CALL_CONTROL_TOOLS
    ]
    event = {"type": "session.update", "session": {"type": "realtime", "tools": tools}}
    assert RealtimeValidator().problems(event) == []


def test_outcomes():
    success = outcome_from_tool("end_conversation_successfully", {"summary": "Order tracked."})
    assert (success.escalate, success.summary, success.reason) == (False, "Order tracked.", "")
    escalate = outcome_from_tool("end_conversation_with_escalation", {"reason": "wants a person"})
    assert (escalate.escalate, escalate.reason) == (True, "wants a person")
    assert "transferred" in escalate.farewell
    assert outcome_from_tool("end_conversation_with_escalation", {}).reason


@pytest.mark.parametrize(
    ("raw", "expected"), [('{"a": 1}', {"a": 1}), ("[1]", {}), ("not json", {}), ("", {})]
)
def test_parse_arguments(raw, expected):
    assert parse_arguments(raw) == expected


def test_output_variables_are_all_fourteen_strings_on_every_path():
    usage = Usage(input_text=5, output_audio=7)
    for variables in (
        output_variables(
            usage=usage,
            duration=12.6,
            outcome=outcome_from_tool("end_conversation_successfully", {"summary": "ok"}),
            summary='{"topics": []}',
        ),
        output_variables(usage=usage, duration=3, outcome=None, summary=None, failure="OpenAI unreachable"),
        empty_output_variables(),
    ):
        assert set(variables) == ALL_FOURTEEN
        assert all(isinstance(v, str) for v in variables.values())
        assert isinstance(json.loads(variables["CONVERSATION_SUMMARY"]), dict)
    success = output_variables(
        usage=usage,
        duration=12.6,
        outcome=outcome_from_tool("end_conversation_successfully", {"summary": "ok"}),
        summary=None,
    )
    assert success["CONVERSATION_DURATION"] == "13" and success["ESCALATION_REQUIRED"] == "false"
    assert success["TOTAL_INPUT_TEXT_TOKENS"] == "5" and success["TOTAL_OUTPUT_AUDIO_TOKENS"] == "7"
    failed = output_variables(
        usage=usage, duration=3, outcome=None, summary=None, failure="OpenAI unreachable"
    )
    assert (
        failed["ESCALATION_REQUIRED"] == "true"
        and failed["ESCALATION_REASON"] == "technical problem: OpenAI unreachable"
    )
    limited = output_variables(
        usage=usage, duration=3, outcome=limit_outcome("no activity for 120 s"), summary=None
    )
    assert limited["COMPLETION_SUMMARY"] == "call ended: no activity for 120 s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"topics": ["billing"], "sentiment": "neutral"}', {"topics": ["billing"], "sentiment": "neutral"}),
        ('```json\n{"topics": []}\n```', {"topics": []}),
        ("The caller asked about billing.", {"summary": "The caller asked about billing."}),
        ("[1, 2]", {"summary": "[1, 2]"}),
    ],
)
def test_summary_is_always_a_json_object(text, expected):
    assert json.loads(summary_json(text)) == expected


def test_summary_is_capped():
    assert len(summary_json("x" * 50_000)) <= 4000
    assert json.loads(fallback_summary("summary unavailable"))["note"] == "summary unavailable"


def test_dtmf_collects_until_pound_or_a_pause():
    dtmf = DtmfCollector(pause=2.0)
    assert dtmf.press("1", 0.0) is None
    assert dtmf.press("2", 0.5) is None
    assert dtmf.due(2.4) is None
    assert dtmf.press("#", 2.6) == "12"
    assert dtmf.press("#", 2.7) is None  # nothing collected
    dtmf.press("9", 3.0)
    assert dtmf.due(4.9) is None
    assert dtmf.due(5.0) == "9"
    assert dtmf.digits == ""


def test_limits_with_a_fake_clock():
    limits = CallLimits(started=100.0, max_duration=60.0, idle_timeout=10.0)
    assert limits.due(105.0) is None
    assert limits.next_check() == 110.0
    limits.activity(108.0)
    assert limits.due(117.9) is None
    assert limits.due(118.0) == "no activity for 10 s"
    for t in range(118, 160, 5):
        limits.activity(float(t))
    assert limits.due(160.0) == "the maximum call duration of 60 s was reached"
