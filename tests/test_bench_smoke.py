"""The load benchmark still runs end to end for every backend (no timing is asserted: figures are
for bench/), and its byte accounting sees a loss when there is one."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from conftest import ROOT

# Three calls, a few seconds: a caller turn of 5 s leaves room for a 1 s answer and the GPT-Live
# connector's 0.8 s of silence that ends it, so no caller speech lands on an answer (no barge-in).
SHORT_RUN = ("--calls", "3", "--duration", "4", "--ramp", "1", "--turn-seconds", "5", "--bot-seconds", "1")


def run_load(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "load.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), *flags, "--idle-wait", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_load_benchmark_runs_and_loses_nothing(tmp_path):
    figures = run_load(
        tmp_path,
        *("--calls", "3", "--duration", "4", "--ramp", "1", "--turn-seconds", "4", "--bot-seconds", "1"),
    )
    assert figures["backend"] == "realtime"
    assert figures["errors"] == [] and figures["violations"] == []
    assert figures["frames_lost_caller_to_openai"] == 0 and figures["frames_lost_bot_to_caller"] == 0
    assert figures["caller_frames_measured"] > 0 and figures["bot_frames_measured"] > 0


def assert_byte_accounting_clean(figures: dict, backend: str) -> None:
    assert figures["backend"] == backend
    assert figures["errors"] == [] and figures["violations"] == []
    assert figures["connector_warnings"] == 0, figures["connector_warning_lines"]
    assert figures["unmatched_calls"] == 0 and figures["unmatched_sessions"] == 0
    assert figures["barge_ins"] == 0 and figures["model_interruptions"] == 0
    assert figures["frames_lost_caller_to_model"] == 0 and figures["frames_lost_model_to_caller"] == 0
    counted = figures["bytes"]
    # Every caller byte reached the model, and nothing else was taken for the caller's.
    assert counted["sent"] > 0 and counted["got"] == counted["sent"]
    # The model spoke, and the callers got all of that speech.
    assert counted["spoken"] > 0 and counted["heard"] >= counted["spoken"] and counted["out_short"] == 0
    assert figures["caller_frames_measured"] > 0 and figures["bot_frames_measured"] > 0
    assert figures["cpu_s_per_call_minute"] > 0


def test_gpt_live_benchmark_runs_and_loses_nothing(tmp_path):
    figures = run_load(tmp_path, *SHORT_RUN, "--api", "live", "--no-baseline")
    assert_byte_accounting_clean(figures, "live")
    assert "baseline" not in figures
    # The connector keeps GPT-Live's timeline moving with silence of its own: not caller audio.
    assert figures["input_padding_bytes"] > 0


def test_gemini_benchmark_runs_and_loses_nothing(tmp_path):
    figures = run_load(tmp_path, *SHORT_RUN, "--vendor", "gemini", "--no-baseline")
    assert_byte_accounting_clean(figures, "gemini")
    # Gemini's speech is transcoded 24 kHz -> 8 kHz: the callers get exactly a sixth of its bytes.
    assert figures["bytes"]["heard"] == figures["bytes"]["spoken"]


def test_byte_accounting_counts_a_missing_frame_each_way():
    bench = load_bench()
    sent = [(10.0 + 0.2 * k, k) for k in range(3)]
    # Gemini: two of three caller frames arrived (6,400 PCM bytes each); a turn of 24,000 samples
    # (8,000 μ-law bytes) of which the caller got 6,400.
    gemini_session = {
        "index": 0,
        "first_seen": 9.0,
        "caller_pcm": [(10.01, 6400), (10.21, 12800)],
        "pcm_total": 12800,
        "chunks": [(11.0, 4000), (11.1, 8000)],
        "turns": [(11.0, 0)],
        "interruptions": 0,
    }
    caller = {"index": 0, "sent": sent, "frames": [(11.5, 3200, None), (11.7, 3200, None)], "hung_up": 20.0}
    figures = bench.analyse_bytes([caller], {"sessions": [gemini_session], "violations": []}, "gemini", 0, 30)
    assert figures["frames_lost_caller_to_model"] == 1
    assert figures["frames_lost_model_to_caller"] == 1
    assert figures["bytes"]["in_short"] == 1600 and figures["bytes"]["out_short"] == 1600
    # GPT-Live: ten loud 100 ms frames spoken, nine loud blocks heard (one of them short).
    live_session = {
        "index": 0,
        "first_seen": 9.0,
        "caller_bytes": 3 * 1600,
        "padding_bytes": 800,
        "appends": [(10.0 + 0.2 * k + 0.001, k, 1600) for k in range(3)],
        "loud_times": [11.0 + 0.1 * n for n in range(10)],
        "utterances": [(11.0, 0)],
        "interruptions": 0,
    }
    caller = {
        "index": 0,
        "sent": sent,
        "frames": [(11.5, 7200, None)],
        "loud_blocks": "1" * 9,
        "hung_up": 20.0,
    }
    figures = bench.analyse_bytes([caller], {"sessions": [live_session], "violations": []}, "live", 0, 30)
    assert figures["frames_lost_caller_to_model"] == 0
    assert figures["frames_lost_model_to_caller"] == 1 and figures["bytes"]["out_short"] == 800
    # Speech begun just before the caller hung up is not counted as lost.
    caller["hung_up"] = 11.0 + bench.TAIL_MARGIN / 2
    figures = bench.analyse_bytes([caller], {"sessions": [live_session], "violations": []}, "live", 0, 30)
    assert figures["frames_lost_model_to_caller"] == 0
