"""The load benchmark still runs end to end (no timing is asserted: figures are for bench/)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_load_benchmark_runs_and_loses_nothing(tmp_path):
    out = tmp_path / "load.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            "--calls",
            "3",
            "--duration",
            "4",
            "--ramp",
            "1",
            "--turn-seconds",
            "4",
            "--bot-seconds",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["errors"] == [] and figures["violations"] == []
    assert figures["frames_lost_caller_to_openai"] == 0 and figures["frames_lost_bot_to_caller"] == 0
    assert figures["caller_frames_measured"] > 0 and figures["bot_frames_measured"] > 0
