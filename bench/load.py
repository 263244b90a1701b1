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
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAGIC_CALLER = bytes([0x7F, 0x7E, 0x7F, 0x7E])
MAGIC_BOT = bytes([0x7E, 0x7F, 0x7E, 0x7F])
STAMP_BYTES = 12
FRAME_BYTES = 1600  # 200 ms, as Genesys sends
LEAD, FRAME_SECONDS, MIN_INTERVAL = 0.6, 0.2, 0.1  # the connector's pacing (playout.Playout)
API_KEY = "bench-api-key"


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


def use_loop(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# -- role: the Realtime simulator ------------------------------------------------------------


async def realtime_role(args: argparse.Namespace) -> dict:
    from realtime_simulator import RealtimeSimulator, Script, Turn

    script = Script(default=Turn(say="This is the answer of the simulated model.", seconds=args.bot_seconds))
    sim = RealtimeSimulator(script, strict=False, speed=4.0)
    sim.keep_audio = False
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
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    cancelled = [
        response_index[r.id]
        for s in sim.sessions
        for r in s.responses
        if r.cancelled and r.id in response_index
    ]
    await sim.stop()
    return {
        "appends": appends,
        "deltas": deltas,
        "emitted": {json.dumps(response_index[k]): v for k, v in emitted.items()},
        "cancelled": cancelled,
        "violations": sim.violations,
    }


# -- role: the Genesys call simulators --------------------------------------------------------


async def callers_role(args: argparse.Namespace) -> list[dict]:
    from call_simulator import GenesysCall
    from utils import silence, speech_like

    turn = speech_like(args.speak_seconds, seed=3) + silence(args.turn_seconds - args.speak_seconds)
    barge = speech_like(1.0, seed=5)
    start = time.monotonic() + 0.5
    steady_at = start + args.ramp
    end_at = steady_at + args.duration
    results: list[dict] = [{} for _ in range(args.calls)]
    opened = asyncio.Event()
    opened_count = 0

    async def one_call(i: int) -> None:
        nonlocal opened_count
        # Real calls have random phase: spread frame send times over the 200 ms period too.
        phase = FRAME_BYTES / 8000 * ((i * 0.6180339887) % 1.0)
        await asyncio.sleep(max(0.0, start + args.ramp * i / args.calls + phase - time.monotonic()))
        frames: list[tuple[float, int, list[int] | None]] = []

        def tap(now: float, data: bytes) -> None:
            mark = read_stamp(data, MAGIC_BOT)
            frames.append((now, len(data), list(mark) if mark else None))

        call = GenesysCall(args.url, api_key=API_KEY, ping_interval=1.0, keep_audio=False, frame_tap=tap)
        sent: list[tuple[float, int]] = []
        result = results[i]
        try:
            await call.connect(timeout=30)
            await call.open(timeout=30)
            opened_count += 1
            if opened_count == args.calls:
                opened.set()
            k = 0
            turns = 0
            barge_from = None
            next_send = time.monotonic()
            while time.monotonic() < end_at and call.record.disconnect is None:
                offset = (k * FRAME_BYTES) % len(turn)
                if offset == 0:
                    turns += 1
                    barge_from = None
                chunk = turn[offset : offset + FRAME_BYTES]
                if args.barge_in_every and turns % args.barge_in_every == 0:
                    # Talk over the answer: speech where this turn would be listening.
                    at = offset - int(args.speak_seconds * 8000) - int(args.barge_after * 8000)
                    if at >= 0 and at < len(barge):
                        barge_from = barge_from if barge_from is not None else k
                        chunk = barge[at : at + FRAME_BYTES]
                frame = stamp(MAGIC_CALLER, i, k & 0xFFFF) + chunk[STAMP_BYTES:]
                sent.append((time.monotonic(), k))
                await call.send_audio(frame)
                k += 1
                next_send += FRAME_BYTES / 8000
                await asyncio.sleep(max(0.0, next_send - time.monotonic()))
            # Let the last answer play out, then hang up.
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 1.0 and time.monotonic() < end_at + 15:
                last = call.record.audio_frames[-1][0] if call.record.audio_frames else 0
                quiet_since = max(quiet_since, last)
                await asyncio.sleep(0.1)
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
            disconnect=call.record.disconnect,
        )

    tasks = [asyncio.create_task(one_call(i)) for i in range(args.calls)]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.ramp + 30):
            await opened.wait()
    print(f"steady {time.monotonic() if opened.is_set() else 0.0} {steady_at} {end_at}", flush=True)
    await asyncio.gather(*tasks)
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


