"""Soak: calls starting and ending continuously for a long time, watching for leaks.

    python bench/soak.py --calls 50 --minutes 30

The same three processes as `bench/load.py` (the connector pinned to one core). Each of the
`--calls` lines places a call lasting 20 to 90 seconds (real-time caller audio, bot answers, a
Data Action call, a barge-in every fourth answer), hangs up, and dials again, for `--minutes`.
Every 10 seconds the connector's RSS and its own metrics (live asyncio tasks, open file
descriptors, calls) are sampled.

Printed: RSS growth after the warm-up (mean of the first sampled minute after `--warmup` versus
the last minute; target under 5 %), asyncio tasks and file descriptors with no call in progress
before and after the run (equal means nothing leaked), frames lost each way, calls placed and
their outcomes, and the latency figures of `load.py` over the whole run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load


def soak_figures(result: dict, warmup_s: float) -> dict:
    samples = [s for s in result["samples"] if s["t"] >= warmup_s]
    if len(samples) < 12:
        raise SystemExit("not enough samples after the warm-up: run longer")
    first = statistics.mean(s["rss_mib"] for s in samples[:6])
    last = statistics.mean(s["rss_mib"] for s in samples[-6:])
    return {
        "rss_after_warmup_mib": first,
        "rss_at_end_mib": last,
        "rss_growth_percent": (last - first) / first * 100,
        "max_tasks_during": max(s["tasks"] for s in result["samples"]),
        "max_fds_during": max(s["fds"] for s in result["samples"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=50, help="calls in progress at any time")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=300.0, help="seconds before RSS growth is measured")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    run = argparse.Namespace(
        calls=args.calls,
        duration=args.minutes * 60,
        ramp=30.0,
        speak_seconds=1.5,
        turn_seconds=6.0,
        bot_seconds=2.5,
        barge_in_every=4,
        barge_after=1.2,
        ping_interval=5.0,
        churn_min=20.0,
        churn_max=90.0,
        tool=True,
        tool_delay=0.3,
        check_appends_every=1,  # the generators are far from busy: validate every event
        sample_every=10.0,
        loop=args.loop,
        generator_loop=load.generator_loop_default(),
    )
    result = load.orchestrate(run)
    result.update(soak_figures(result, args.warmup))
    load.report(result)
    print(
        f"RSS after warm-up / at end    {result['rss_after_warmup_mib']:.1f} / {result['rss_at_end_mib']:.1f} MiB "
        f"({result['rss_growth_percent']:+.2f} %)"
    )
    print(f"most tasks / fds during       {result['max_tasks_during']:.0f} / {result['max_fds_during']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
