"""The sans-I/O AudioHook core: envelopes, sequencing, media, probes, durations, builders."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiohook_protocol import (
    NULL_UUID,
    ProtocolError,
    ServerProtocol,
    State,
    format_duration,
    parse_duration,
    select_media,
)

SID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG = "d7934305-0972-4844-938e-9060eef73d05"
MONO = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
STEREO_REVERSED = {
    "type": "audio",
    "format": "PCMU",
    "channels": ["internal", "external"],
    "rate": 8000,
}


def message(type_: str, seq: int, parameters=None, **extra) -> str:
    msg = {
        "version": "2",
        "id": SID,
        "type": type_,
        "seq": seq,
        "serverseq": 0,
        "position": "PT0S",
        "parameters": {} if parameters is None else parameters,
    }
    msg.update(extra)
    return json.dumps(msg)


def open_params(media=None, conversation="54d7a966-7c88-4e00-96cb-a9d0875bfbef", **extra):
    params = {
        "organizationId": ORG,
        "conversationId": conversation,
        "participant": {
            "id": "9b2a3f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "ani": "+1",
            "aniName": "",
            "dnis": "+2",
        },
        "media": [MONO] if media is None else media,
        "inputVariables": {"OPENAI_VOICE": "marin"},
    }
    params.update(extra)
    return params


def opened_protocol(media=None) -> ServerProtocol:
    p = ServerProtocol(SID)
    p.receive_text(message("open", 1, open_params(media)))
    p.opened()
    return p


def test_open_selects_mono_external_and_reads_input_variables():
    p = ServerProtocol(SID)
    msg = p.receive_text(message("open", 1, open_params([STEREO, MONO])))
    assert msg.type == "open"
    assert msg.open.media.offer == MONO
    assert msg.open.input_variables == {"OPENAI_VOICE": "marin"}
    assert msg.open.probe is False
    opened = json.loads(p.opened())
    assert opened == {
        "version": "2",
        "type": "opened",
        "seq": 1,
        "clientseq": 1,
        "id": SID,
        "parameters": {"media": [MONO]},
    }
    assert p.state is State.OPEN


@pytest.mark.parametrize(
    ("offer", "index"), [([STEREO], 0), ([STEREO_REVERSED], 1), ([{"x": 1}, STEREO_REVERSED], 1)]
)
def test_stereo_offer_is_accepted_and_external_channel_is_deinterleaved(offer, index):
    p = opened_protocol(offer)
    assert p.media.channels == 2 and p.media.external_index == index
    frame = bytes([10, 20, 11, 21, 12, 22])
    expected = bytes([10, 11, 12]) if index == 0 else bytes([20, 21, 22])
    assert p.receive_audio(frame) == expected


@pytest.mark.parametrize(
    "offer",
    [
        [],
        [{"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}],
        [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 16000}],
        [{"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}],
        [{"type": "audio", "format": "PCMU", "channels": ["external", "external"], "rate": 8000}],
    ],
)
def test_unsupported_media_is_a_protocol_error(offer):
    p = ServerProtocol(SID)
    with pytest.raises(ProtocolError, match="no supported media"):
        p.receive_text(message("open", 1, open_params(offer)))


def test_select_media_echoes_the_offer_unchanged():
    offer = dict(MONO, extra="kept")
    assert select_media([offer]).offer is offer


@pytest.mark.parametrize("field", ["conversation", "participant"])
def test_probe_is_detected_from_null_conversation_or_participant(field):
    params = open_params()
    if field == "conversation":
        params["conversationId"] = NULL_UUID
    else:
        params["participant"]["id"] = NULL_UUID
    p = ServerProtocol(SID)
    assert p.receive_text(message("open", 1, params)).open.probe is True


def test_probe_exchange_builds_well_formed_closed():
    p = ServerProtocol(SID)
    p.receive_text(message("open", 1, open_params(conversation=NULL_UUID)))
    p.opened()
    assert p.receive_text(message("close", 2, {"reason": "end"}, serverseq=1)).type == "close"
    assert json.loads(p.closed()) == {
        "version": "2",
        "type": "closed",
        "seq": 2,
        "clientseq": 2,
        "id": SID,
        "parameters": {},
    }


@pytest.mark.parametrize(
    ("text", "info"),
    [
        ("x" * 65_536, "message too large"),
        ("{not json", "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        (message("open", 1, open_params(), version="1"), "unsupported version"),
        (
            message("open", 1, open_params(), id="7e1a0f00-0000-4000-8000-000000000000"),
            "id does not match",
        ),
        (message("open", 2, open_params()), "invalid seq"),
        (message("open", True, open_params()), "invalid seq"),
        (message("open", 1, open_params(), serverseq=1), "invalid serverseq"),
        (message("open", 1, []), "parameters must be an object"),
        (message("open", 1, open_params(), position="1.5"), "invalid position"),
        (message("frobnicate", 1), "unknown message type"),
        (message("dtmf", 1, {"digit": "1"}), "expected open"),
        (message("open", 1, open_params(inputVariables=[1])), "inputVariables"),
        (message("open", 1, open_params(organizationId="nope")), "organizationId"),
    ],
)
def test_envelope_violations_raise_protocol_error_with_short_info(text, info):
    p = ServerProtocol(SID)
    with pytest.raises(ProtocolError) as excinfo:
        p.receive_text(text)
    assert info in excinfo.value.info
    assert len(excinfo.value.info) < 100


def test_missing_serverseq_is_read_as_zero_and_unknown_fields_are_ignored():
    p = ServerProtocol(SID)
    raw = json.loads(message("open", 1, open_params(), surprise={"a": 1}))
    del raw["serverseq"]
    assert p.receive_text(json.dumps(raw)).type == "open"


def test_seq_must_increase_by_one_and_serverseq_not_exceed_what_was_sent():
    p = opened_protocol()
    p.receive_text(message("ping", 2, serverseq=1))
    with pytest.raises(ProtocolError, match="invalid seq"):
        p.receive_text(message("ping", 2, serverseq=1))
    p = opened_protocol()
    with pytest.raises(ProtocolError, match="invalid serverseq"):
        p.receive_text(message("ping", 2, serverseq=2))


@pytest.mark.parametrize(
    ("type_", "params"),
    [
        ("dtmf", {"digit": "12"}),
        ("dtmf", {}),
        ("error", {"code": "429", "message": "x"}),
        ("error", {"code": 42, "message": "x"}),
        ("error", {"code": 429, "message": "x", "retryAfter": "5s"}),
        ("resumed", {"start": "PT1S"}),
        ("discarded", {"start": "PT1S", "discarded": "1e-5"}),
        ("ping", {"rtt": "PT-1S"}),
        ("open", open_params()),
    ],
)
def test_malformed_parameters_are_protocol_errors(type_, params):
    p = opened_protocol()
    with pytest.raises(ProtocolError):
        p.receive_text(message(type_, 2, params))


def test_after_a_violation_close_is_still_recognised_whatever_its_seq():
    p = opened_protocol()
    with pytest.raises(ProtocolError):
        p.receive_text(message("ping", 7))
    p.mark_violation()
    p.disconnect("error", "invalid seq", {})
    assert p.receive_text(message("ping", 9)).type == "ping"
    assert p.receive_text(message("bogus", 10)).type == "ignored"
    assert p.receive_text(message("close", 11, {"reason": "disconnect"})).type == "close"
    closed = json.loads(p.closed())
    assert closed["clientseq"] == 11 and closed["seq"] == 3


def test_server_messages_have_gap_free_seq_and_always_parameters():
    p = opened_protocol()
    p.receive_text(message("ping", 2, serverseq=1))
    built = [
        p.pong(2),
        p.pause(),
        p.resume(),
        p.updated(),
        p.event([{"type": "barge_in", "data": {}}]),
    ]
    built.append(p.disconnect("completed", "done", {"A": "1", "B": 2}))
    built.append(p.closed())
    msgs = [json.loads(b) for b in built]
    assert [m["seq"] for m in msgs] == list(range(2, 9))
    assert all(isinstance(m["parameters"], dict) and m["version"] == "2" and m["id"] == SID for m in msgs)
    assert msgs[0]["clientseq"] == 2
    assert msgs[5]["parameters"] == {
        "reason": "completed",
        "info": "done",
        "outputVariables": {"A": "1", "B": "2"},
    }


def test_pong_carries_the_ping_seq_even_when_later_messages_were_read():
    p = opened_protocol()
    p.receive_text(message("ping", 2))
    p.receive_text(message("dtmf", 3, {"digit": "5"}))
    assert json.loads(p.pong(2))["clientseq"] == 2


def test_disconnect_rejects_unknown_reasons_and_keeps_under_64000_bytes():
    p = opened_protocol()
    with pytest.raises(ValueError):
        p.disconnect("bye")
    big = p.disconnect("completed", None, {"CONVERSATION_SUMMARY": "x" * 200_000, "B": "y"})
    assert len(big.encode()) < 64_000
    assert json.loads(big)["parameters"]["outputVariables"]["B"] == "y"


def test_audio_rules():
    p = ServerProtocol(SID)
    with pytest.raises(ProtocolError, match="audio before open"):
        p.receive_audio(b"\xff" * 160)
    p = opened_protocol()
    assert p.receive_audio(b"") is None
    with pytest.raises(ProtocolError, match="too large"):
        p.receive_audio(b"\x00" * 70_000)
    p.receive_text(message("paused", 2))
    assert p.receive_audio(b"\x01" * 160) is None
    p.receive_text(message("resumed", 3, {"start": "PT0S", "discarded": "PT2.5S"}))
    assert p.receive_audio(b"\x01" * 160) == b"\x01" * 160
    assert p.position == pytest.approx(0.02 + 2.5)


def test_audio_after_disconnect_is_ignored():
    p = opened_protocol()
    p.disconnect("completed")
    assert p.receive_audio(b"\x01" * 160) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "PT0S"),
        (1.2, "PT1.2S"),
        (0.003064082, "PT0.003064082S"),
        (1e-05, "PT0.00001S"),
        (3600, "PT3600S"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_durations_never_use_exponent_and_round_trip(seconds):
    text = format_duration(seconds)
    assert re.fullmatch(r"PT(\d*\.)?\d+S", text), text
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("text", ["PT", "P1S", "PT1M", "PT1.5", "PT-1S", "PT1e-5S", 5, None])
def test_parse_duration_rejects_other_forms(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.text(max_size=300))
def test_any_text_either_parses_or_raises_protocol_error(text):
    p = ServerProtocol(SID)
    try:
        p.receive_text(text)
    except ProtocolError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "version": st.sampled_from(["2", "1", 2]),
            "id": st.sampled_from([SID, SID.upper(), "x"]),
            "type": st.sampled_from(["open", "ping", "close", "dtmf", "error", "paused", "resumed", "x"]),
            "seq": st.integers(-1, 3) | st.booleans(),
            "serverseq": st.integers(-1, 2),
            "parameters": json_values,
            "position": st.sampled_from(["PT0S", "PT1.5S", "x"]),
        },
    )
)
def test_mutated_envelopes_never_raise_anything_but_protocol_error(msg):
    p = opened_protocol()
    try:
        p.receive_text(json.dumps(msg))
    except ProtocolError:
        pass
