"""Load benchmark: N concurrent simulated calls through one connector process.

    python bench/load.py --calls 100 --duration 60

Three processes: the connector itself (`python oai_middleware.py`, pinned to CPU 0 with `taskset`
where available), the Realtime simulator and the Genesys call simulators (both pinned to CPU 1),
so the load generators do not share the connector's core. Every caller frame and the start of
every bot answer carry a 12-byte stamp of near-silent μ-law bytes, so each frame is matched across
processes (CLOCK_MONOTONIC is shared on Linux) without changing what VAD hears.

Printed per run: calls, measured window, connector CPU seconds per call-minute, added latency
per frame each way (p50/p99), bot first-audio latency, pong round trip p99, frames lost each way,
late bot frames (an underrun the caller would hear), peak RSS and RSS per call.

Added latency, caller -> OpenAI: the simulator's receive time of a frame minus the call
simulator's send time. Bot -> caller: a frame's arrival minus the moment the connector could have
sent it: when its last byte had arrived from OpenAI, and (pacing is deliberate) when real-time
pacing admits it (playback clock minus the lead, and the 100 ms message spacing).

    python bench/load.py --calls 100 --duration 30 --ramp 10 --api live
    python bench/load.py --calls 100 --duration 30 --ramp 10 --vendor gemini

The same workload against the GPT-Live simulator or the Gemini Live simulator, the connector
started with the settings that choose that backend; first the Realtime run (same calls, duration
and ramp, `--no-baseline` to skip it), then both side by side with the ratio. Stamps do not
survive Gemini's transcoding, and GPT-Live's continuous output reaches the caller without its
silences, so frames lost are counted in bytes, per call: caller -> model, what the caller sent
against what the simulator received (Gemini: 4 PCM bytes at 16 kHz per μ-law byte; GPT-Live:
appends of pure silence are the connector's input clock, not the caller's); model -> caller,
what the simulator spoke against what the caller received (Gemini: 6 PCM bytes at 24 kHz per
μ-law byte; GPT-Live: the loud 100 ms frames, louder than the connector's silence threshold).
Speech begun within TAIL_MARGIN of a hang-up is not counted. The workload has no barge-ins.
Added latency is measured where the bytes can be matched: GPT-Live's inbound μ-law carries the
stamps unchanged; otherwise a frame is matched by its byte offset, valid only while no byte is
missing (a call with a loss gives no latency that way).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fake_genesys_api import FakeGenesysApi

    from simulators.gemini_simulator import Generation, SimConnection
    from simulators.live_simulator import LiveSession
    from simulators.script import Script, Turn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the fake Genesys Cloud API

MAGIC_CALLER = bytes([0x7F, 0x7E, 0x7F, 0x7E])
MAGIC_BOT = bytes([0x7E, 0x7F, 0x7E, 0x7F])
STAMP_BYTES = 12
FRAME_BYTES = 1600  # 200 ms, as Genesys sends
LEAD, FRAME_SECONDS, MIN_INTERVAL = 0.6, 0.2, 0.1  # the connector's pacing (playout.Playout)
API_KEY = "bench-api-key"
PROGRESS_EVERY = 5.0  # seconds between progress lines on stderr


def stamp(magic: bytes, a: int, b: int) -> bytes:
    """Magic plus two 16-bit numbers as nibbles in 0xF0..0xFF: near-silent μ-law samples."""
    nibbles = [(n >> shift) & 0xF for n in (a, b) for shift in (12, 8, 4, 0)]
    return magic + bytes(0xF0 | x for x in nibbles)


def read_stamp(data: bytes, magic: bytes) -> tuple[int, int] | None:
    if len(data) < STAMP_BYTES or data[:4] != magic:
        return None
    nibbles = [x & 0xF for x in data[4:STAMP_BYTES]]
    a = (nibbles[0] << 12) | (nibbles[1] << 8) | (nibbles[2] << 4) | nibbles[3]
    b = (nibbles[4] << 12) | (nibbles[5] << 8) | (nibbles[6] << 4) | nibbles[7]
    return a, b


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generator_loop_default() -> str:
    """uvloop when installed: the generators share one core, and their own stalls would be
    counted as the connector's latency."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def use_loop(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def record_loop_lag(lags: list[float], interval: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval
        await asyncio.sleep(interval)
        lags.append(max(0.0, loop.time() - expected))


# -- role: the Realtime simulator ------------------------------------------------------------


async def bench_model(args: argparse.Namespace) -> tuple[Script, FakeGenesysApi | None]:
    """Every model simulator's script: each caller turn gets an answer of `--bot-seconds`; with
    `--tool`, each call's first answer is a Data Action call, run against a fake Genesys Cloud API
    (returned, to be stopped)."""
    from simulators.script import Script, Turn

    script = Script(default=Turn(say="This is the answer of the simulated model.", seconds=args.bot_seconds))
    if not args.tool:
        return script, None
    from fake_genesys_api import FakeAction, FakeGenesysApi

    genesys = await FakeGenesysApi().start(args.genesys_port)
    schema = {
        "type": "object",
        "title": "Bench Lookup",
        "properties": {"accountNumber": {"type": "string"}},
    }
    genesys.actions["bench-lookup"] = FakeAction(schema, result={"status": "active"}, delay=args.tool_delay)
    script.first = Turn(call="genesys_data_action_bench_lookup", arguments={"accountNumber": "12345"})
    return script, genesys


async def realtime_role(args: argparse.Namespace) -> dict:
    from simulators.realtime_simulator import RealtimeSimulator

    script, genesys = await bench_model(args)
    sim = RealtimeSimulator(script, strict=False, speed=4.0)
    sim.keep_audio = False
    sim.check_appends_every = args.check_appends_every
    appends: list[tuple[float, int, int, int]] = []
    deltas: list[tuple[float, int, int, int]] = []
    session_index: dict[int, int] = {}
    response_index: dict[str, tuple[int, int]] = {}
    emitted: dict[str, int] = {}

    def index_of(session) -> int:
        return session_index.setdefault(id(session), len(session_index))

    def append_tap(session, audio: bytes) -> None:
        mark = read_stamp(audio, MAGIC_CALLER)
        if mark is not None:
            appends.append((time.monotonic(), mark[0], mark[1], len(audio)))

    def delta_tap(session, response, chunk: bytes) -> bytes:
        if response.id not in response_index:
            response_index[response.id] = (index_of(session), len(response_index))
            chunk = stamp(MAGIC_BOT, *response_index[response.id]) + chunk[STAMP_BYTES:]
        emitted[response.id] = emitted.get(response.id, 0) + len(chunk)
        deltas.append((time.monotonic(), *response_index[response.id], emitted[response.id]))
        return chunk

    sim.append_tap = append_tap
    sim.delta_tap = delta_tap
    await sim.start("127.0.0.1", args.port)
    lags: list[float] = []
    await serve_until_term(sim, genesys, lags)
    cancelled = [
        response_index[r.id]
        for s in sim.sessions
        for r in s.responses
        if r.cancelled and r.id in response_index
    ]
    return {
        "loop_lag": lags,
        "appends": appends,
        "deltas": deltas,
        "emitted": {json.dumps(response_index[k]): v for k, v in emitted.items()},
        "cancelled": cancelled,
        "violations": sim.violations,
    }


# -- roles: the GPT-Live and Gemini Live simulators --------------------------------------------
#
# Their audio is accounted for in bytes: the stamps do not survive Gemini's transcoding, and of
# GPT-Live's continuous output track the connector forwards only the speech. The simulators have
# no taps, so the bench wraps two or three of their handlers in the role's own process.


