"""Pacing of bot audio towards Genesys, and a model of what the caller has heard. No I/O.

Genesys plays the audio we send at real time from its own buffer, so we send just ahead of
playback: at most `lead` seconds ahead, in frames of about `frame` seconds, at most one frame every
`min_interval` seconds. Every frame's playback interval is recorded per conversation item, which
tells us, at a barge-in, how many milliseconds of that item the caller actually heard.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from model_backend import Utterance

BYTES_PER_SECOND = 8000  # PCMU, 8 kHz, mono


@dataclass
class _Item:
    utterance: Utterance
    queued: bytearray = field(default_factory=bytearray)
    # Playback intervals (start, seconds) of what was sent, in clock time.
    segments: list[tuple[float, float]] = field(default_factory=list)
    sent_bytes: int = 0

    def played_seconds(self, now: float) -> float:
        return sum(min(max(now - start, 0.0), length) for start, length in self.segments)

    def finished(self, now: float) -> bool:
        if self.queued:
            return False
        return not self.segments or now >= self.segments[-1][0] + self.segments[-1][1]


@dataclass(frozen=True)
class Cut:
    """One utterance a barge-in cut, and how much of it the caller heard (0: none of it)."""

    utterance: Utterance
    heard_ms: int
    sent_ms: int


@dataclass(frozen=True)
class Interruption:
    """What a barge-in cut: every item the caller had not finished hearing, in playback order."""

    cuts: tuple[Cut, ...]
    dropped_bytes: int


@dataclass
class Playout:
    lead: float = 0.6
    frame: float = 0.2
    min_interval: float = 0.1
    max_frame_bytes: int = 64_000
    max_buffered_bytes: int = 120 * BYTES_PER_SECOND
    playout_end: float = 0.0
    hold_until: float = 0.0
    last_send: float = float("-inf")
    queued_bytes: int = 0
    queued_since: float = 0.0  # when audio arrived in an empty queue
    paused: bool = False  # Genesys paused the stream: nothing is sent until it resumes
    _items: deque[_Item] = field(default_factory=deque)

    def add(self, utterance: Utterance, audio: bytes, now: float) -> bool:
        """Queue bot audio. False (nothing queued) when the per-call bound would be passed."""
        if self.queued_bytes + len(audio) > self.max_buffered_bytes:
            return False
        if not self.queued_bytes:
            self.queued_since = now
        item = self._items[-1] if self._items else None
        if item is None or item.utterance is not utterance:
            item = _Item(utterance)
            self._items.append(item)
        item.queued += audio
        self.queued_bytes += len(audio)
        return True

    def busy(self, now: float) -> bool:
        """Audio queued here or still playing at Genesys."""
        return self.queued_bytes > 0 or now < self.playout_end

    def hold(self, until: float) -> None:
        """Send nothing before `until` (Genesys asked us to slow down)."""
        self.hold_until = max(self.hold_until, until)

    def next_send_at(self, now: float) -> float | None:
        if not self.queued_bytes or self.paused:
            return None
        # The moment there is room for a whole frame within the lead.
        room_at = self.playout_end - (self.lead - self.frame)
        at = max(self.last_send + self.min_interval, self.hold_until, room_at, now)
        if self._starving(at):
            at = max(at, self.queued_since + self.min_interval)
        return at

    def _starving(self, now: float) -> bool:
        """Playback would run dry before the next frame may go: wait to send a big enough one.

        A first frame shorter than the message spacing would leave Genesys silent until the
        next one; waiting (at most that spacing) for more audio avoids the gap.
        """
        return (
            self.playout_end - now < self.min_interval
            and self.queued_bytes < self.min_interval * BYTES_PER_SECOND
            and now < self.queued_since + self.min_interval
        )

    def take(self, now: float) -> bytes | None:
        """The next frame to send now, or None if it is not yet time."""
        if not self.queued_bytes or self.paused or now < self.hold_until:
            return None
        if now < self.last_send + self.min_interval:
            return None
        ahead = max(0.0, self.playout_end - now)
        room = self.lead - ahead
        if room < self.frame or self._starving(now):
            return None
        item = self._first_queued()
        size = min(len(item.queued), int(room * BYTES_PER_SECOND), self.max_frame_bytes)
        data = bytes(item.queued[:size])
        del item.queued[:size]
        self.queued_bytes -= size
        start = max(self.playout_end, now)
        length = size / BYTES_PER_SECOND
        item.segments.append((start, length))
        item.sent_bytes += size
        self.playout_end = start + length
        self.last_send = now
        self._forget_finished(now)
        return data

    def interrupt(self, now: float) -> Interruption | None:
        """Drop all queued audio; report every item the caller had not finished hearing (None
        when nothing was playing or queued)."""
        cuts = tuple(
            Cut(
                utterance=item.utterance,
                heard_ms=int(item.played_seconds(now) * 1000),
                sent_ms=item.sent_bytes * 1000 // BYTES_PER_SECOND,
            )
            for item in self._items
            if not item.finished(now)
        )
        dropped = self.queued_bytes
        self.queued_bytes = 0
        self._items.clear()
        self.playout_end = min(self.playout_end, now)
        return Interruption(cuts, dropped) if cuts else None

    def item_end(self, utterance: Utterance) -> float | None:
        """When the caller will have heard the whole utterance: None while some of it is still
        queued; 0 when the playout no longer knows it (played long ago, or cut)."""
        for item in self._items:
            if item.utterance is utterance:
                if item.queued:
                    return None
                return item.segments[-1][0] + item.segments[-1][1] if item.segments else 0.0
        return 0.0

    def _first_queued(self) -> _Item:
        return next(i for i in self._items if i.queued)

    def _forget_finished(self, now: float) -> None:
        while len(self._items) > 1 and self._items[0].finished(now):
            self._items.popleft()
