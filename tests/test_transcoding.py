"""transcoding.py: any chunking gives the whole stream's samples both ways, the audioop filter
computes its definition, tones keep frequency and level, silence stays silence, reset and the
odd-byte carry, and how far out-of-band tones and images are pushed down."""

from __future__ import annotations

import itertools
import math
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transcoding import (
    HALFBAND_16K,
    LOWPASS_24K,
    CallerToGemini,
    Decimator,
    GeminiToCaller,
    Interpolator,
    PairFir,
)
from utils import audioop

AMPLITUDE = 8000  # -12 dBFS
SETTLE = 0.05  # seconds skipped before measuring: the filters' start-up
WINDOW = 0.2  # seconds: a whole number of periods of any multiple of 5 Hz

samples16 = st.lists(st.integers(-32768, 32767), max_size=400)


def tone(freq: float, rate: int, seconds: float = 0.3, amplitude: float = AMPLITUDE) -> bytes:
    n = int(rate * seconds)
    return array(
        "h", (round(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))
    ).tobytes()


def pcm(data: bytes) -> array:
    return array("h", data)


def frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (repeated offsets make empty chunks)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def window(samples: array, rate: int) -> array:
    first = int(SETTLE * rate)
    return samples[first : first + int(WINDOW * rate)]


def level(samples: array, freq: float, rate: int) -> float:
    """Amplitude of `freq` in the measuring window (exact for multiples of 5 Hz)."""
    part = window(samples, rate)
    w = 2 * math.pi * freq / rate
    s = sum(v * math.sin(w * i) for i, v in enumerate(part))
    c = sum(v * math.cos(w * i) for i, v in enumerate(part))
    return 2 * math.hypot(s, c) / len(part)


def rms(samples: array) -> float:
    return math.sqrt(sum(v * v for v in samples) / len(samples))


def zero_crossing_frequency(samples: array, rate: int) -> float:
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate)


def db(ratio: float) -> float:
    return 20 * math.log10(ratio)


def definition(fir: PairFir, x: list[int], count: int) -> list[float]:
    """The filter's outputs computed from its definition, in floating point."""
    n = fir.length
    return [sum(fir.taps[k] * x[fir.stride * j + n - 1 - k] for k in range(n)) for j in range(count)]


def saturated(values: list[float]) -> list[float]:
    return [max(-32768.0, min(32767.0, v)) for v in values]


def rounds_to_nearest(got: array, expected: list[float]) -> bool:
    """Each output is its exact value rounded to nearest (the 32-bit sums are off by < 0.001)."""
    return len(got) == len(expected) and all(abs(a - b) <= 0.501 for a, b in zip(got, expected, strict=True))


# Chunking


@settings(max_examples=60, deadline=None)
@given(data=st.data(), ulaw=st.binary(max_size=3000))
def test_caller_audio_in_any_chunks_gives_the_whole_streams_samples(data, ulaw):
    cuts = data.draw(st.lists(st.integers(0, len(ulaw)), max_size=12))
    converter = CallerToGemini()
    chunked = b"".join(converter.convert(chunk) for chunk in split(ulaw, cuts))
    whole = CallerToGemini().convert(ulaw)
    assert chunked == whole
    assert len(whole) == 4 * len(ulaw)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), audio=st.binary(max_size=6000))
