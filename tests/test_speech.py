"""Real words from eSpeak NG (through espeakng-loader), and the fallback when it is missing."""

from __future__ import annotations

import cmath
import logging
import sys
from array import array

import pytest

from simulators import speech
from simulators.audio import speech_like
from utils import audioop

TEXT = "I want to check my order"
TWICE_AS_LONG = "I want to check my order and then I will pay my bill"  # 2.2 times the characters

needs_engine = pytest.mark.skipif(
    not speech.available(), reason='eSpeak NG cannot be loaded here (pip install "espeakng-loader>=0.2,<1")'
)


def fft(values: list[complex]) -> list[complex]:
    n = len(values)
    if n == 1:
        return values
    even, odd = fft(values[0::2]), fft(values[1::2])
    turns = [cmath.exp(-2j * cmath.pi * k / n) * odd[k] for k in range(n // 2)]
    return [even[k] + turns[k] for k in range(n // 2)] + [even[k] - turns[k] for k in range(n // 2)]


def speech_band_share(pcmu: bytes, size: int = 256) -> float:
    """The share of the energy between 300 and 3400 Hz, over 32 ms windows (8 kHz audio)."""
    samples = array("h", audioop.ulaw2lin(pcmu, 2))
    band = total = 0.0
    for start in range(0, len(samples) - size + 1, size):
        spectrum = fft([complex(v) for v in samples[start : start + size]])
        for k in range(1, size // 2):
            power = abs(spectrum[k]) ** 2
            total += power
            if 300 <= k * 8000 / size <= 3400:
                band += power
    return band / total if total else 0.0


@needs_engine
def test_spoken_words_have_their_energy_in_the_telephone_speech_band():
    audio = speech.synthesize(TEXT)
    assert audio is not None and len(audio) > 8000 * 0.8
    assert speech_band_share(audio) > 0.75  # 300-3400 Hz dominates what lies outside it
    assert audioop.rms(audioop.ulaw2lin(audio, 2), 2) > 1000  # loud enough for a VAD


@needs_engine
def test_a_text_twice_as_long_takes_about_twice_as_long_to_say():
    short, long = speech.synthesize(TEXT), speech.synthesize(TWICE_AS_LONG)
    assert short is not None and long is not None
    assert 1.5 <= len(long) / len(short) <= 2.5


@needs_engine
def test_words_are_not_the_speech_like_buzz():
    audio = speech.synthesize(TEXT)
    assert audio is not None
    buzz = speech_like(round(len(audio) / 8000, 2), seed=1)
    assert audio != buzz[: len(audio)]
    # The buzz is a low hum of harmonics: most of its energy lies below 300 Hz.
    assert speech_band_share(buzz) < 0.5 < speech_band_share(audio)


@needs_engine
def test_results_are_cached_and_an_unknown_voice_is_refused():
    assert speech.synthesize(TEXT) is speech.synthesize(TEXT)
    assert speech.synthesize(TEXT, rate_wpm=120) != speech.synthesize(TEXT)
    with pytest.raises(ValueError, match="no voice"):
        speech.synthesize(TEXT, voice="xx-nowhere")


@needs_engine
def test_spoken_uses_the_engine_when_it_is_there():
    assert speech.spoken(TEXT) == (speech.synthesize(TEXT), True)


@pytest.fixture
def no_engine(monkeypatch):
    """As if espeakng-loader were not installed."""
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # `import` raises ImportError
    speech._engine.cache_clear()
    yield
    monkeypatch.undo()
    speech._engine.cache_clear()


def test_without_the_engine_synthesize_is_none_with_one_log_line(no_engine, caplog):
    with caplog.at_level(logging.WARNING, logger="speech"):
        assert speech.synthesize(TEXT) is None
        assert speech.available() is False
        assert speech.synthesize(TWICE_AS_LONG) is None
    lines = [r for r in caplog.records if r.name == "speech"]
    assert len(lines) == 1 and "eSpeak NG is not available" in lines[0].getMessage()


def test_without_the_engine_speech_like_audio_of_about_the_length_stands_in(no_engine):
    audio, words = speech.spoken(TWICE_AS_LONG, seed=3)
    assert words is False
    assert audio == speech_like(round(len(TWICE_AS_LONG) / 14, 1), seed=3)
    assert abs(len(audio) / 8000 - len(TWICE_AS_LONG) / 14) < 0.1
