"""Prometheus metrics, exposed on `/metrics`; every name starts with `connector_`.

One `Metrics` object per connector (its own registry, no module-level state), passed to the
sessions and bridges. Hot-path children (audio frames each way) are bound once.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import itertools
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Outcomes of a call, for connector_calls_total{outcome}.
COMPLETED = "completed"
ESCALATED = "escalated"
CALLER_HANGUP = "caller_hangup"
PROBE = "probe"
GENESYS_DROPPED = "genesys_dropped"
UNAUTHORIZED = "unauthorized"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.active_calls = Gauge(
            "connector_active_calls", "Calls in progress (AudioHook sessions).", registry=r
        )
        # connector_process_resident_memory_bytes, _open_fds, _cpu_seconds_total...: leaks show here.
        ProcessCollector(namespace="connector", registry=r)
        tasks = Gauge("connector_event_loop_tasks", "asyncio tasks alive (scraped on the loop).", registry=r)
        tasks.set_function(lambda: len(asyncio.all_tasks()))
        self.calls = Counter(
            "connector_calls",
            "Calls ended, by outcome: completed, escalated, caller_hangup, probe, genesys_dropped, "
            "unauthorized, or error_<kind>.",
            ["outcome"],
            registry=r,
        )
        frames = Counter(
            "connector_audio_frames", "Binary audio frames, by direction.", ["direction"], registry=r
        )
        audio = Counter(
            "connector_audio_bytes", "Audio bytes (PCMU), by direction.", ["direction"], registry=r
        )
        self.frames_in, self.frames_out = (
            frames.labels("caller_to_connector"),
            frames.labels("connector_to_caller"),
        )
        self.bytes_in, self.bytes_out = (
            audio.labels("caller_to_connector"),
            audio.labels("connector_to_caller"),
        )
        self.barge_ins = Counter("connector_barge_ins", "Caller barge-ins that cut bot audio.", registry=r)
        self.tool_calls = Counter(
            "connector_tool_calls",
            "Tool calls by the model, by tool and result.",
            ["tool", "result"],
            registry=r,
        )
        self.mcp_events = Counter(
            "connector_mcp_events", "Remote MCP events, by type.", ["event"], registry=r
        )
        self.openai_reconnects = Counter(
            "connector_openai_reconnects",
            "OpenAI sockets replaced, by reason (dropped, recycled).",
            ["reason"],
            registry=r,
        )
        self.openai_attempts = Counter(
            "connector_openai_connect_attempts",
            "Attempts to open a model socket, by result: connected, refused, unreachable, or "
            "failed_early (accepted, then closed before it proved healthy).",
            ["result"],
            registry=r,
        )
        self.resumptions = Counter(
            "connector_gemini_resumptions",
            "Gemini Live sessions resumed on a new connection (goAway or a drop), by result: "
            "resumed, refused (the handle was not taken), fresh (a new session with the transcript).",
            ["result"],
            registry=r,
        )
        self.auth_failures = Counter(
            "connector_auth_failures", "Refused upgrade requests, by reason.", ["reason"], registry=r
        )
        self.errors = Counter("connector_errors", "Errors, by kind.", ["kind"], registry=r)
        self.time_to_opened = Histogram(
            "connector_time_to_opened_seconds",
            "From the client's open to our opened on the wire.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.first_bot_audio = Histogram(
            "connector_first_bot_audio_seconds",
            "From the end of caller speech (as OpenAI reported it) to the first bot audio sent to Genesys.",
            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=r,
        )
        self.tool_latency = Histogram(
            "connector_tool_latency_seconds",
            "Data Action execution time, by tool.",
            ["tool"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.loop_lag = Histogram(
            "connector_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every 100 ms): stalls show here first.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.full_collections = Histogram(
            "connector_full_collection_seconds",
            "Duration of the periodic full garbage collection (it pauses every call).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.pong_latency = Histogram(
            "connector_pong_latency_seconds",
            "From a ping read to its pong on the wire.",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def watch_loop_lag(histogram: Histogram, interval: float = 0.1) -> None:
    """Sleep `interval` over and over and record how late each wake-up is."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - expected))


TRIM_INTERVAL = 60.0
FULL_COLLECTION_EVERY = 10  # trims: a full collection every ten minutes
log = logging.getLogger("connector")


def malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)` where the C library has it (Linux with glibc; not musl or macOS)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def collect_garbage(
    histogram: Histogram, interval: float = TRIM_INTERVAL, collect_every: int = FULL_COLLECTION_EVERY
) -> None:
    """Every `interval` seconds, free heap pages back to the OS; every `collect_every` times,
    run a full garbage collection first.

    The connector's own objects are freed by reference counting when a call ends (the fault
    tests check it), but asyncio's socket transports and the WebSocket library leave about 1 KB
    of small reference cycles per call. With the tuned thresholds (`tune_garbage_collector`)
    CPython's automatic full collections are rare, so this one bounds that memory. Each full
    collection pauses every call at once (about 125 ms at 500 calls), so it runs seldom.
    Audio buffers of many sizes come and go with the calls and fragment the C heap, and its free
    pages are not returned by themselves: a soak measured RSS growing 6 % in five minutes without
    `malloc_trim`, 1 % with it once a minute.
    """
    trim = malloc_trim()
    for round_ in itertools.count(1):
        await asyncio.sleep(interval)
        if round_ % collect_every == 0:
            started = time.perf_counter()
            freed = gc.collect()
            elapsed = time.perf_counter() - started
            histogram.observe(elapsed)
            log.debug("full garbage collection: %d objects freed in %.1f ms", freed, elapsed * 1000)
        if trim is not None:
            trim()
