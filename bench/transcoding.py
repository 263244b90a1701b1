"""Transcoding benchmark: plain `audioop.ratecv` against transcoding.py's FIR path, both ways.

    python bench/transcoding.py

Printed: the cost (µs per 200 ms frame, median of many; CPU seconds per call-minute, measured
over a minute of frames) and the quality of each path. Quality is measured on PCM, before
μ-law, with tones of a whole number of periods in 0.2 s windows (so one correlation isolates a
frequency exactly) after the filters have settled:

* passband: gain of tones at 300-3400 Hz in 100 Hz steps; ripple is the largest minus the
  smallest gain.
* 24 -> 8 kHz alias rejection: a tone at 5, 7, 9 or 11 kHz goes in; how far below it the tone it
  folds to (3, 1, 1, 3 kHz) comes out.
* 8 -> 16 kHz image rejection: a tone at f goes in; how far the mirror image at 8 kHz - f stays
  below the tone at f in the output.
* SNR on a speech-like signal: harmonics of 150 Hz with amplitudes falling as 1/k (-6 dB per
  octave, the long-term slope of speech) and random phases, up to 11.85 kHz at 24 kHz and in the
  telephone band (300-3450 Hz) at 8 kHz. The reference is the ideal resampler: the same
  harmonics below the new Nyquist frequency, computed at the output's sample times, delayed by
  the path's own delay (measured from the fundamental's phase). For 24 -> 8 kHz also after
  μ-law, which is what the caller hears.

The "naive FIR" line costs the same 34-tap filter done as the brief sketched it: one
`audioop.mul` and one `audioop.add` per tap over the whole 24 kHz buffer, then every third
sample kept.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transcoding import (  # noqa: E402
    CALLER_RATE,
    GEMINI_INPUT_RATE,
    GEMINI_OUTPUT_RATE,
    HALFBAND_16K,
    LOWPASS_24K,
    CallerToGemini,
    Decimator,
    GeminiToCaller,
    Interpolator,
)
from utils import audioop  # noqa: E402

Convert = Callable[[bytes], bytes]

FRAMES_PER_MINUTE = 300  # 200 ms frames
AMPLITUDE = 8000.0  # -12 dBFS
SETTLE = 0.05  # seconds skipped before measuring, for the filters' start
WINDOW = 0.2  # seconds: a whole number of periods of every multiple of 5 Hz


class Ratecv:
    """`audioop.ratecv` with its state kept across chunks (the spec's recipe)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self.state = None

    def convert(self, pcm: bytes) -> bytes:
        out, self.state = audioop.ratecv(pcm, 2, 1, self.in_rate, self.out_rate, self.state)
        return out


class NaiveFir:
    """The same low-pass as one mul + add per tap at 24 kHz, then every third sample (for its
    cost only: no rounding)."""

    def __init__(self) -> None:
        self.taps = LOWPASS_24K.taps
        self.headroom = LOWPASS_24K.headroom
        self.history = bytes(4 * (len(self.taps) - 1))

    def convert(self, pcm: bytes) -> bytes:
        block = self.history + audioop.lin2lin(pcm, 2, 4)
        n = len(pcm) // 2
        total = b""
        for k, tap in enumerate(self.taps):
            start = 4 * (len(self.taps) - 1 - k)
            part = audioop.mul(block[start : start + 4 * n], 4, tap / self.headroom)
            total = audioop.add(total, part, 4) if total else part
        self.history = block[len(block) - len(self.history) :]
        kept = array("i", total)[::3].tobytes()
        return audioop.lin2lin(audioop.mul(kept, 4, self.headroom), 4, 2)


def tone(freq: float, rate: int, seconds: float) -> bytes:
    return array(
        "h", (round(AMPLITUDE * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(rate * seconds)))
    ).tobytes()


def chunked(convert: Convert, data: bytes, size: int) -> array:
    return array("h", b"".join(convert(data[i : i + size]) for i in range(0, len(data), size)))


def component(samples: array, freq: float, rate: int) -> tuple[float, float]:
    """Amplitude and phase of `freq` in the measuring window of `samples`."""
    first = int(SETTLE * rate)
    n = int(WINDOW * rate)
    w = 2 * math.pi * freq / rate
    s = sum(samples[i] * math.sin(w * i) for i in range(first, first + n))
    c = sum(samples[i] * math.cos(w * i) for i in range(first, first + n))
    return 2 * math.hypot(s, c) / n, math.atan2(c, s)


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-12))


