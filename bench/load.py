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


async def realtime_role(args: argparse.Namespace) -> dict:
    from simulators.realtime_simulator import RealtimeSimulator
    from simulators.script import Script, Turn

    script = Script(default=Turn(say="This is the answer of the simulated model.", seconds=args.bot_seconds))
    genesys = None
    if args.tool:
        # Each call's first answer is a Data Action call, run against a fake Genesys Cloud API.
        from fake_genesys_api import FakeAction, FakeGenesysApi

        genesys = await FakeGenesysApi().start(args.genesys_port)
        schema = {
            "type": "object",
            "title": "Bench Lookup",
            "properties": {"accountNumber": {"type": "string"}},
        }
        genesys.actions["bench-lookup"] = FakeAction(
            schema, result={"status": "active"}, delay=args.tool_delay
        )
        script.first = Turn(call="genesys_data_action_bench_lookup", arguments={"accountNumber": "12345"})
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
    lag_task = asyncio.create_task(record_loop_lag(lags))
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
    lag_task.cancel()
    await sim.stop()
    if genesys is not None:
        await genesys.stop()
    return {
        "loop_lag": lags,
        "appends": appends,
        "deltas": deltas,
        "emitted": {json.dumps(response_index[k]): v for k, v in emitted.items()},
        "cancelled": cancelled,
        "violations": sim.violations,
    }


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

    async def one_call(index: int, slot: int, hang_up_at: float) -> dict:
        frames: list[tuple[float, int, list[int] | None]] = []

        def tap(now: float, data: bytes) -> None:
            mark = read_stamp(data, MAGIC_BOT)
            frames.append((now, len(data), list(mark) if mark else None))

        call = GenesysCall(
            args.url,
            api_key=API_KEY,
            ping_interval=args.ping_interval,
            keep_audio=False,
            frame_tap=tap,
            input_variables=variables,
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


def idle_state(port: int, timeout: float = 60.0) -> dict[str, float]:
    """Tasks and file descriptors once no call is left (a leak shows as growth between two)."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if metrics.get("connector_active_calls", 0) == 0 or time.monotonic() > deadline:
            # Closing sockets finish, and pooled keep-alive connections to the Genesys API
            # expire (aiohttp closes one idle for 15 s at its next sweep, and sweeps every
            # 15 s: up to 30 s): what is open after that was leaked.
            time.sleep(35.0)
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


def orchestrate(args: argparse.Namespace) -> dict:
    from fake_genesys_api import CLIENT_ID, CLIENT_SECRET

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    realtime_port, connector_port, genesys_port = free_port(), free_port(), free_port()
    me = [sys.executable, str(Path(__file__).resolve())]
    realtime = subprocess.Popen(
        role(me, args, "realtime", work / "realtime.json", port=realtime_port, genesys_port=genesys_port),
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
        idle_before = idle_state(connector_port)
        callers = subprocess.Popen(
            role(
                me, args, "callers", work / "callers.json", url=f"ws://127.0.0.1:{connector_port}/audiohook"
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
        callers.wait(timeout=args.duration + 120)
        final = scrape(connector_port)
        idle_after = idle_state(connector_port)
        realtime.send_signal(signal.SIGTERM)
        realtime.wait(timeout=60)
        hwm = stats.memory("VmHWM")
    finally:
        connector.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            connector.wait(timeout=40)
        connector.kill()
        realtime.kill()  # already gone after a clean run; after a failure it would be left behind
        log_file.close()
    callers_data = json.loads((work / "callers.json").read_text())
    callers_lag = callers_data.pop()["loop_lag"]
    realtime_data = json.loads((work / "realtime.json").read_text())
    result = analyse(callers_data, realtime_data, steady, end, args.calls)
    call_minutes = args.calls * (t_end - t_start) / 60
    log_lines = (work / "connector.log").read_text().splitlines()
    result.update(
        calls=args.calls,
        calls_placed=len(callers_data),
        window_s=t_end - t_start,
        loop=args.loop,
        generator_loop=args.generator_loop,
        cpu_s_per_call_minute=(cpu_end - cpu_start) / call_minutes,
        cpu_utilisation=(cpu_end - cpu_start) / (t_end - t_start),
        generator_utilisation=generator_cpu / (t_end - t_start),
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
            "realtime_simulator": percentile(realtime_data["loop_lag"], 99) * 1000,
            "call_simulators": percentile(callers_lag, 99) * 1000,
        },
        loop_lag_max_ms={
            "realtime_simulator": max(realtime_data["loop_lag"], default=0) * 1000,
            "call_simulators": max(callers_lag, default=0) * 1000,
        },
        idle_before=idle_before,
        idle_after=idle_after,
        samples=samples,
        pinned=bool(shutil.which("taskset")),
    )
    return result


def report(r: dict) -> None:
    print(
        f"calls                         {r['calls']} (connector {r['loop']} loop, generators"
        f" {r.get('generator_loop', r['loop'])}, taskset {'yes' if r['pinned'] else 'no'})"
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
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--port", type=int)
    p.add_argument("--genesys-port", type=int)
    p.add_argument("--url")
    p.add_argument("--out")
    args = p.parse_args()
    if args.role in ("realtime", "callers"):
        use_loop(args.loop)
        # The generators get the connector's collector tuning, so their stalls do not count
        # against the connector's latency.
        from oai_middleware import tune_garbage_collector

        tune_garbage_collector()
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
