"""Real words for the stand-ins: text spoken by eSpeak NG as PCMU mono 8 kHz.

The engine comes from the `espeakng-loader` package, which bundles the shared library and its
data, so nothing needs installing on the system. `synthesize` returns None when the engine cannot
be loaded (one log line says why); `spoken` then falls back to speech-like audio of about the same
length, so a caller or a model simulator always has something to say.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from functools import cache, lru_cache

from simulators.audio import RATE, speech_like
from utils import audioop

log = logging.getLogger("speech")

CHARACTERS_PER_SECOND = 14  # about 165 words a minute, as simulators.script estimates too

# From espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMETER_RATE = 1
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    """The loaded library. eSpeak NG keeps one global state: every use holds the lock."""

    def __init__(self, lib: ctypes.CDLL, data_path: str) -> None:
        self.lib = lib
        self.lock = threading.Lock()
        self.chunks: list[bytes] = []
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.rate <= 0:
            raise OSError(f"espeak_Initialize failed ({self.rate})")
        self._callback = _SynthCallback(self._collect)  # kept: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.Array[ctypes.c_short] | None, samples: int, events: int | None) -> int:
        if wav and samples > 0:
            self.chunks.append(ctypes.string_at(wav, samples * 2))
        return 0  # 0: go on synthesizing

    def speak(self, text: str, voice: str, rate_wpm: int) -> bytes:
        """16-bit PCM at `self.rate` of the spoken text."""
        data = text.encode() + b"\0"
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ValueError(f"eSpeak NG has no voice {voice!r}")
            self.lib.espeak_SetParameter(_PARAMETER_RATE, rate_wpm, 0)
            self.chunks = []
            result = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            pcm, self.chunks = b"".join(self.chunks), []
        if result != _EE_OK:
            raise OSError(f"espeak_Synth failed ({result})")
        return pcm


@cache
def _engine() -> _Engine | None:
    try:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        return _Engine(lib, espeakng_loader.get_data_path())
    except (ImportError, OSError, RuntimeError) as exc:
        log.warning(
            "eSpeak NG is not available (%s): speech-like audio stands in for words"
            ' (pip install "espeakng-loader>=0.2,<1")',
            exc,
        )
        return None


def available() -> bool:
    """Whether words can be spoken (the engine loads)."""
    return _engine() is not None


def synthesize(text: str, *, voice: str = "en-us", rate_wpm: int = 165) -> bytes | None:
    """`text` spoken, as PCMU mono 8 kHz; None when the engine is absent. Raises ValueError for
    an unknown voice."""
    engine = _engine()
    if engine is None:
        return None
    return _synthesize(engine, text, voice, rate_wpm)


@lru_cache(maxsize=48)
def _synthesize(engine: _Engine, text: str, voice: str, rate_wpm: int) -> bytes:
    pcm = engine.speak(text, voice, rate_wpm)
    if not pcm:
        return b""
    pcm, _ = audioop.ratecv(pcm, 2, 1, engine.rate, RATE, None)
    return audioop.lin2ulaw(pcm, 2)


def estimated_seconds(text: str) -> float:
    """How long `text` takes to say at a normal pace."""
    return max(0.6, len(text) / CHARACTERS_PER_SECOND)


def spoken(text: str, *, seed: int = 0) -> tuple[bytes, bool]:
    """(`text` spoken, True), or (speech-like audio of about its length, False) without the engine."""
    audio = synthesize(text)
    if audio is not None:
        return audio, True
    return speech_like(round(estimated_seconds(text), 1), seed=seed), False