@dataclass
class LiveRecord:
    """What one GPT-Live session was sent and said."""

    index: int | None = None  # the call: the stamp of its first caller frame (μ-law passes through)
    first_seen: float = 0.0
    caller_bytes: int = 0  # appended audio that was the caller's
    padding_bytes: int = 0  # appended pure silence: the connector's input clock
    appends: list[tuple[float, int, int]] = field(default_factory=list)  # (time, frame, bytes), stamped
    loud_times: list[float] = field(default_factory=list)  # when each loud 100 ms output frame went
    utterances: list[tuple[float, int]] = field(default_factory=list)  # (first loud frame's time, its rank)
    interruptions: int = 0


@dataclass
class GeminiRecord:
    """What one Gemini conversation (all its connections) was sent and said, in bytes."""

    index: int | None = None  # the call: CALL_TAG in the setup's system instruction
    first_seen: float = 0.0
    caller_pcm: list[tuple[float, int]] = field(default_factory=list)  # (time, PCM16 bytes so far)
    # (time, μ-law bytes the caller gets once this chunk is converted, counted over the call)
    chunks: list[tuple[float, int]] = field(default_factory=list)
    turns: list[tuple[float, int]] = field(default_factory=list)  # (start, μ-law bytes before it)
    interruptions: int = 0
    pcm_total: int = 0
    turn_samples: int = 0


CALL_TAG = "bench_call"  # CUSTOMER_DATA `bench_call:<index>`: which call a Gemini session serves
LOUD_BLOCK = 800  # GPT-Live's output frame: 100 ms of μ-law


def tap_live(records: dict[int, LiveRecord]) -> None:
    """Count what every GPT-Live session is appended and which of its output frames are speech
    (louder than the connector's own silence threshold: what it forwards)."""
    from openai_live_client import SILENCE_RMS
    from simulators.live_simulator import LiveSession, decode_base64
    from utils import ULAW_SILENCE, ulaw_rms

    appended = LiveSession.on_session_input_audio_append
    next_frame = LiveSession._next_frame
    # The utterance each session's last loud frame came from (held, so no id is reused).
    speaking: dict[int, object] = {}

    def record_of(session: LiveSession) -> LiveRecord:
        if id(session) not in records:
            records[id(session)] = LiveRecord(first_seen=time.monotonic())
        return records[id(session)]

    async def on_append(session: LiveSession, event: dict[str, Any]) -> None:
        audio = decode_base64(str(event.get("audio", ""))) or b""
        record = record_of(session)
        if audio.count(ULAW_SILENCE) == len(audio):
            record.padding_bytes += len(audio)
        else:
            record.caller_bytes += len(audio)
            mark = read_stamp(audio, MAGIC_CALLER)
            if mark is not None:
                record.index = mark[0] if record.index is None else record.index
                record.appends.append((time.monotonic(), mark[1], len(audio)))
        await appended(session, event)

    def on_frame(session: LiveSession) -> bytes:
        frame = next_frame(session)
        if ulaw_rms(frame) > SILENCE_RMS:
            record, now = record_of(session), time.monotonic()
            if speaking.get(id(session)) is not session._current:
                speaking[id(session)] = session._current
                record.utterances.append((now, len(record.loud_times)))
            record.loud_times.append(now)
        return frame

    LiveSession.on_session_input_audio_append = on_append  # type: ignore[method-assign]
    LiveSession._next_frame = on_frame  # type: ignore[method-assign]