def gain(make: Callable[[], Convert], freq: float, rates: tuple[int, int], out_freq: float) -> float:
    """Output level at `out_freq` for a tone at `freq`, in dB relative to the tone."""
    in_rate, out_rate = rates
    out = chunked(make(), tone(freq, in_rate, SETTLE + WINDOW + 0.02), in_rate // 5 * 2)
    return db(component(out, out_freq, out_rate)[0] / AMPLITUDE)


def passband(make: Callable[[], Convert], rates: tuple[int, int]) -> dict[int, float]:
    return {f: gain(make, f, rates, f) for f in range(300, 3401, 100)}


def speech_like(top: float, bottom: float = 0.0) -> list[tuple[float, float, float]]:
    rng = random.Random(7)
    harmonics = [(150.0 * k, 6000.0 / k, rng.uniform(0, 2 * math.pi)) for k in range(1, 80)]
    return [h for h in harmonics if bottom <= h[0] <= top]


def render(
    harmonics: list[tuple[float, float, float]], rate: int, seconds: float, delay: float = 0.0
) -> list[float]:
    return [
        sum(a * math.sin(2 * math.pi * f * (i / rate - delay) + p) for f, a, p in harmonics)
        for i in range(int(rate * seconds))
    ]


def snr(out: array, harmonics: list[tuple[float, float, float]], rate: int) -> float:
    """SNR of `out` against the ideal rendering of `harmonics` at `rate`, at the path's delay."""
    f0, _, p0 = harmonics[0]
    period = 1 / f0
    delay = ((p0 - component(out, f0, rate)[1]) / (2 * math.pi * f0) + period / 2) % period - period / 2
    ref = render(harmonics, rate, len(out) / rate, delay)
    first, n = int(SETTLE * rate), int(2 * WINDOW * rate)
    error = sum((out[i] - ref[i]) ** 2 for i in range(first, first + n))
    signal = sum(ref[i] ** 2 for i in range(first, first + n))
    return 10 * math.log10(signal / error)


Row = tuple[str, Callable[[], Convert], bytes, int]  # name, converter, chunk, chunks per 200 ms


def costs(rows: list[Row], runs: int = 3000) -> list[tuple[float, float]]:
    """Median µs per 200 ms of audio, and median CPU seconds per minute of audio (of 9 minutes),
    for each row. The rows take turns in every round, so a neighbour's load on the shared machine
    falls on all of them alike."""
    timings: list[list[int]] = [[] for _ in rows]
    converters = [make() for _, make, _, _ in rows]
    for _ in range(runs):
        for timing, convert, (_, _, chunk, n) in zip(timings, converters, rows, strict=True):
            start = time.perf_counter_ns()
            for _ in range(n):
                convert(chunk)
            timing.append(time.perf_counter_ns() - start)
    minutes: list[list[float]] = [[] for _ in rows]
    for _ in range(9):
        for minute, (_, make, chunk, n) in zip(minutes, rows, strict=True):
            convert = make()
            start = time.process_time()
            for _ in range(FRAMES_PER_MINUTE * n):
                convert(chunk)
            minute.append(time.process_time() - start)
    return [
        (statistics.median(timing) / 1000, statistics.median(minute))
        for timing, minute in zip(timings, minutes, strict=True)
    ]


def ulaw_ratecv() -> Convert:
    resampler = Ratecv(GEMINI_OUTPUT_RATE, CALLER_RATE)
    return lambda pcm: audioop.lin2ulaw(resampler.convert(pcm), 2)


def ratecv_from_ulaw() -> Convert:
    resampler = Ratecv(CALLER_RATE, GEMINI_INPUT_RATE)
    return lambda ulaw: resampler.convert(audioop.ulaw2lin(ulaw, 2))


def decoded(make: Callable[[], Convert]) -> Callable[[], Convert]:
    def build() -> Convert:
        convert = make()
        return lambda pcm: audioop.ulaw2lin(convert(pcm), 2)

    return build


def report_cost() -> None:
    ulaw = audioop.lin2ulaw(
        array("h", (round(v) for v in render(speech_like(3450, 300), 8000, 0.2))).tobytes(), 2
    )
    pcm24 = array("h", (round(v) for v in render(speech_like(11900), 24000, 0.2))).tobytes()
    rows: list[Row] = [
        ("caller -> Gemini, ratecv", ratecv_from_ulaw, ulaw, 1),
        ("caller -> Gemini, FIR", lambda: CallerToGemini().convert, ulaw, 1),
        ("Gemini -> caller, ratecv", ulaw_ratecv, pcm24, 1),
        ("Gemini -> caller, FIR", lambda: GeminiToCaller().convert, pcm24, 1),
        ("Gemini -> caller, FIR, in 40 ms chunks", lambda: GeminiToCaller().convert, pcm24[:1920], 5),
        ("Gemini -> caller, FIR, in 20 ms chunks", lambda: GeminiToCaller().convert, pcm24[:960], 10),
        ("Gemini -> caller, naive FIR (mul + add per tap)", lambda: NaiveFir().convert, pcm24, 1),
    ]
    print("cost per 200 ms of audio (median of 3,000, μ-law included) and CPU per minute of audio:")
    results = costs(rows)
    for (name, _, _, _), (us, cpu) in zip(rows, results, strict=True):
        print(f"  {name:48s} {us:6.1f} µs per 200 ms, {cpu:.4f} CPU s per minute")
    # bench/load.py's call: the caller streams all the time, the bot speaks 2.5 s of every 6 s.
    bot_share = 2.5 / 6
    for name, inbound, outbound in (("ratecv", 0, 2), ("FIR", 1, 3)):
        total = results[inbound][1] + bot_share * results[outbound][1]
        print(
            f"  per call-minute at load.py's profile (bot speaking {bot_share:.0%}), {name}: {total:.4f} CPU s"
        )


def report_down() -> None:
    rates = (GEMINI_OUTPUT_RATE, CALLER_RATE)
    harmonics = speech_like(11900)
    pcm = array("h", (round(v) for v in render(harmonics, GEMINI_OUTPUT_RATE, 0.5))).tobytes()
    ideal = [h for h in harmonics if h[0] < CALLER_RATE / 2]
    print(
        f"Gemini -> caller, 24 -> 8 kHz (FIR: {LOWPASS_24K.length} taps, Kaiser beta 4, -6 dB at 4 kHz; "
        f"speech-like peak {max(array('h', pcm))}):"
    )
    paths = [
        ("ratecv", lambda: Ratecv(*rates).convert, ulaw_ratecv),
        ("FIR   ", lambda: Decimator().convert, lambda: GeminiToCaller().convert),
    ]
    for name, make, make_ulaw in paths:
        gains = passband(make, rates)
        rejection = [
            -gain(make, f, rates, abs(f - 8000 * round(f / 8000))) for f in (5000, 7000, 9000, 11000)
        ]
        print(
            f"  {name}: passband ripple {max(gains.values()) - min(gains.values()):.2f} dB "
            f"(1 kHz {gains[1000]:+.2f}, 3.4 kHz {gains[3400]:+.2f} dB); "
            f"alias rejection 5/7/9/11 kHz {' / '.join(f'{r:.1f}' for r in rejection)} dB; "
            f"speech-like SNR {snr(chunked(make(), pcm, 9600), ideal, CALLER_RATE):.1f} dB, "
            f"after μ-law {snr(chunked(decoded(make_ulaw)(), pcm, 9600), ideal, CALLER_RATE):.1f} dB"
        )


def report_up() -> None:
    rates = (CALLER_RATE, GEMINI_INPUT_RATE)
    harmonics = speech_like(3450, 300)
    pcm = array("h", (round(v) for v in render(harmonics, CALLER_RATE, 0.5))).tobytes()
    print(
        f"caller -> Gemini, 8 -> 16 kHz (FIR: half-band, {2 * HALFBAND_16K.length - 1} taps, Kaiser beta 3):"
    )
    for name, make in (
        ("ratecv", lambda: Ratecv(*rates).convert),
        ("FIR   ", lambda: Interpolator().convert),
    ):
        gains = passband(make, rates)
        images = {f: gains[f] - gain(make, f, rates, 8000 - f) for f in (500, 1000, 2000, 3000, 3400)}
        print(
            f"  {name}: passband ripple {max(gains.values()) - min(gains.values()):.2f} dB "
            f"(1 kHz {gains[1000]:+.2f}, 3.4 kHz {gains[3400]:+.2f} dB); "
            f"image rejection 0.5/1/2/3/3.4 kHz {' / '.join(f'{v:.1f}' for v in images.values())} dB; "
            f"speech-like SNR {snr(chunked(make(), pcm, 3200), harmonics, GEMINI_INPUT_RATE):.1f} dB"
        )


def main() -> None:
    print(f"Python {sys.version.split()[0]}")
    report_cost()
    report_down()
    report_up()


if __name__ == "__main__":
    main()