def test_gemini_audio_in_any_chunks_odd_sizes_included_gives_the_whole_streams_samples(data, audio):
    cuts = data.draw(st.lists(st.integers(0, len(audio)), max_size=12))
    converter = GeminiToCaller()
    chunked = b"".join(converter.convert(chunk) for chunk in split(audio, cuts))
    whole = GeminiToCaller().convert(audio)
    assert chunked == whole
    assert len(whole) == math.ceil(len(audio) // 2 / 3)  # one sample per 3, as each one completes


def test_every_frame_has_its_full_size_both_ways():
    caller, gemini = CallerToGemini(), GeminiToCaller()
    caller_frames = [caller.convert(f) for f in frames(audioop.lin2ulaw(tone(440, 8000, 1.0), 2), 1600)]
    gemini_frames = [gemini.convert(f) for f in frames(tone(440, 24000, 1.0), 9600)]
    assert [len(f) for f in caller_frames] == [6400] * 5
    assert [len(f) for f in gemini_frames] == [1600] * 5


# The audioop filter against its definition


@settings(max_examples=40, deadline=None)
@given(x=samples16)
def test_the_decimator_computes_its_filter_rounded_to_nearest(x):
    out = pcm(Decimator().convert(array("h", x).tobytes()))
    history = [0] * (LOWPASS_24K.length - 1)
    expected = saturated(definition(LOWPASS_24K, history + x, len(out)))
    assert len(out) == math.ceil(len(x) / 3)
    assert rounds_to_nearest(out, expected)


@settings(max_examples=40, deadline=None)
@given(x=samples16)
def test_the_interpolator_keeps_every_input_sample_and_filters_between_them(x):
    out = pcm(Interpolator().convert(array("h", x).tobytes()))
    padded = [0] * (HALFBAND_16K.length - 1) + x
    expected = saturated(definition(HALFBAND_16K, padded, len(x)))
    middle = HALFBAND_16K.length // 2
    assert len(out) == 2 * len(x)
    assert list(out[1::2]) == padded[middle : middle + len(x)]
    assert rounds_to_nearest(out[0::2], expected)


@pytest.mark.parametrize("fir", [LOWPASS_24K, HALFBAND_16K], ids=["24k", "16k"])
@pytest.mark.parametrize("sign", [1, -1])
def test_full_scale_sums_saturate_and_never_wrap(fir, sign):
    """Input matched to the taps' signs drives output j past full scale."""
    j = 4
    x = [0] * (fir.stride * j) + [(32767 if sign * tap > 0 else -32768) for tap in reversed(fir.taps)]
    assert abs(definition(fir, x, j + 1)[j]) > 32768
    even, _ = fir.apply(audioop.lin2lin(array("h", x).tobytes(), 2, 4), fir.outputs(len(x)))
    assert fir.outputs(len(x)) == j + 1
    assert pcm(even)[j // 2] == (32767 if sign > 0 else -32768)


# Tones, silence


@pytest.mark.parametrize("freq", [440, 1000])
def test_a_caller_tone_keeps_its_frequency_and_level(freq):
    ulaw = audioop.lin2ulaw(tone(freq, 8000), 2)
    sent = level(pcm(audioop.ulaw2lin(ulaw, 2)), freq, 8000)
    converter = CallerToGemini()
    out = pcm(b"".join(converter.convert(f) for f in frames(ulaw, 1600)))
    assert zero_crossing_frequency(window(out, 16000), 16000) == pytest.approx(freq, rel=0.01)
    assert abs(db(level(out, freq, 16000) / sent)) <= 1.0
    assert level(out, freq, 16000) / math.sqrt(2) >= 0.99 * rms(window(out, 16000))  # nothing else


@pytest.mark.parametrize("freq", [440, 1000])
def test_a_gemini_tone_keeps_its_frequency_and_level(freq):
    converter = GeminiToCaller()
    ulaw = b"".join(converter.convert(f) for f in frames(tone(freq, 24000), 9600))
    out = pcm(audioop.ulaw2lin(ulaw, 2))
    assert zero_crossing_frequency(window(out, 8000), 8000) == pytest.approx(freq, rel=0.01)
    assert abs(db(level(out, freq, 8000) / AMPLITUDE)) <= 1.0
    assert level(out, freq, 8000) / math.sqrt(2) >= 0.99 * rms(window(out, 8000))


def test_silence_stays_silence_both_ways():
    caller, gemini = CallerToGemini(), GeminiToCaller()
    to_gemini = caller.convert(b"\xff" * 1600)
    assert to_gemini == bytes(6400)
    # What Gemini would send back at 24 kHz: the same zeros, half again as many.
    assert gemini.convert(to_gemini + to_gemini[:3200]) == b"\xff" * 1600


def test_silence_after_speech_is_silence_again_once_the_filters_have_run_out():
    caller, gemini = CallerToGemini(), GeminiToCaller()
    caller.convert(audioop.lin2ulaw(tone(1000, 8000, 0.2), 2))
    gemini.convert(tone(1000, 24000, 0.2))
    assert caller.convert(b"\xff" * 1600)[4 * HALFBAND_16K.length :] == bytes(6400 - 4 * HALFBAND_16K.length)
    assert gemini.convert(bytes(9600))[LOWPASS_24K.length // 3 + 1 :] == b"\xff" * (
        1600 - LOWPASS_24K.length // 3 - 1
    )


# Reset, odd bytes


def test_reset_drops_the_filter_history():
    speech, after = tone(1000, 24000, 0.2), tone(440, 24000, 0.2)
    converter = GeminiToCaller()
    converter.convert(speech)
    carried_on = converter.convert(after)
    converter.convert(speech)
    converter.reset()
    assert converter.convert(after) == GeminiToCaller().convert(after) != carried_on


def test_reset_drops_a_carried_odd_byte():
    after = tone(440, 24000, 0.2)
    converter = GeminiToCaller()
    assert converter.convert(b"\x10") == b""  # half a sample
    converter.reset()
    assert converter.convert(after) == GeminiToCaller().convert(after)
    shifted = GeminiToCaller()
    shifted.convert(b"\x10")
    assert shifted.convert(after) != GeminiToCaller().convert(after)


def test_an_odd_byte_waits_for_the_next_chunk():
    audio = tone(1000, 24000, 0.2)
    converter = GeminiToCaller()
    first, second = converter.convert(audio[:4801]), converter.convert(audio[4801:])
    assert len(first) == 800  # 2,400 whole samples and a byte: outputs at samples 0, 3, ..., 2,397
    assert first + second == GeminiToCaller().convert(audio)
    one_byte = GeminiToCaller()
    assert one_byte.convert(audio[:1]) == b""
    assert one_byte.convert(audio[1:]) == GeminiToCaller().convert(audio)


# Out-of-band rejection


@pytest.mark.parametrize("freq", [5000, 7000, 9000, 11000])
def test_out_of_band_gemini_tones_fold_into_the_band_at_least_50_db_down(freq):
    """The design gives 56.7-59.4 dB at these tones (PCM); 50 dB leaves a margin."""
    folded = abs(freq - 8000 * round(freq / 8000))
    converter = Decimator()
    out = pcm(b"".join(converter.convert(f) for f in frames(tone(freq, 24000), 9600)))
    assert db(level(out, folded, 8000) / AMPLITUDE) <= -50
    ulaw = GeminiToCaller()
    heard = pcm(audioop.ulaw2lin(b"".join(ulaw.convert(f) for f in frames(tone(freq, 24000), 9600)), 2))
    assert db(rms(window(heard, 8000)) * math.sqrt(2) / AMPLITUDE) <= -45  # after μ-law, all of it


def test_the_24k_filter_is_47_db_down_from_5_khz_up():
    """Its frequency response from the taps, 5-12 kHz in 10 Hz steps (the design: 47.7 dB)."""
    taps = LOWPASS_24K.taps

    def response(freq: float) -> float:
        w = 2 * math.pi * freq / 24000
        return math.hypot(
            sum(t * math.cos(w * n) for n, t in enumerate(taps)),
            sum(t * math.sin(w * n) for n, t in enumerate(taps)),
        )

    assert max(db(response(f)) for f in range(5000, 12001, 10)) <= -47
    assert sum(taps) == pytest.approx(1.0)


def test_plain_ratecv_folds_the_same_tones_at_full_level():
    """Why the filter: audioop.ratecv keeps every third sample, so 5 kHz comes out as 3 kHz."""
    out, _ = audioop.ratecv(tone(5000, 24000), 2, 1, 24000, 8000, None)
    assert db(level(pcm(out), 3000, 8000) / AMPLITUDE) > -1


@pytest.mark.parametrize("freq", [440, 1000, 2000, 3000])
def test_mirror_images_of_caller_tones_stay_40_db_down(freq):
    """The design gives 43.5-48.7 dB at these tones; linear interpolation (ratecv) 7 dB at 3 kHz."""
    converter = Interpolator()
    out = pcm(b"".join(converter.convert(f) for f in frames(tone(freq, 8000), 3200)))
    assert db(level(out, 8000 - freq, 16000) / level(out, freq, 16000)) <= -40


@pytest.mark.parametrize(
    ("make", "rates"),
    [(Decimator, (24000, 8000)), (Interpolator, (8000, 16000))],
    ids=["24k-8k", "8k-16k"],
)
def test_the_telephone_band_stays_flat_within_1_2_db(make, rates):
    in_rate, out_rate = rates
    gains = []
    for freq in range(300, 3401, 100):
        converter = make()
        out = pcm(b"".join(converter.convert(f) for f in frames(tone(freq, in_rate), 2 * in_rate // 5)))
        gains.append(db(level(out, freq, out_rate) / AMPLITUDE))
    assert max(gains) - min(gains) <= 1.2
    assert max(gains) <= 0.2
