"""Pacing of bot audio and the model of what the caller heard, driven by a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_backend import Utterance
from playout import Playout

_UTTERANCES: dict[str, Utterance] = {}


def u(key: str) -> Utterance:
    """The same utterance object for the same key: the playout tells items apart by identity."""
    return _UTTERANCES.setdefault(key, Utterance(key))


def run(playout: Playout, until: float, step: float = 0.01, start: float = 0.0):
    """Drive the playout like the writer task does; return (time, frame) pairs."""
    frames = []
    now = start
    while now <= until:
        frame = playout.take(now)
        if frame is not None:
            frames.append((now, frame))
            continue
        wake = playout.next_send_at(now)
        now = max(now + step, wake) if wake is not None else now + step
    return frames


def test_first_frame_goes_at_once_and_carries_at_most_the_lead():
    p = Playout(lead=0.6, frame=0.2, min_interval=0.1)
    p.add(u("i1"), b"\x01" * 8000 * 5, 0.0)
    frame = p.take(0.0)
    assert frame is not None and len(frame) == 4800


def test_audio_is_paced_at_real_time_within_the_lead_and_rate():
    p = Playout(lead=0.6, frame=0.2, min_interval=0.1)
    audio = bytes(range(256)) * 250  # 8 s
    p.add(u("i1"), audio, 0.0)
    frames = run(p, until=10.0)
    assert b"".join(f for _, f in frames) == audio
    sent = 0
    for (t, frame), (t_next, _) in itertools.pairwise(frames):
        sent += len(frame)
        assert sent / 8000 - t <= 0.6 + 1e-9  # never more than the lead ahead of playback
        assert t_next - t >= 0.1 - 1e-9  # at most ten messages a second
    assert len(frames) <= 8 / 0.2 + 2
    assert frames[-1][0] == pytest.approx(8 - 0.6, abs=0.25)


def test_frames_never_exceed_64000_bytes():
    p = Playout(lead=20.0, frame=0.2, min_interval=0.1)
    p.add(u("i1"), b"\x01" * 8000 * 30, 0.0)
    assert max(len(f) for _, f in run(p, until=40.0)) <= 64_000


def test_heard_ms_is_playback_start_plus_elapsed_clamped_to_sent():
    p = Playout(lead=0.6, frame=0.2, min_interval=0.1)
    p.add(u("i1"), b"\x01" * 8000 * 3, 0.0)
    run(p, until=1.0)
    (cut,) = p.interrupt(1.0).cuts
    assert cut.utterance is u("i1")
    assert cut.heard_ms == 1000
    assert 1000 <= cut.sent_ms <= 1600
    assert not p.busy(1.0) and p.queued_bytes == 0


def test_interrupt_when_all_audio_was_sent_but_not_yet_played():
    p = Playout(lead=0.6)
    p.add(u("i1"), b"\x01" * 4000, 0.0)  # 0.5 s, all sent at t=0
    assert len(p.take(0.0)) == 4000
    interruption = p.interrupt(0.3)
    (cut,) = interruption.cuts
    assert (cut.heard_ms, cut.sent_ms, interruption.dropped_bytes) == (300, 500, 0)


def test_nothing_to_interrupt_once_playback_finished():
    p = Playout()
    p.add(u("i1"), b"\x01" * 800, 0.0)
    p.take(0.0)
    assert p.busy(0.05) and not p.busy(0.2)
    assert p.interrupt(0.2) is None


def test_interrupt_reports_every_unfinished_item_and_what_was_heard_of_each():
    p = Playout(lead=0.6)
    p.add(u("i1"), b"\x01" * 1600, 0.0)  # 0.2 s, heard in full
    p.add(u("i2"), b"\x02" * 8000, 0.0)  # being heard
    p.add(u("i3"), b"\x03" * 8000, 0.0)  # queued behind it: never heard
    run(p, until=0.5)
    interruption = p.interrupt(0.5)
    assert [(c.utterance.key, c.heard_ms) for c in interruption.cuts] == [("i2", 300), ("i3", 0)]
    assert interruption.dropped_bytes == 8000 + 8000 - interruption.cuts[0].sent_ms * 8


def test_item_end_says_when_the_caller_will_have_heard_an_item():
    p = Playout(lead=0.6)
    p.add(u("i1"), b"\x01" * 4000, 0.0)
    assert p.item_end(u("i1")) is None  # still queued
    p.take(0.0)
    assert p.item_end(u("i1")) == 0.5
    assert p.item_end(u("other")) == 0.0  # unknown: nothing left to hear


def test_gaps_in_sending_are_not_counted_as_heard():
    p = Playout(lead=0.6)
    p.add(u("i1"), b"\x01" * 800, 0.0)  # 0.1 s, then an underrun
    p.take(0.0)
    p.add(u("i1"), b"\x01" * 800, 1.0)
    p.take(1.0)  # plays 1.0 .. 1.1
    assert p.interrupt(1.05).cuts[0].heard_ms == 150


def test_a_tiny_first_chunk_waits_for_more_rather_than_leaving_a_gap():
    p = Playout(lead=0.6, frame=0.2, min_interval=0.1)
    p.add(u("i1"), b"\x01" * 320, 0.0)  # 40 ms: sent alone, Genesys would run dry at 0.04
    assert p.take(0.0) is None
    assert p.next_send_at(0.0) == pytest.approx(0.1)
    p.add(u("i1"), b"\x01" * 1600, 0.05)
    frame = p.take(0.05)  # enough now to cover the spacing to the next message
    assert frame is not None and len(frame) == 1920


def test_a_tiny_chunk_still_goes_after_one_interval():
    p = Playout(lead=0.6, frame=0.2, min_interval=0.1)
    p.add(u("i1"), b"\x01" * 320, 0.0)
    assert p.take(0.099) is None
    assert len(p.take(0.1)) == 320


def test_hold_delays_sending():
    p = Playout()
    p.add(u("i1"), b"\x01" * 8000, 0.0)
    p.hold(2.0)
    assert p.take(1.0) is None
    assert p.next_send_at(1.0) == 2.0
    assert p.take(2.0) is not None


def test_buffer_is_bounded():
    p = Playout(max_buffered_bytes=1000)
    assert p.add(u("i"), b"\x01" * 900, 0.0)
    assert not p.add(u("i"), b"\x01" * 200, 0.0)
    assert p.queued_bytes == 900


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.5), st.integers(1, 6000)), min_size=1, max_size=15))
def test_any_delta_pattern_keeps_order_lead_and_rate(deltas):
    p = Playout(lead=0.6, frame=0.2, min_interval=0.1)
    now, sent, last_send = 0.0, bytearray(), None
    expected = bytearray()
    for n, (gap, size) in enumerate(deltas):
        deadline = now + gap
        while now < deadline:
            frame = p.take(now)
            if frame:
                assert last_send is None or now - last_send >= 0.1 - 1e-9
                assert p.playout_end - now <= 0.6 + 1e-9
                last_send = now
                sent += frame
            now += 0.01
        chunk = bytes([n % 256]) * size
        expected += chunk
        p.add(u("i"), chunk, now)
    for _t, frame in run(p, until=now + 60, start=now):
        sent += frame
    assert sent == expected
