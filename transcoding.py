"""Audio transcoding for the Gemini Live backend: the caller's μ-law 8 kHz to PCM16 16 kHz for
Gemini, and Gemini's PCM16 24 kHz back to μ-law 8 kHz for Genesys (gemini-live.md §4).

Both directions use a short FIR filter built from `audioop` primitives, not `audioop.ratecv`.
`ratecv` has no anti-alias filter: at 24 -> 8 kHz it keeps every third sample, so whatever
Gemini sends between 4 and 12 kHz folds into the telephone band at full level; at 8 -> 16 kHz it
interpolates linearly, which droops 4.2 dB at 3.4 kHz and leaves mirror images at 4-8 kHz only
7-15 dB below 2-3 kHz speech. `python bench/transcoding.py` (Python 3.11, the 2-core bench
machine; quality on PCM, before μ-law):

| 24 -> 8 kHz (Gemini -> caller) | `ratecv` | FIR, 34 taps |
|---|---|---|
| alias rejection, tones at 5 / 7 / 9 / 11 kHz | 0 / 0 / 0 / 0 dB | 56.7 / 56.7 / 59.1 / 59.4 dB |
| passband 300-3400 Hz | flat | 0.88 dB ripple, -0.84 dB at 3.4 kHz |
| SNR, speech-like signal vs ideal resampling | 18.1 dB (17.9 after μ-law) | 32.0 dB (30.7 after μ-law) |
| µs per 200 ms, μ-law encoding included | 55 | 161 (208 in 40 ms chunks) |

| 8 -> 16 kHz (caller -> Gemini) | `ratecv` | FIR, half-band, 19 taps |
|---|---|---|
| image rejection, tones at 0.5 / 1 / 2 / 3 kHz | 40 / 28 / 15 / 7 dB | 47 / 48 / 44 / 49 dB |
| passband 300-3400 Hz | 4.17 dB ripple, -4.2 dB at 3.4 kHz | 1.02 dB ripple, -0.97 dB at 3.4 kHz |
| SNR, speech-like signal vs ideal resampling | 20.5 dB | 37.8 dB |
| µs per 200 ms frame, μ-law decoding included | 21 | 57 |

Per call-minute (the caller streaming all the time, the bot speaking 2.5 s of every 6 s, as in
bench/load.py) that is about 0.04 CPU s against 0.013 s for `ratecv`, next to the 0.07-0.11 s the
connector spends per call-minute on everything else (docs/performance.md). The filters delay
the audio by 0.56 ms inbound and 0.69 ms outbound.

How the FIR stays cheap in pure Python: `audioop.tomono` on a buffer read as stereo computes
`a * left + b * right` for every pair of adjacent samples in one C pass, i.e. two taps of the
filter at once, and `audioop.add` accumulates. Each pass yields every second output, so the
outputs come in two streams (even and odd), interleaved at the end. Only the samples that are
kept are computed, a third of them at 24 -> 8 kHz: one `mul` and one `add` per tap over the
whole buffer, then every third sample kept, costs 683 µs per 200 ms instead of 161. Sums run on
32-bit samples with the taps scaled down by a power of two, so no partial sum can clip. The
filter's last input samples stay as history between chunks, so any chunking gives exactly the
samples of converting the whole stream at once.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

from utils import audioop

CALLER_RATE = 8000
GEMINI_INPUT_RATE = 16000
GEMINI_OUTPUT_RATE = 24000


def kaiser_lowpass(taps: int, cutoff: float, beta: float) -> list[float]:
    """A windowed-sinc low-pass FIR (Kaiser window), gain 1 at DC; `cutoff`, the -6 dB point, is
    in cycles per sample."""
    centre = (taps - 1) / 2
    coefficients = []
    for n in range(taps):
        x = n - centre
        ideal = 2 * cutoff if x == 0 else math.sin(2 * math.pi * cutoff * x) / (math.pi * x)
        coefficients.append(ideal * _bessel_i0(beta * math.sqrt(1 - (x / centre) ** 2)))
    total = sum(coefficients)
    return [c / total for c in coefficients]


def _bessel_i0(x: float) -> float:
    """The modified Bessel function of order 0 (its power series), for the Kaiser window."""
    total = term = 1.0
    k = 1
    while term > 1e-12 * total:
        term *= (x / (2 * k)) ** 2
        total += term
        k += 1
    return total


class PairFir:
    """An FIR filter evaluated at every `stride`-th sample, two taps per C pass.

    Output j of a buffer x (32-bit samples, the filter's history first) is
    `sum(taps[k] * x[stride * j + len(taps) - 1 - k])`: the newest sample it reads is
    x[stride * j + len(taps) - 1].
    """

    def __init__(self, taps: Sequence[float], stride: int) -> None:
        if len(taps) % 2 or stride not in (1, 3):
            raise ValueError("PairFir needs an even number of taps and a stride of 1 or 3")
        self.taps = tuple(taps)
        self.length = len(taps)
        self.stride = stride
        # A power of two above the largest possible gain: partial sums stay inside 32 bits.
        self.headroom = 2.0 ** (math.floor(math.log2(sum(abs(t) for t in taps))) + 1)
        scale = 1 / self.headroom
        self._plans = tuple(self._plan([t * scale for t in taps], parity) for parity in (0, 1))

    def _plan(self, taps: list[float], parity: int) -> tuple[tuple[float, float, int, int], ...]:
        """For each pair of taps 2p + 1 (left, the older sample) and 2p (right): its factors, the
        phase its stereo frames are in, and the frame of output `parity` (0 or 1) they start at."""
        plan = []
        for p in range(self.length // 2):
            # Output j reads frame (x[s], x[s + 1]) at s = stride * j + length - 2 - 2p, i.e.
            # frame (s - parity) / 2 of its stream, every `stride` frames from output to output.
            first = (self.stride - 1) * parity // 2 + self.length // 2 - 1 - p
            plan.append((taps[2 * p + 1], taps[2 * p], first % self.stride, first // self.stride))
        return tuple(plan)

    def outputs(self, samples: int) -> int:
        """How many outputs a buffer of `samples` samples (history included) completes."""
        return max(0, (samples - self.length) // self.stride + 1)

    def apply(self, wide: bytes, count: int) -> tuple[bytes, bytes]:
        """The first `count` outputs over `wide`, as 16-bit samples: the even ones and the odd ones."""
        return self._stream(wide, 0, (count + 1) // 2), self._stream(wide, 1, count // 2)

    def _stream(self, wide: bytes, parity: int, count: int) -> bytes:
        if not count:
            return b""
        view = memoryview(wide)[4 * parity :]
        frames = view[: len(view) // 8 * 8]  # stereo frames (x[2i + parity], x[2i + parity + 1])
        if self.stride == 1:
            phases: Sequence[memoryview] = (frames.cast("q"),)
        else:
            stereo = array("q")
            stereo.frombytes(frames)
            # Successive outputs read frames 3 apart: split the frames by phase, each contiguous.
            phases = (memoryview(stereo[0::3]), memoryview(stereo[1::3]), memoryview(stereo[2::3]))
        total = b""
        for left, right, phase, start in self._plans[parity]:
            part = audioop.tomono(phases[phase][start : start + count], 4, left, right)
            total = audioop.add(total, part, 4) if total else part
        return _narrow(total, self.headroom)


def _narrow(wide: bytes, headroom: float) -> bytes:
    """32-bit sums held `headroom` times too small, as 16-bit samples: rounded, and saturated."""
    rounded = audioop.bias(wide, 4, int(0x8000 / headroom))
    return audioop.lin2lin(audioop.mul(rounded, 4, headroom), 4, 2)


def _interpolating_phase(taps: int, beta: float) -> list[float]:
    """The taps between input samples of a half-band 2x interpolator (its other phase is the input
    itself), normalised to gain 1 at DC."""
    phase = kaiser_lowpass(2 * taps - 1, 0.25, beta)[0::2]
    total = sum(phase)
    return [c / total for c in phase]


# 24 -> 8 kHz: 34 taps, -6 dB at 4 kHz (the new Nyquist); >= 47.7 dB down from 5 kHz (which folds
# to 3 kHz) up, 20.8 dB at 4.6 kHz (folding to 3.4 kHz). At this length a -6 dB point at 3.6 kHz
# would droop 3.6 dB at 3.4 kHz (at 3.4 kHz, 6 dB): the transition band has to straddle 4 kHz.
LOWPASS_24K = PairFir(kaiser_lowpass(34, 4000 / GEMINI_OUTPUT_RATE, 4.0), stride=3)
# 8 -> 16 kHz: a 19-tap half-band filter, of which 10 taps make the new samples.
HALFBAND_16K = PairFir(_interpolating_phase(10, 3.0), stride=1)


class Interpolator:
    """PCM16 8 kHz -> 16 kHz: every second output is an input sample, the others come from
    `HALFBAND_16K` centred between two input samples. State runs across chunks."""

    def __init__(self) -> None:
        self._history = bytes(2 * (HALFBAND_16K.length - 1))

    def convert(self, pcm: bytes) -> bytes:
        """Two output samples per input sample (`pcm` holds whole samples), 0.56 ms late."""
        block = self._history + pcm
        count = len(pcm) // 2
        self._history = block[2 * count :]
        if not count:
            return b""
        even, odd = HALFBAND_16K.apply(audioop.lin2lin(block, 2, 4), count)
        middle = HALFBAND_16K.length // 2  # the input sample between filter outputs j and j + 1
        out = array("h", bytes(4 * count))
        out[0::4] = array("h", even)
        out[2::4] = array("h", odd)
        out[1::2] = array("h", block[2 * middle : 2 * (middle + count)])
        return out.tobytes()


class Decimator:
    """PCM16 24 kHz -> 8 kHz: `LOWPASS_24K` at every third sample. Chunks may split a sample: the
    odd byte waits in the tail with the filter's history."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the history and any partial sample, as at the start of a stream."""
        self._tail = bytes(2 * (LOWPASS_24K.length - 1))

    def convert(self, pcm: bytes) -> bytes:
        """The output samples completed by `pcm` (one per three input samples), 0.69 ms late."""
        block = self._tail + pcm
        samples = len(block) // 2
        count = LOWPASS_24K.outputs(samples)
        self._tail = block[6 * count :]
        if not count:
            return b""
        even, odd = LOWPASS_24K.apply(audioop.lin2lin(block[: 2 * samples], 2, 4), count)
        out = array("h", bytes(2 * count))
        out[0::2] = array("h", even)
        out[1::2] = array("h", odd)
        return out.tobytes()


class CallerToGemini:
    """The caller's audio for Gemini: μ-law 8 kHz -> PCM16 LE mono 16 kHz. One per call: the
    filter's state runs for the whole call, so frame-by-frame output equals whole-stream output."""

    def __init__(self) -> None:
        self._interpolator = Interpolator()

    def convert(self, ulaw: bytes) -> bytes:
        """4 bytes of PCM per μ-law byte (a 1,600-byte frame gives 6,400 bytes)."""
        return self._interpolator.convert(audioop.ulaw2lin(ulaw, 2))


class GeminiToCaller:
    """Gemini's audio for the caller: PCM16 LE mono 24 kHz -> μ-law 8 kHz. State per turn: call
    `reset()` at a new turn and on `interrupted`."""

    def __init__(self) -> None:
        self._decimator = Decimator()

    def convert(self, pcm24k: bytes) -> bytes:
        """One μ-law byte per 6 bytes of input, as they complete; any chunk size, odd included."""
        return audioop.lin2ulaw(self._decimator.convert(pcm24k), 2)

    def reset(self) -> None:
        """Drop the filter's history and any carried odd byte."""
        self._decimator.reset()