def tap_gemini(records: dict[int, GeminiRecord]) -> None:
    """Count the PCM every Gemini conversation receives and speaks, and the μ-law bytes the
    caller should get for it: 24 kHz -> 8 kHz keeps one sample in three, the filter restarting at
    each turn, so a turn of n samples gives ceil(n / 3)."""
    import base64
    import re

    from simulators.gemini_simulator import SimConnection

    on_audio, stream, send = SimConnection._on_audio, SimConnection._stream, SimConnection.send
    tag = re.compile(CALL_TAG + r": (\d+)")

    def record_of(connection: SimConnection) -> GeminiRecord:
        session = connection.session
        if id(session) not in records:
            found = tag.search(json.dumps(session.setup if session is not None else {}))
            records[id(session)] = GeminiRecord(
                index=int(found.group(1)) if found else None, first_seen=time.monotonic()
            )
        return records[id(session)]

    async def counted_audio(connection: SimConnection, audio: dict[str, Any]) -> None:
        record = record_of(connection)
        record.pcm_total += len(base64.b64decode(str(audio.get("data") or "")))
        record.caller_pcm.append((time.monotonic(), record.pcm_total))
        await on_audio(connection, audio)

    async def counted_turn(connection: SimConnection, gen: Generation, turn: Turn, **options: Any) -> Any:
        record = record_of(connection)
        record.turns.append((time.monotonic(), record.chunks[-1][1] if record.chunks else 0))
        record.turn_samples = 0
        return await stream(connection, gen, turn, **options)

    async def counted_send(connection: SimConnection, message: dict[str, Any], audio: bool = False) -> None:
        if audio:
            record = record_of(connection)
            parts = message["serverContent"]["modelTurn"]["parts"]
            record.turn_samples += sum(len(base64.b64decode(p["inlineData"]["data"])) for p in parts) // 2
            record.chunks.append((time.monotonic(), record.turns[-1][1] + -(-record.turn_samples // 3)))
        await send(connection, message, audio)

    SimConnection._on_audio = counted_audio  # type: ignore[method-assign]
    SimConnection._stream = counted_turn  # type: ignore[method-assign]
    SimConnection.send = counted_send  # type: ignore[method-assign]


async def serve_until_term(sim: Any, genesys: FakeGenesysApi | None, lags: list[float]) -> None:
    """Say ready, run until SIGTERM, stop."""
    lag_task = asyncio.create_task(record_loop_lag(lags))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    lag_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lag_task
    await sim.stop()
    if genesys is not None:
        await genesys.stop()


async def byte_counted_role(
    args: argparse.Namespace, sim: Any, genesys: FakeGenesysApi | None, records: dict[int, Any]
) -> dict:
    """Serve `sim` until SIGTERM; its sessions as counted by the tap that filled `records`."""
    sim.keep_audio = False
    await sim.start("127.0.0.1", args.port)
    lags: list[float] = []
    await serve_until_term(sim, genesys, lags)
    for session in sim.sessions:
        if id(session) in records:
            records[id(session)].interruptions = len(session.interruptions)
    return {
        "loop_lag": lags,
        "sessions": [asdict(r) for r in records.values()],
        "violations": sim.violations,
    }


async def live_role(args: argparse.Namespace) -> dict:
    from simulators.live_simulator import LiveSimulator

    script, genesys = await bench_model(args)
    records: dict[int, LiveRecord] = {}
    tap_live(records)
    sim = LiveSimulator(script, strict=False)
    sim.check_appends_every = args.check_appends_every
    return await byte_counted_role(args, sim, genesys, records)


async def gemini_role(args: argparse.Namespace) -> dict:
    from simulators.gemini_simulator import GeminiSimulator

    script, genesys = await bench_model(args)
    records: dict[int, GeminiRecord] = {}
    tap_gemini(records)
    sim = GeminiSimulator(script, strict=False, speed=4.0)
    sim.check_audio_every = args.check_appends_every
    return await byte_counted_role(args, sim, genesys, records)


# -- role: the Genesys call simulators --------------------------------------------------------


async def callers_role(args: argparse.Namespace) -> list[dict]:
    import itertools
    import random

    from simulators.audio import silence, speech_like
    from simulators.call_simulator import GenesysCall

    turn = speech_like(args.speak_seconds, seed=3) + silence(args.turn_seconds - args.speak_seconds)
    barge = speech_like(1.0, seed=5)
    start = time.monotonic() + 0.5
    steady_at = start + args.ramp
    end_at = steady_at + args.duration
    results: list[dict] = []
    counter = itertools.count()
    opened = asyncio.Event()
    first_round: set[int] = set()
    variables = {"DATA_ACTION_IDS": "bench-lookup"} if args.tool else {}
    if args.backend == "live":
        from openai_live_client import SILENCE_RMS
        from utils import ulaw_rms

    async def one_call(index: int, slot: int, hang_up_at: float) -> dict:
        frames: list[tuple[float, int, list[int] | None]] = []
        # GPT-Live: "1" for each loud 100 ms block of the bot audio received, "0" for a quiet one.
        blocks, carry = bytearray(), bytearray()

        def tap(now: float, data: bytes) -> None:
            mark = read_stamp(data, MAGIC_BOT)
            frames.append((now, len(data), list(mark) if mark else None))
            if args.backend == "live":
                carry.extend(data)
                whole = len(carry) - len(carry) % LOUD_BLOCK
                for at in range(0, whole, LOUD_BLOCK):
                    blocks.extend(b"1" if ulaw_rms(carry[at : at + LOUD_BLOCK]) > SILENCE_RMS else b"0")
                del carry[:whole]

        call_variables = (
            {**variables, "CUSTOMER_DATA": f"{CALL_TAG}:{index}"} if args.backend == "gemini" else variables
        )
        call = GenesysCall(
            args.url,
            api_key=API_KEY,
            ping_interval=args.ping_interval,
            keep_audio=False,
            frame_tap=tap,
            input_variables=call_variables,
        )
        sent: list[tuple[float, int]] = []
        result: dict = {"index": index}
        try:
            await call.connect(timeout=30)
            await call.open(timeout=30)
            first_round.add(slot)
            if len(first_round) == args.calls:
                opened.set()
            k = turns = 0
            next_send = time.monotonic()
            while time.monotonic() < hang_up_at and call.record.disconnect is None:
                offset = (k * FRAME_BYTES) % len(turn)
                turns += offset == 0
                chunk = turn[offset : offset + FRAME_BYTES]
                if args.barge_in_every and turns % args.barge_in_every == 0:
                    # Talk over the answer: speech where this turn would be listening.
                    at = offset - int(args.speak_seconds * 8000) - int(args.barge_after * 8000)
                    if 0 <= at < len(barge):
                        chunk = (barge[at : at + FRAME_BYTES] + chunk)[:FRAME_BYTES]
                sent.append((time.monotonic(), k))
                await call.send_audio(stamp(MAGIC_CALLER, index, k & 0xFFFF) + chunk[STAMP_BYTES:])
                k += 1
                next_send += FRAME_BYTES / 8000
                await asyncio.sleep(max(0.0, next_send - time.monotonic()))
            # Let the last answer play out, then hang up.
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 1.0 and time.monotonic() < hang_up_at + 15:
                last = call.record.audio_frames[-1][0] if call.record.audio_frames else 0
                quiet_since = max(quiet_since, last)
                await asyncio.sleep(0.1)
            result["hung_up"] = time.monotonic()
            if call.record.disconnect is None:
                await call.close(timeout=10)
        except Exception as exc:  # reported, never hidden
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await call.aclose()
        result.update(
            sent=sent,
            frames=frames,
            pongs=call.record.pong_rtts,
            violations=call.record.violations,
            barge_ins=len(call.record.events("barge_in")),
            barge_in_times=[t for t, _ in call.record.events("barge_in")],
            disconnect=call.record.disconnect,
        )
        if args.backend == "live":
            result["loud_blocks"] = blocks.decode()
        return result

    async def slot(n: int) -> None:
        """One line: a call, and with churn, the next call soon after it hangs up."""
        rng = random.Random(n)
        # Real calls have random phase: spread frame send times over the 200 ms period too.
        phase = FRAME_BYTES / 8000 * ((n * 0.6180339887) % 1.0)
        begin = start + args.ramp * n / args.calls + phase
        while begin < end_at:
            await asyncio.sleep(max(0.0, begin - time.monotonic()))
            length = rng.uniform(args.churn_min, args.churn_max) if args.churn_max else end_at - begin
            results.append(await one_call(next(counter), n, min(end_at, time.monotonic() + length)))
            begin = time.monotonic() + rng.uniform(0.2, 1.0)
            if not args.churn_max:
                break

    async def ramp_progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            errors = sum(1 for r in results if "error" in r)
            print(
                f"[load callers] {time.monotonic() - start:.0f} s: {len(first_round)}/{args.calls} calls"
                f" opened, {errors} errors",
                file=sys.stderr,
                flush=True,
            )

    lags: list[float] = []
    lag_task = asyncio.create_task(record_loop_lag(lags))
    tasks = [asyncio.create_task(slot(n)) for n in range(args.calls)]
    progress_task = asyncio.create_task(ramp_progress())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.ramp + 30):
            await opened.wait()
    progress_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await progress_task
    print(f"steady {time.monotonic() if opened.is_set() else 0.0} {steady_at} {end_at}", flush=True)
    await asyncio.gather(*tasks)
    lag_task.cancel()
    results.append({"loop_lag": lags})  # the last entry: the callers process itself
    return results


# -- the orchestrator ------------------------------------------------------------------------


class ProcessStats:
    """CPU seconds and RSS of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def memory(self, key: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0


def cores_busy() -> dict[str, float]:
    """CPU seconds each core has been busy (not idle, not waiting for I/O), and stolen by the
    hypervisor, from /proc/stat: what else ran beside the benchmark's own processes."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        busy[name] = (user + nice + system + irq + softirq) / tick
        busy[name + "_steal"] = steal / tick
    return busy


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def p50_p99_ms(seconds: list[float]) -> tuple[float, float]:
    return percentile(seconds, 50) * 1000, percentile(seconds, 99) * 1000


def pong_figures(callers: list[dict]) -> dict[str, float]:
    pongs = [p for c in callers for p in c.get("pongs", [])]
    return {
        "pong_p99_ms": percentile(pongs, 99) * 1000,
        "pong_max_ms": max(pongs) * 1000 if pongs else float("nan"),
    }


def analyse(callers: list[dict], realtime: dict, steady: float, end: float, calls: int) -> dict:
    sent_at = {(c["index"], k & 0xFFFF): t for c in callers for t, k in c.get("sent", [])}
    caller_latency = []
    received_bytes: dict[int, int] = {}
    for t, i, k, size in realtime["appends"]:
        received_bytes[i] = received_bytes.get(i, 0) + size
        if size == FRAME_BYTES and (i, k) in sent_at and steady <= sent_at[(i, k)] <= end:
            caller_latency.append(t - sent_at[(i, k)])
    caller_lost = (
        sum(max(0, FRAME_BYTES * len(c.get("sent", [])) - received_bytes.get(c["index"], 0)) for c in callers)
        // FRAME_BYTES
    )
    if os.environ.get("BENCH_DEBUG"):
        for c in callers:
            got = received_bytes.get(c["index"], 0)
            if got != FRAME_BYTES * len(c.get("sent", [])):
                print(
                    "debug caller",
                    c["index"],
                    len(c["sent"]) * FRAME_BYTES,
                    got,
                    c.get("disconnect"),
                    file=sys.stderr,
                )

    deltas: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for t, s, r, cumulative in realtime["deltas"]:
        deltas.setdefault((s, r), []).append((t, cumulative))
    emitted = {tuple(json.loads(k)): v for k, v in realtime["emitted"].items()}
    cancelled = {tuple(x) for x in realtime["cancelled"]}
    bot_latency, first_audio, late, bot_lost, interrupted = [], [], 0, 0, 0
    for c in callers:
        responses: list[tuple[tuple[int, int], list[tuple[float, int]]]] = []
        for t, size, mark in c.get("frames", []):
            if mark is not None:
                responses.append((tuple(mark), []))
            if responses:
                responses[-1][1].append((t, size))
        interrupted += c.get("barge_ins", 0)
        cuts = c.get("barge_in_times", [])
        starts = [frames[0][0] for _, frames in responses] + [float("inf")]
        for n, (key, frames) in enumerate(responses):
            # A barge-in during an answer drops the rest of it on purpose: not a loss.
            cut_short = any(starts[n] <= t < starts[n + 1] for t in cuts)
            stream = deltas.get(key, [])
            if not stream or not (steady <= frames[0][0] <= end):
                continue
            first, offset, previous = frames[0][0], 0, None
            for t, size in frames:
                available = next((te for te, cum in stream if cum >= offset + size), stream[-1][0])
                due = first + offset / 8000 - (LEAD - FRAME_SECONDS)
                if previous is not None:
                    due = max(due, previous + MIN_INTERVAL)
                    if t > first + offset / 8000 + 0.02:  # arrived after the audio before it ran out
                        late += 1
                if previous is None:
                    first_audio.append(t - stream[0][0])  # from the answer's first delta
                bot_latency.append(t - (available if previous is None else max(available, due)))
                offset += size
                previous = t
            if key not in cancelled and key in emitted and not cut_short:
                bot_lost += max(0, emitted[key] - offset) // FRAME_BYTES
    return {
        "caller_to_openai_ms": p50_p99_ms(caller_latency),
        "bot_to_caller_ms": p50_p99_ms(bot_latency),
        "bot_first_audio_ms": p50_p99_ms(first_audio),
        **pong_figures(callers),
        "frames_lost_caller_to_openai": caller_lost,
        "frames_lost_bot_to_caller": bot_lost,
        "late_bot_frames": late,
        "bot_frames_measured": len(bot_latency),
        "caller_frames_measured": len(caller_latency),
        "barge_ins": interrupted,
        "errors": [c["error"] for c in callers if "error" in c],
        "violations": [v for c in callers for v in c.get("violations", [])] + realtime["violations"],
        "unexpected_disconnects": sum(1 for c in callers if c.get("disconnect")),
    }


# -- the analysis of the GPT-Live and Gemini runs: byte accounting --------------------------------

TAIL_MARGIN = 1.5  # s: model speech begun this close to a hang-up may not reach the caller
PCM_IN_PER_ULAW = 4  # PCM16 at 16 kHz per μ-law byte at 8 kHz


@dataclass(frozen=True)
class BotMessage:
    """One bot audio message a caller received, placed in the model's output."""

    t: float
    size: int
    utterance: int | None  # which of the call's model utterances (turns) it belongs to
    available: float | None  # when the model had sent all of it (None: not in the model's output)


@dataclass(frozen=True)
class Outbound:
    """Model -> caller for one call: what should have arrived, what did, and where it was from."""

    expected: int  # μ-law bytes of the answers begun TAIL_MARGIN before the hang-up
    received: int
    messages: list[BotMessage]
    starts: list[float]  # when each utterance's first audio left the model


def sessions_in_order(sessions: list[dict]) -> list[dict]:
    return sorted(sessions, key=lambda s: s["first_seen"])


def live_inbound(call: dict, sessions: list[dict], steady: float, end: float) -> tuple[int, list[float]]:
    """(caller bytes the model got, latency of the whole frames sent in the window). μ-law goes
    through unchanged, so the stamps say which frame an append is; pure silence is the
    connector's input clock, not the caller's."""
    sent_at = {k & 0xFFFF: t for t, k in call.get("sent", [])}
    latency = [
        t - sent_at[k]
        for s in sessions
        for t, k, size in s["appends"]
        if size == FRAME_BYTES and k in sent_at and steady <= sent_at[k] <= end
    ]
    return sum(s["caller_bytes"] for s in sessions), latency


def gemini_inbound(call: dict, sessions: list[dict], steady: float, end: float) -> tuple[int, list[float]]:
    """(caller bytes the model got, in μ-law bytes; latency of the frames sent in the window).
    Frame k has arrived once 4 × 1600 × (k + 1) PCM bytes have: a valid match only when no byte
    is missing, so with a loss no latency is taken."""
    arrivals: list[tuple[float, int]] = []
    base = 0
    for s in sessions_in_order(sessions):
        arrivals += [(t, base + total) for t, total in s["caller_pcm"]]
        base += s["pcm_total"]
    sent = call.get("sent", [])
    latency: list[float] = []
    if base == PCM_IN_PER_ULAW * FRAME_BYTES * len(sent):
        j = 0
        for n, (t_sent, _) in enumerate(sent):
            while arrivals[j][1] < PCM_IN_PER_ULAW * FRAME_BYTES * (n + 1):
                j += 1
            if steady <= t_sent <= end:
                latency.append(arrivals[j][0] - t_sent)
    return base // PCM_IN_PER_ULAW, latency


def live_outbound(call: dict, sessions: list[dict]) -> Outbound:
    """GPT-Live speaks a continuous track of 100 ms frames; the connector forwards the speech
    whole (an in-speech pause with the loud frame after it) and withholds long silences, so the
    loud frames are compared: the n-th loud block a caller got is the model's n-th loud frame."""
    loud_times: list[float] = []
    utterances: list[tuple[float, int]] = []
    for s in sessions_in_order(sessions):
        utterances += [(t, rank + len(loud_times)) for t, rank in s["utterances"]]
        loud_times += s["loud_times"]
    counted = sum(1 for t, _ in utterances if t <= call.get("hung_up", float("inf")) - TAIL_MARGIN)
    expected = utterances[counted][1] if counted < len(utterances) else len(loud_times)
    blocks = call.get("loud_blocks", "")
    rank_before = [0]  # loud blocks before block b: a block's own rank if loud, the next loud's if quiet
    for flag in blocks:
        rank_before.append(rank_before[-1] + (flag == "1"))
    firsts = [rank for _, rank in utterances]
    messages, position = [], 0
    for t, size, _ in call.get("frames", []):
        first, last = position // LOUD_BLOCK, (position + size - 1) // LOUD_BLOCK
        position += size
        if last >= len(blocks) or rank_before[last] >= len(loud_times) or not firsts:
            messages.append(BotMessage(t, size, None, None))
            continue
        utterance = bisect.bisect_right(firsts, rank_before[first]) - 1
        messages.append(BotMessage(t, size, utterance, loud_times[rank_before[last]]))
    return Outbound(LOUD_BLOCK * expected, LOUD_BLOCK * rank_before[-1], messages, [t for t, _ in utterances])


def gemini_outbound(call: dict, sessions: list[dict]) -> Outbound:
    """Gemini's 24 kHz PCM16 is 6 bytes per μ-law byte; the connector forwards all of it, so a
    caller's n-th byte is the n-th μ-law byte of the model's turns converted."""
    chunks: list[tuple[float, int]] = []
    turns: list[tuple[float, int]] = []
    for s in sessions_in_order(sessions):
        base = chunks[-1][1] if chunks else 0
        chunks += [(t, base + total) for t, total in s["chunks"]]
        turns += [(t, base + before) for t, before in s["turns"]]
    counted = sum(1 for t, _ in turns if t <= call.get("hung_up", float("inf")) - TAIL_MARGIN)
    expected = turns[counted][1] if counted < len(turns) else (chunks[-1][1] if chunks else 0)
    ends = [total for _, total in chunks]
    bases = [before for _, before in turns]
    messages, position = [], 0
    for t, size, _ in call.get("frames", []):
        j = bisect.bisect_left(ends, position + size)  # the chunk that completes this message
        utterance = bisect.bisect_right(bases, position) - 1
        messages.append(
            BotMessage(
                t, size, utterance if utterance >= 0 else None, chunks[j][0] if j < len(chunks) else None
            )
        )
        position += size
    return Outbound(expected, position, messages, [t for t, _ in turns])


def bot_timing(out: Outbound, steady: float, end: float) -> tuple[list[float], list[float], int]:
    """(added latency per frame, first audio per answer, late frames) of the answers whose first
    frame arrived in the window, by the same pacing model as `analyse`."""
    latency: list[float] = []
    first_audio: list[float] = []
    late = 0
    current: int | None = None
    first, offset, previous = 0.0, 0, None
    for m in out.messages:
        if m.utterance is None or m.available is None:
            current = None
            continue
        if m.utterance != current:
            current, first, offset, previous = m.utterance, m.t, 0, None
        measured = steady <= first <= end
        due = first + offset / 8000 - (LEAD - FRAME_SECONDS)
        if previous is not None:
            due = max(due, previous + MIN_INTERVAL)
            if measured and m.t > first + offset / 8000 + 0.02:  # after the audio before it ran out
                late += 1
        if measured:
            if previous is None:
                first_audio.append(m.t - out.starts[m.utterance])
            latency.append(m.t - (m.available if previous is None else max(m.available, due)))
        offset += m.size
        previous = m.t
    return latency, first_audio, late


def analyse_bytes(callers: list[dict], model: dict, backend: str, steady: float, end: float) -> dict:
    """Frames lost each way by byte accounting, per call; latency per frame where the bytes can
    be matched (see `live_inbound`, `gemini_inbound`, `live_outbound`, `gemini_outbound`)."""
    sessions: dict[int, list[dict]] = {}
    for s in model["sessions"]:
        sessions.setdefault(s["index"], []).append(s)
    inbound = live_inbound if backend == "live" else gemini_inbound
    outbound = live_outbound if backend == "live" else gemini_outbound
    caller_latency: list[float] = []
    bot_latency: list[float] = []
    first_audio: list[float] = []
    totals = dict.fromkeys(("sent", "got", "in_short", "in_extra", "spoken", "heard", "out_short"), 0)
    lost_in = lost_out = late = unmatched_calls = 0
    for c in callers:
        mine = sessions.get(c["index"], [])
        unmatched_calls += not mine
        sent = FRAME_BYTES * len(c.get("sent", []))
        got, latency = inbound(c, mine, steady, end)
        short = max(0, sent - got)
        out = outbound(c, mine)
        out_short = max(0, out.expected - out.received)
        lost_in += -(-short // FRAME_BYTES)
        lost_out += -(-out_short // FRAME_BYTES)
        caller_latency += latency
        if not out_short:  # with a byte missing, later bytes would be matched to the wrong audio
            latency, first, n_late = bot_timing(out, steady, end)
            bot_latency += latency
            first_audio += first
            late += n_late
        for key, value in (
            ("sent", sent),
            ("got", got),
            ("in_short", short),
            ("in_extra", max(0, got - sent)),
            ("spoken", out.expected),
            ("heard", out.received),
            ("out_short", out_short),
        ):
            totals[key] += value
        if os.environ.get("BENCH_DEBUG") and (short or out_short):
            print("debug call", c["index"], sent, got, out.expected, out.received, file=sys.stderr)
    return {
        "caller_to_model_ms": p50_p99_ms(caller_latency),
        "bot_to_caller_ms": p50_p99_ms(bot_latency),
        "bot_first_audio_ms": p50_p99_ms(first_audio),
        **pong_figures(callers),
        "frames_lost_caller_to_model": lost_in,
        "frames_lost_model_to_caller": lost_out,
        "bytes": totals,
        "input_padding_bytes": sum(s.get("padding_bytes", 0) for s in model["sessions"]),
        "late_bot_frames": late,
        "bot_frames_measured": len(bot_latency),
        "caller_frames_measured": len(caller_latency),
        "barge_ins": sum(c.get("barge_ins", 0) for c in callers),
        "model_interruptions": sum(s["interruptions"] for s in model["sessions"]),
        "unmatched_calls": unmatched_calls,
        "unmatched_sessions": len(sessions.get(None, [])),
        "errors": [c["error"] for c in callers if "error" in c],
        "violations": [v for c in callers for v in c.get("violations", [])] + model["violations"],
        "unexpected_disconnects": sum(1 for c in callers if c.get("disconnect")),
    }


def scrape(port: int) -> dict[str, float]:
    """The connector's own /metrics, as {name{labels}: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def histogram_p99(metrics: dict[str, float], name: str) -> float:
    """The upper bound of the bucket holding the 99th percentile (over the whole run)."""
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v)
        for k, v in metrics.items()
        if k.startswith(name + "_bucket")
    )
    total = buckets[-1][1] if buckets else 0
    return (
        next((le for le, count in buckets if count >= 0.99 * total), float("nan")) if total else float("nan")
    )


def sum_of(metrics: dict[str, float], prefix: str, contains: str = "") -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix) and contains in k)


def idle_state(port: int, wait: float, timeout: float = 60.0) -> dict[str, float]:
    """Tasks and file descriptors once no call is left (a leak shows as growth between two)."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if metrics.get("connector_active_calls", 0) == 0 or time.monotonic() > deadline:
            # Closing sockets finish, and pooled keep-alive connections to the Genesys API
            # expire (aiohttp closes one idle for 15 s at its next sweep, and sweeps every
            # 15 s: up to 30 s): what is open after that was leaked (`wait`, 35 s by default).
            time.sleep(wait)
            metrics = scrape(port)
            return {
                "tasks": metrics["connector_event_loop_tasks"],
                "fds": metrics["connector_process_open_fds"],
            }
        time.sleep(0.5)


def role(me: list[str], args: argparse.Namespace, name: str, out: Path, **extra: object) -> list[str]:
    argv = [*me, "--role", name, "--out", str(out), "--loop", args.generator_loop]
    for key in (
        "calls",
        "duration",
        "ramp",
        "speak_seconds",
        "turn_seconds",
        "bot_seconds",
        "barge_in_every",
        "barge_after",
        "ping_interval",
        "churn_min",
        "churn_max",
        "tool_delay",
        "check_appends_every",
    ):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.tool:
        argv.append("--tool")
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return pinned(1, argv)


def print_progress(metrics: dict[str, float], elapsed: float, window: float, stats: ProcessStats) -> None:
    """One line on stderr: how far the measured window is, and what the connector counts."""
    frames_in = sum_of(metrics, "connector_audio_frames_total", "caller_to_connector")
    frames_out = sum_of(metrics, "connector_audio_frames_total", "connector_to_caller")
    print(
        f"[load] {elapsed:.0f} s of {window:.0f}: {metrics.get('connector_active_calls', 0):.0f} calls up,"
        f" frames {frames_in:.0f} in / {frames_out:.0f} out, {sum_of(metrics, 'connector_errors_total'):.0f}"
        f" errors, RSS {stats.memory() / 2**20:.1f} MiB",
        file=sys.stderr,
        flush=True,
    )


def backend_environment(backend: str, port: int) -> dict[str, str]:
    """The connector's settings that choose the backend and point it at the simulator on `port`
    (set in full: a vendor or API in the caller's environment must not leak into the run)."""
    if backend == "live":
        return {
            "AI_VENDOR": "openai",
            "OPENAI_API": "live",
            "OPENAI_MODEL": "gpt-live-1",
            "OPENAI_LIVE_URL": f"ws://127.0.0.1:{port}/v1/live/sessions",
            "OPENAI_API_BASE_URL": f"http://127.0.0.1:{port}/v1",
        }
    if backend == "gemini":
        from simulators.gemini_simulator import WS_PATH

        return {
            "AI_VENDOR": "gemini",
            "GEMINI_API_KEY": "bench-gemini-key",
            "GEMINI_LIVE_URL": f"ws://127.0.0.1:{port}{WS_PATH}",
            "GEMINI_API_BASE_URL": f"http://127.0.0.1:{port}",
        }
    return {
        "AI_VENDOR": "openai",
        "OPENAI_API": "realtime",
        "OPENAI_MODEL": "gpt-realtime-2.1-mini",
        "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{port}/v1/realtime",
    }


def orchestrate(args: argparse.Namespace, backend: str = "realtime") -> dict:
    from fake_genesys_api import CLIENT_ID, CLIENT_SECRET

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    model_port, connector_port, genesys_port = free_port(), free_port(), free_port()
    me = [sys.executable, str(Path(__file__).resolve())]
    model = subprocess.Popen(
        role(me, args, backend, work / "model.json", port=model_port, genesys_port=genesys_port),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert model.stdout is not None
    if model.stdout.readline().strip() != "ready":
        raise SystemExit(f"the {LABELS[backend]} simulator did not start")
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(connector_port),
        "GENESYS_API_KEY": API_KEY,
        "OPENAI_API_KEY": "sk-bench",
        **backend_environment(backend, model_port),
        "LOG_LEVEL": "WARNING",
        "MAX_CONCURRENT_CALLS": str(args.calls + 10),
        "EVENT_LOOP": args.loop,
        "IDLE_TIMEOUT_SECONDS": "600",
    }
    if args.tool:
        env.update(
            ENABLE_GENESYS_DATA_ACTIONS="true",
            GENESYS_CLIENT_ID=CLIENT_ID,
            GENESYS_CLIENT_SECRET=CLIENT_SECRET,
            GENESYS_BASE_URL=f"http://127.0.0.1:{genesys_port}",
            GENESYS_LOGIN_URL=f"http://127.0.0.1:{genesys_port}",
        )
    log_file = open(work / "connector.log", "w")
    connector = subprocess.Popen(
        pinned(0, [sys.executable, str(ROOT / "oai_middleware.py")]), env=env, stderr=log_file, cwd=work
    )
    stats = ProcessStats(connector.pid)
    samples: list[dict[str, float]] = []
    try:
        wait_http(f"http://127.0.0.1:{connector_port}/health")
        time.sleep(0.5)
        baseline_rss = stats.memory()
        idle_before = idle_state(connector_port, args.idle_wait)
        callers = subprocess.Popen(
            role(
                me,
                args,
                "callers",
                work / "callers.json",
                url=f"ws://127.0.0.1:{connector_port}/audiohook",
                backend=backend,
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert callers.stdout is not None
        words = callers.stdout.readline().split()
        steady_seen, steady, end = float(words[1]), float(words[2]), float(words[3])
        if not steady_seen:
            print("warning: not every call opened during the ramp", file=sys.stderr)
        while time.monotonic() < steady:
            time.sleep(0.05)
        generators = [ProcessStats(model.pid), ProcessStats(callers.pid)]
        generator_start = sum(g.cpu() for g in generators)
        busy_start = cores_busy()
        cpu_start, t_start = stats.cpu(), time.monotonic()
        peak_rss = stats.memory()
        next_sample = t_start
        next_progress = t_start + PROGRESS_EVERY
        while time.monotonic() < end:
            peak_rss = max(peak_rss, stats.memory())
            if time.monotonic() >= next_progress:
                print_progress(scrape(connector_port), time.monotonic() - t_start, end - t_start, stats)
                next_progress += PROGRESS_EVERY
            if args.sample_every and time.monotonic() >= next_sample:
                metrics = scrape(connector_port)
                samples.append(
                    {
                        "t": time.monotonic() - t_start,
                        "rss_mib": stats.memory() / 2**20,
                        "calls": metrics["connector_active_calls"],
                        "tasks": metrics["connector_event_loop_tasks"],
                        "fds": metrics["connector_process_open_fds"],
                    }
                )
                next_sample += args.sample_every
            time.sleep(0.25)
        cpu_end, t_end = stats.cpu(), time.monotonic()
        generator_cpu = sum(g.cpu() for g in generators) - generator_start
        busy = {k: v - busy_start[k] for k, v in cores_busy().items()}
        callers.wait(timeout=args.duration + 120)
        final = scrape(connector_port)
        idle_after = idle_state(connector_port, args.idle_wait)
        model.send_signal(signal.SIGTERM)
        model.wait(timeout=60)
        hwm = stats.memory("VmHWM")
    finally:
        connector.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            connector.wait(timeout=40)
        connector.kill()
        model.kill()  # already gone after a clean run; after a failure it would be left behind
        log_file.close()
    callers_data = json.loads((work / "callers.json").read_text())
    callers_lag = callers_data.pop()["loop_lag"]
    model_data = json.loads((work / "model.json").read_text())
    if backend == "realtime":
        result = analyse(callers_data, model_data, steady, end, args.calls)
    else:
        result = analyse_bytes(callers_data, model_data, backend, steady, end)
    call_minutes = args.calls * (t_end - t_start) / 60
    log_lines = (work / "connector.log").read_text().splitlines()
    result.update(
        backend=backend,
        calls=args.calls,
        calls_placed=len(callers_data),
        window_s=t_end - t_start,
        loop=args.loop,
        generator_loop=args.generator_loop,
        cpu_s_per_call_minute=(cpu_end - cpu_start) / call_minutes,
        cpu_utilisation=(cpu_end - cpu_start) / (t_end - t_start),
        generator_utilisation=generator_cpu / (t_end - t_start),
        # Other processes on the connector's core (CPU 0) and on the generators' (CPU 1), and what
        # the hypervisor stole: a disturbed run shows here.
        others_utilisation={
            "connector_core": (busy.get("cpu0", 0) - (cpu_end - cpu_start)) / (t_end - t_start),
            "generators_core": (busy.get("cpu1", 0) - generator_cpu) / (t_end - t_start),
            "steal": sum(v for k, v in busy.items() if k.endswith("_steal")) / (t_end - t_start),
        },
        baseline_rss_mib=baseline_rss / 2**20,
        peak_rss_mib=max(peak_rss, hwm) / 2**20,
        rss_per_call_kib=(peak_rss - baseline_rss) / args.calls / 1024,
        connector_warnings=sum(1 for line in log_lines if " WARNING " in line or " ERROR " in line),
        connector_warning_lines=[line for line in log_lines if " WARNING " in line or " ERROR " in line][:10],
        tool_calls_ok=sum_of(final, "connector_tool_calls_total", 'result="ok"'),
        tool_calls_failed=sum_of(final, "connector_tool_calls_total", 'result="error"'),
        connector_barge_ins=final.get("connector_barge_ins_total", 0),
        full_collections=final.get("connector_full_collection_seconds_count", 0),
        full_collection_ms=1000
        * final.get("connector_full_collection_seconds_sum", 0)
        / max(1, final.get("connector_full_collection_seconds_count", 0)),
        outcomes={k.split('"')[1]: v for k, v in final.items() if k.startswith("connector_calls_total")},
        loop_lag_p99_ms={
            "connector": histogram_p99(final, "connector_event_loop_lag_seconds") * 1000,
            f"{backend}_simulator": percentile(model_data["loop_lag"], 99) * 1000,
            "call_simulators": percentile(callers_lag, 99) * 1000,
        },
        loop_lag_max_ms={
            f"{backend}_simulator": max(model_data["loop_lag"], default=0) * 1000,
            "call_simulators": max(callers_lag, default=0) * 1000,
        },
        idle_before=idle_before,
        idle_after=idle_after,
        samples=samples,
        pinned=bool(shutil.which("taskset")),
    )
    return result


def others(r: dict) -> str:
    o = r["others_utilisation"]
    return (
        f"{o['connector_core'] * 100:.0f} % of the connector's core, {o['generators_core'] * 100:.0f} % of the"
        f" generators' (hypervisor steal {o['steal'] * 100:.0f} %)"
    )


def report_start(r: dict, label: str) -> None:
    """The lines every run begins with: what ran, for how long, and the CPU it took."""
    print(
        f"calls                         {r['calls']} {label}(connector {r['loop']} loop, generators"
        f" {r.get('generator_loop', r['loop'])}, taskset {'yes' if r['pinned'] else 'no'})"
    )
    print(f"measured window               {r['window_s']:.1f} s")
    print(
        f"connector CPU                 {r['cpu_s_per_call_minute']:.3f} s per call-minute ({r['cpu_utilisation'] * 100:.0f} % of one core)"
    )
    print(f"load generators CPU           {r['generator_utilisation'] * 100:.0f} % of the other core")
    print(f"other processes CPU           {others(r)}")


def report(r: dict) -> None:
    report_start(r, "")
    print(
        f"added latency caller->OpenAI  p50 {r['caller_to_openai_ms'][0]:.2f} ms  p99 {r['caller_to_openai_ms'][1]:.2f} ms  ({r['caller_frames_measured']} frames)"
    )
    print(
        f"added latency bot->caller     p50 {r['bot_to_caller_ms'][0]:.2f} ms  p99 {r['bot_to_caller_ms'][1]:.2f} ms  ({r['bot_frames_measured']} frames)"
    )
    print(
        f"bot first audio after delta   p50 {r['bot_first_audio_ms'][0]:.2f} ms  p99 {r['bot_first_audio_ms'][1]:.2f} ms"
    )
    print(f"pong round trip               p99 {r['pong_p99_ms']:.2f} ms  max {r['pong_max_ms']:.2f} ms")
    lag, top = r["loop_lag_p99_ms"], r["loop_lag_max_ms"]
    print(
        f"event loop lag p99            connector <= {lag['connector']:.1f} ms, realtime sim {lag['realtime_simulator']:.1f} ms"
        f" (max {top['realtime_simulator']:.0f}), call sims {lag['call_simulators']:.1f} ms (max {top['call_simulators']:.0f})"
    )
    print(
        f"full garbage collections      {r['full_collections']:.0f}, {r['full_collection_ms']:.0f} ms each on average"
    )
    print(
        f"frames lost                   caller->OpenAI {r['frames_lost_caller_to_openai']}  bot->caller {r['frames_lost_bot_to_caller']}"
    )
    print(f"late bot frames (underruns)   {r['late_bot_frames']}")
    print(
        f"barge-ins                     {r['barge_ins']} (connector counted {r['connector_barge_ins']:.0f})"
    )
    print(f"tool calls                    {r['tool_calls_ok']:.0f} ok, {r['tool_calls_failed']:.0f} failed")
    print(
        f"calls placed / outcomes       {r['calls_placed']} / {', '.join(f'{k} {v:.0f}' for k, v in sorted(r['outcomes'].items()))}"
    )
    report_end(r)


def report_end(r: dict) -> None:
    """The lines every run ends with: what was left idle, memory, and what went wrong."""
    print(
        f"idle tasks / fds              before {r['idle_before']['tasks']:.0f} / {r['idle_before']['fds']:.0f}, after {r['idle_after']['tasks']:.0f} / {r['idle_after']['fds']:.0f}"
    )
    print(
        f"peak RSS                      {r['peak_rss_mib']:.1f} MiB (idle {r['baseline_rss_mib']:.1f} MiB), {r['rss_per_call_kib']:.0f} KiB per call"
    )
    print(
        f"errors / violations           {len(r['errors'])} / {len(r['violations'])}; connector WARNING+ lines {r['connector_warnings']}"
    )
    for line in (r["errors"] + r["violations"] + r["connector_warning_lines"])[:10]:
        print(f"  {line}")


LABELS = {"realtime": "Realtime", "live": "GPT-Live", "gemini": "Gemini Live"}
METHODS = {
    "live": (
        "stamps: μ-law goes through unchanged",
        "loud 100 ms frames matched in order (the connector withholds silences); first audio includes the 500 ms pre-roll",
    ),
    "gemini": (
        "byte offsets: 4 PCM bytes at 16 kHz per μ-law byte",
        "byte offsets: 6 PCM bytes at 24 kHz per μ-law byte",
    ),
}


def report_bytes(r: dict) -> None:
    """A GPT-Live or Gemini run: the same lines as `report` where they mean the same, bytes where
    stamps cannot be used."""
    inbound, outbound = METHODS[r["backend"]]
    b = r["bytes"]
    lag, top = r["loop_lag_p99_ms"], r["loop_lag_max_ms"]
    model = f"{r['backend']}_simulator"
    report_start(r, LABELS[r["backend"]] + " ")
    print(
        f"added latency caller->model   p50 {r['caller_to_model_ms'][0]:.2f} ms  p99 {r['caller_to_model_ms'][1]:.2f} ms  ({r['caller_frames_measured']} frames; {inbound})"
    )
    print(
        f"added latency bot->caller     p50 {r['bot_to_caller_ms'][0]:.2f} ms  p99 {r['bot_to_caller_ms'][1]:.2f} ms  ({r['bot_frames_measured']} frames; {outbound})"
    )
    print(
        f"bot first audio after model's p50 {r['bot_first_audio_ms'][0]:.2f} ms  p99 {r['bot_first_audio_ms'][1]:.2f} ms"
    )
    print(f"pong round trip               p99 {r['pong_p99_ms']:.2f} ms  max {r['pong_max_ms']:.2f} ms")
    print(
        f"event loop lag p99            connector <= {lag['connector']:.1f} ms, model sim {lag[model]:.1f} ms"
        f" (max {top[model]:.0f}), call sims {lag['call_simulators']:.1f} ms (max {top['call_simulators']:.0f})"
    )
    print(
        f"full garbage collections      {r['full_collections']:.0f}, {r['full_collection_ms']:.0f} ms each on average"
    )
    print(
        f"frames lost                   caller->model {r['frames_lost_caller_to_model']}  bot->caller {r['frames_lost_model_to_caller']}"
    )
    print(
        f"  caller->model bytes         {b['sent']} sent, {b['got']} received (μ-law equivalent), {b['in_short']} short, {b['in_extra']} extra;"
        f" connector's silence padding {r['input_padding_bytes']}"
    )
    print(
        f"  bot->caller bytes           {b['spoken']} spoken (μ-law equivalent), {b['heard']} received, {b['out_short']} short"
    )
    print(f"late bot frames (underruns)   {r['late_bot_frames']}")
    print(
        f"barge-ins                     {r['barge_ins']} (connector counted {r['connector_barge_ins']:.0f}, model stopped {r['model_interruptions']})"
    )
    print(f"tool calls                    {r['tool_calls_ok']:.0f} ok, {r['tool_calls_failed']:.0f} failed")
    print(
        f"calls placed / outcomes       {r['calls_placed']} / {', '.join(f'{k} {v:.0f}' for k, v in sorted(r['outcomes'].items()))};"
        f" calls without a model session {r['unmatched_calls']}, sessions without a call {r['unmatched_sessions']}"
    )
    report_end(r)


def lost(r: dict) -> tuple[int, int]:
    """Frames lost (caller -> model, model -> caller), whichever way the run counted them."""
    if r["backend"] == "realtime":
        return r["frames_lost_caller_to_openai"], r["frames_lost_bot_to_caller"]
    return r["frames_lost_caller_to_model"], r["frames_lost_model_to_caller"]


def ratios(r: dict, baseline: dict) -> dict[str, float]:
    keys = ("cpu_s_per_call_minute", "pong_p99_ms", "rss_per_call_kib")
    return {k: r[k] / baseline[k] if baseline[k] else float("nan") for k in keys}


def report_side_by_side(r: dict, baseline: dict) -> None:
    """The figures the issues compare, one column per backend, with the ratio to Realtime."""
    ratio = ratios(r, baseline)
    inbound = baseline.get("caller_to_openai_ms"), r["caller_to_model_ms"]
    rows = (
        (
            "connector CPU s per call-minute",
            *(f"{x['cpu_s_per_call_minute']:.3f}" for x in (baseline, r)),
            f"{ratio['cpu_s_per_call_minute']:.2f}x",
        ),
        ("connector CPU, % of one core", *(f"{x['cpu_utilisation'] * 100:.0f} %" for x in (baseline, r)), ""),
        (
            "load generators, % of the other",
            *(f"{x['generator_utilisation'] * 100:.0f} %" for x in (baseline, r)),
            "",
        ),
        (
            "other processes, % of each core",
            *(
                f"{x['others_utilisation']['connector_core'] * 100:.0f} / {x['others_utilisation']['generators_core'] * 100:.0f} %"
                for x in (baseline, r)
            ),
            "",
        ),
        (
            "pong p99 (max) ms",
            *(f"{x['pong_p99_ms']:.2f} ({x['pong_max_ms']:.1f})" for x in (baseline, r)),
            f"{ratio['pong_p99_ms']:.2f}x",
        ),
        (
            "connector loop lag p99 ms",
            *(f"<= {x['loop_lag_p99_ms']['connector']:.1f}" for x in (baseline, r)),
            "",
        ),
        (
            "model sim / call sims lag p99 ms",
            *(
                f"{x['loop_lag_p99_ms'][x['backend'] + '_simulator']:.1f} / {x['loop_lag_p99_ms']['call_simulators']:.1f}"
                for x in (baseline, r)
            ),
            "",
        ),
        (
            "RSS per call KiB (peak MiB)",
            *(f"{x['rss_per_call_kib']:.0f} ({x['peak_rss_mib']:.1f})" for x in (baseline, r)),
            f"{ratio['rss_per_call_kib']:.2f}x",
        ),
        ("frames lost caller->model", *(str(lost(x)[0]) for x in (baseline, r)), ""),
        ("frames lost model->caller", *(str(lost(x)[1]) for x in (baseline, r)), ""),
        ("added latency caller->model p50/p99", *(f"{x[0]:.2f} / {x[1]:.2f}" for x in inbound), ""),
        (
            "added latency bot->caller p50/p99",
            *(f"{x['bot_to_caller_ms'][0]:.2f} / {x['bot_to_caller_ms'][1]:.2f}" for x in (baseline, r)),
            "",
        ),
        ("late bot frames", *(str(x["late_bot_frames"]) for x in (baseline, r)), ""),
        ("barge-ins", *(str(x["barge_ins"]) for x in (baseline, r)), ""),
        (
            "errors / violations / warnings",
            *(
                f"{len(x['errors'])} / {len(x['violations'])} / {x['connector_warnings']}"
                for x in (baseline, r)
            ),
            "",
        ),
    )
    print(f"{'':38}{'Realtime':>18}{LABELS[r['backend']]:>18}{'ratio':>8}")
    for name, left, right, times in rows:
        print(f"{name:38}{left:>18}{right:>18}{times:>8}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--role", choices=("orchestrate", "realtime", "live", "gemini", "callers"), default="orchestrate"
    )
    p.add_argument(
        "--api",
        choices=("realtime", "live"),
        default="realtime",
        help="OpenAI's API: live runs the GPT-Live simulator and backend (after a Realtime baseline)",
    )
    p.add_argument(
        "--vendor",
        choices=("openai", "gemini"),
        default="openai",
        help="gemini runs the Gemini Live simulator and backend (after a Realtime baseline)",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="with --api live or --vendor gemini: no Realtime run"
    )
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds, after the ramp")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which calls are opened")
    p.add_argument("--speak-seconds", type=float, default=1.5, help="caller speech per turn")
    p.add_argument("--turn-seconds", type=float, default=6.0, help="length of a caller turn incl. listening")
    p.add_argument("--bot-seconds", type=float, default=2.5, help="length of each bot answer")
    p.add_argument("--barge-in-every", type=int, default=0, help="talk over every Nth answer (0: never)")
    p.add_argument("--barge-after", type=float, default=1.2, help="seconds into the listening part to cut in")
    p.add_argument("--tool", action="store_true", help="each call's first answer is a Data Action call")
    p.add_argument("--tool-delay", type=float, default=0.3, help="seconds the fake Data Action takes")
    p.add_argument(
        "--ping-interval", type=float, default=1.0, help="seconds between AudioHook pings per call"
    )
    p.add_argument(
        "--churn-min", type=float, default=0.0, help="with --churn-max: calls last a random time between"
    )
    p.add_argument(
        "--churn-max",
        type=float,
        default=0.0,
        help="...these bounds, and a new call follows each (0: no churn)",
    )
    p.add_argument(
        "--sample-every", type=float, default=0.0, help="seconds between samples of RSS, tasks and fds"
    )
    p.add_argument(
        "--check-appends-every",
        type=int,
        default=20,
        help="the simulator validates one audio append in this many (other events: all)",
    )
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the connector's")
    p.add_argument(
        "--generator-loop",
        choices=("asyncio", "uvloop"),
        default=generator_loop_default(),
        help="the simulators' (default: uvloop when installed, the lighter instrument)",
    )
    p.add_argument(
        "--idle-wait",
        type=float,
        default=35.0,
        help="seconds to wait with no call before counting idle tasks and fds (keep-alives expire)",
    )
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--port", type=int)
    p.add_argument("--genesys-port", type=int)
    p.add_argument("--url")
    p.add_argument("--out")
    p.add_argument("--backend", choices=tuple(LABELS), default="realtime", help="(the callers role's)")
    args = p.parse_args()
    if args.vendor == "gemini" and args.api == "live":
        p.error("--api live is OpenAI's GPT-Live; Gemini has one API (--vendor gemini alone)")
    target = "gemini" if args.vendor == "gemini" else args.api
    if target != "realtime" and args.barge_in_every:
        p.error(
            "--barge-in-every: the byte accounting of GPT-Live and Gemini runs needs a workload without barge-ins"
        )
    if args.role != "orchestrate":
        use_loop(args.loop)
        # The generators get the connector's collector tuning, so their stalls do not count
        # against the connector's latency.
        from oai_middleware import tune_garbage_collector

        tune_garbage_collector()
        roles = {"realtime": realtime_role, "live": live_role, "gemini": gemini_role, "callers": callers_role}
        Path(args.out).write_text(json.dumps(asyncio.run(roles[args.role](args))))
        return 0
    if target == "realtime":
        result = orchestrate(args)
        report(result)
    else:
        baseline = None if args.no_baseline else orchestrate(args, "realtime")
        result = orchestrate(args, target)
        if baseline is not None:
            print("== Realtime (baseline, same workload)")
            report(baseline)
            print(f"\n== {LABELS[target]}")
        report_bytes(result)
        if baseline is not None:
            result.update(baseline=baseline, ratios=ratios(result, baseline))
            print(f"\n== {LABELS[target]} beside Realtime")
            report_side_by_side(result, baseline)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
