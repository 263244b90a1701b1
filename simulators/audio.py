"""Audio for the stand-ins, the demo and the benchmarks: G.711 μ-law WAV files and
deterministic speech-like test audio. The connector itself needs none of this.
"""

from __future__ import annotations

import math
import random
import struct
from array import array
from functools import lru_cache
from pathlib import Path

from utils import ULAW_SILENCE, audioop

RATE = 8000
_WAVE_PCM = 1
_WAVE_MULAW = 7


def ulaw_to_pcm16(data: bytes) -> bytes:
    return audioop.ulaw2lin(data, 2)


def pcm16_to_ulaw(data: bytes) -> bytes:
    return audioop.lin2ulaw(data, 2)


def silence(seconds: float) -> bytes:
    return ULAW_SILENCE * int(seconds * RATE)


@lru_cache(maxsize=32)
def speech_like(seconds: float, seed: int = 0, level: float = 0.25) -> bytes:
    """Deterministic voice-like PCMU: voiced 'syllables' with harmonics and short gaps.

    Loud enough for any energy-based VAD, with the rhythm of speech, so that pacing, VAD and
    barge-in behave as they would with a person on the line.
    """
    rng = random.Random(seed)
    total = int(seconds * RATE)
    samples = array("h", bytes(2 * total))
    i = 0
    while i < total:
        length = int(rng.uniform(0.12, 0.26) * RATE)
        gap = int(rng.uniform(0.03, 0.07) * RATE)
        pitch = rng.uniform(110.0, 210.0)
        for n in range(min(length, total - i)):
            envelope = math.sin(math.pi * n / length)
            t = n / RATE
            value = (
                math.sin(2 * math.pi * pitch * t)
                + 0.5 * math.sin(2 * math.pi * 2 * pitch * t)
                + 0.25 * math.sin(2 * math.pi * 3 * pitch * t)
            )
            samples[i + n] = int(32767 * level * envelope * value / 1.75)
        i += length + gap
    return pcm16_to_ulaw(samples.tobytes())


def read_wav(path: str | Path) -> bytes:
    """Any PCM (8/16-bit) or μ-law WAV, mono or stereo, any rate -> PCMU mono 8 kHz."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a WAV file")
    fmt = None
    audio = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
        elif chunk_id == b"data":
            audio = body
        pos += 8 + size + (size & 1)
    if fmt is None or audio is None:
        raise ValueError(f"{path}: no fmt or data chunk")
    tag, channels, rate, _, _, bits = fmt
    if tag == _WAVE_MULAW and bits == 8:
        pcm, width = audioop.ulaw2lin(audio, 2), 2
    elif tag == _WAVE_PCM and bits in (8, 16):
        width = bits // 8
        pcm = audioop.bias(audio, 1, -128) if width == 1 else audio
    else:
        raise ValueError(f"{path}: unsupported WAV format (tag {tag}, {bits} bits)")
    if channels == 2:
        pcm = audioop.tomono(pcm, width, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path}: {channels} channels; mono or stereo only")
    if width != 2:
        pcm = audioop.lin2lin(pcm, width, 2)
    if rate != RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, RATE, None)
    return pcm16_to_ulaw(pcm)


def write_wav(path: str | Path, pcmu: bytes) -> None:
    """PCMU mono 8 kHz as a μ-law WAV file (the bytes are kept exactly)."""
    fmt = struct.pack("<HHIIHHH", _WAVE_MULAW, 1, RATE, RATE, 1, 8, 0)
    fact = struct.pack("<I", len(pcmu))
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", len(fact))
        + fact
        + b"data"
        + struct.pack("<I", len(pcmu))
        + pcmu
        + (b"\x00" if len(pcmu) & 1 else b"")
    )
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