def analyse(callers: list[dict], realtime: dict, steady: float, end: float, calls: int) -> dict:
    sent_at = {(i, k & 0xFFFF): t for i, c in enumerate(callers) for t, k in c.get("sent", [])}
    caller_latency = []
    received_bytes = [0] * len(callers)
    for t, i, k, size in realtime["appends"]:
        if i < len(received_bytes):
            received_bytes[i] += size
        if size == FRAME_BYTES and (i, k) in sent_at and steady <= sent_at[(i, k)] <= end:
            caller_latency.append(t - sent_at[(i, k)])
    sent_bytes = [FRAME_BYTES * len(c.get("sent", [])) for c in callers]
    caller_lost = sum(max(0, s - r) for s, r in zip(sent_bytes, received_bytes, strict=True)) // FRAME_BYTES

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
        for key, frames in responses:
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
            if key not in cancelled and key in emitted:
                bot_lost += max(0, emitted[key] - offset) // FRAME_BYTES
    pongs = [p for c in callers for p in c.get("pongs", [])]
    return {
        "caller_to_openai_ms": (percentile(caller_latency, 50) * 1000, percentile(caller_latency, 99) * 1000),
        "bot_to_caller_ms": (percentile(bot_latency, 50) * 1000, percentile(bot_latency, 99) * 1000),
        "bot_first_audio_ms": (percentile(first_audio, 50) * 1000, percentile(first_audio, 99) * 1000),
        "pong_p99_ms": percentile(pongs, 99) * 1000,
        "pong_max_ms": max(pongs) * 1000 if pongs else float("nan"),
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


def orchestrate(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    realtime_port, connector_port = free_port(), free_port()
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--loop", args.loop]
    realtime = subprocess.Popen(
        pinned(
            1,
            [
                *me,
                "--role",
                "realtime",
                "--port",
                str(realtime_port),
                "--out",
                str(work / "realtime.json"),
                "--bot-seconds",
                str(args.bot_seconds),
                *common,
            ],
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert realtime.stdout is not None
    if realtime.stdout.readline().strip() != "ready":
        raise SystemExit("the Realtime simulator did not start")
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(connector_port),
        "GENESYS_API_KEY": API_KEY,
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_MODEL": "gpt-realtime-2.1-mini",
        "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{realtime_port}/v1/realtime",
        "LOG_LEVEL": "WARNING",
        "MAX_CONCURRENT_CALLS": str(args.calls + 10),
        "EVENT_LOOP": args.loop,
    }
    log_file = open(work / "connector.log", "w")
    connector = subprocess.Popen(
        pinned(0, [sys.executable, str(ROOT / "oai_middleware.py")]), env=env, stderr=log_file, cwd=work
    )
    stats = ProcessStats(connector.pid)
    try:
        wait_http(f"http://127.0.0.1:{connector_port}/health")
        time.sleep(0.5)
        baseline_rss = stats.memory()
        callers = subprocess.Popen(
            pinned(
                1,
                [
                    *me,
                    "--role",
                    "callers",
                    "--url",
                    f"ws://127.0.0.1:{connector_port}/audiohook",
                    "--calls",
                    str(args.calls),
                    "--duration",
                    str(args.duration),
                    "--ramp",
                    str(args.ramp),
                    "--out",
                    str(work / "callers.json"),
                    "--speak-seconds",
                    str(args.speak_seconds),
                    "--turn-seconds",
                    str(args.turn_seconds),
                    "--barge-in-every",
                    str(args.barge_in_every),
                    "--barge-after",
                    str(args.barge_after),
                    *common,
                ],
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
        generators = [ProcessStats(realtime.pid), ProcessStats(callers.pid)]
        generator_start = sum(g.cpu() for g in generators)
        cpu_start, t_start = stats.cpu(), time.monotonic()
        peak_rss = stats.memory()
        while time.monotonic() < end:
            peak_rss = max(peak_rss, stats.memory())
            time.sleep(0.25)
        cpu_end, t_end = stats.cpu(), time.monotonic()
        generator_cpu = sum(g.cpu() for g in generators) - generator_start
        callers.wait(timeout=args.duration + 120)
        realtime.send_signal(signal.SIGTERM)
        realtime.wait(timeout=30)
        hwm = stats.memory("VmHWM")
    finally:
        connector.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            connector.wait(timeout=40)
        connector.kill()
        log_file.close()
    result = analyse(
        json.loads((work / "callers.json").read_text()),
        json.loads((work / "realtime.json").read_text()),
        steady,
        end,
        args.calls,
    )
    minutes = args.calls * (t_end - t_start) / 60
    log_lines = (work / "connector.log").read_text().splitlines()
    result.update(
        calls=args.calls,
        window_s=t_end - t_start,
        loop=args.loop,
        cpu_s_per_call_minute=(cpu_end - cpu_start) / minutes,
        cpu_utilisation=(cpu_end - cpu_start) / (t_end - t_start),
        generator_utilisation=generator_cpu / (t_end - t_start),
        baseline_rss_mib=baseline_rss / 2**20,
        peak_rss_mib=max(peak_rss, hwm) / 2**20,
        rss_per_call_kib=(peak_rss - baseline_rss) / args.calls / 1024,
        connector_warnings=sum(1 for line in log_lines if " WARNING " in line or " ERROR " in line),
        pinned=bool(shutil.which("taskset")),
    )
    return result


def report(r: dict) -> None:
    print(
        f"calls                         {r['calls']} ({r['loop']} loop, taskset {'yes' if r['pinned'] else 'no'})"
    )
    print(f"measured window               {r['window_s']:.1f} s")
    print(
        f"connector CPU                 {r['cpu_s_per_call_minute']:.3f} s per call-minute ({r['cpu_utilisation'] * 100:.0f} % of one core)"
    )
    print(f"load generators CPU           {r['generator_utilisation'] * 100:.0f} % of the other core")
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
    print(
        f"frames lost                   caller->OpenAI {r['frames_lost_caller_to_openai']}  bot->caller {r['frames_lost_bot_to_caller']}"
    )
    print(f"late bot frames (underruns)   {r['late_bot_frames']}")
    print(f"barge-ins                     {r['barge_ins']}")
    print(
        f"peak RSS                      {r['peak_rss_mib']:.1f} MiB (idle {r['baseline_rss_mib']:.1f} MiB), {r['rss_per_call_kib']:.0f} KiB per call"
    )
    print(
        f"errors / violations           {len(r['errors'])} / {len(r['violations'])}; connector WARNING+ lines {r['connector_warnings']}"
    )
    for line in (r["errors"] + r["violations"])[:10]:
        print(f"  {line}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("orchestrate", "realtime", "callers"), default="orchestrate")
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds, after the ramp")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which calls are opened")
    p.add_argument("--speak-seconds", type=float, default=1.5, help="caller speech per turn")
    p.add_argument("--turn-seconds", type=float, default=6.0, help="length of a caller turn incl. listening")
    p.add_argument("--bot-seconds", type=float, default=2.5, help="length of each bot answer")
    p.add_argument("--barge-in-every", type=int, default=0, help="talk over every Nth answer (0: never)")
    p.add_argument("--barge-after", type=float, default=1.2, help="seconds into the listening part to cut in")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--port", type=int)
    p.add_argument("--url")
    p.add_argument("--out")
    args = p.parse_args()
    if args.role in ("realtime", "callers"):
        use_loop(args.loop)
        role = realtime_role if args.role == "realtime" else callers_role
        Path(args.out).write_text(json.dumps(asyncio.run(role(args))))
        return 0
    result = orchestrate(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
