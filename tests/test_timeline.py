"""The HTML picture of a real call (connector + Realtime simulator): what it holds, parsed, and
what a real browser draws of it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import API_KEY, ws_url

from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.script import Script, Turn
from simulators.timeline import Timeline

BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


class Page(HTMLParser):
    """The parts of a timeline page the tests read."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.data_text = ""
        self.variables: dict[str, str] = {}
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self._row: list[str] = []
        self._cell: str | None = None
        self.feed(text)

    def within(self, tag: str, id_: str) -> bool:
        return any(t == tag and a.get("id") == id_ for t, a in self.stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in ("meta", "br", "img", "input", "link", "line", "rect"):
            self.stack.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = []
        elif tag == "td":
            self._cell = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self.within("table", "output-variables") and len(self._row) == 2:
            self.variables[self._row[0]] = self._row[1]
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data
        if self.within("script", "call-data"):
            self.data_text += data

    def count(self, tag: str, *classes: str) -> int:
        return sum(
            1 for t, a in self.elements if t == tag and set(classes) <= set((a.get("class") or "").split())
        )


async def barge_in_and_hang_up_call(app) -> GenesysCall:
    """The caller asks, talks over the answer, and the bot ends the call with a tool and a farewell."""
    call = GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=None)
    async with call:
        await call.open()
        await call.stream(speech_like(1.0, seed=10) + silence(0.6))
        async with asyncio.timeout(10):
            while not call.record.audio_frames:
                await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, call.record.audio_frames[0][0] + 1.5 - time.monotonic()))
        streaming = asyncio.create_task(call.stream(speech_like(1.0, seed=11) + silence(10)))
        await call.wait_disconnect(20)
        streaming.cancel()
    return call


_pages: dict[str, Path] = {}


async def call_page(bridged, directory: Path) -> tuple[Path, GenesysCall | None]:
    """One real call's timeline page, drawn once for the tests of this module."""
    if "page" in _pages:
        return _pages["page"], None
    script = Script(
        turns=[
            Turn(say="A long answer that the caller will interrupt.", seconds=5.0),
            Turn(call="end_conversation_successfully", arguments={"summary": "Caller asked; bot answered."}),
        ],
        farewell=Turn(say="Thanks for calling, goodbye!", seconds=1.2),
    )
    app, sim = await bridged(script)
    call = await barge_in_and_hang_up_call(app)
    assert call.record.violations == [] and sim.violations == []
    timeline = Timeline.from_call(call, title="A call with a barge-in <and> a tool")
    timeline.add_model_events(sim.sessions[0].timeline)
    path = directory / "call.html"
    timeline.write(path)
    _pages["page"] = path
    return path, call


async def test_the_page_holds_both_lanes_the_barge_in_the_tool_the_farewell_and_the_variables(
    bridged, tmp_path
):
    _pages.clear()
    path, call = await call_page(bridged, tmp_path)
    assert call is not None
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    data = json.loads(page.data_text)

    lanes = {lane["name"]: lane["frames"] for lane in data["lanes"]}
    assert set(lanes) == {"caller", "bot"}
    assert sum(1 for _, _, level in lanes["caller"] if level > 500) >= 8  # two spoken seconds
    assert lanes["bot"] and all(level > 0 for _, _, level in lanes["bot"])
    heard = sum(seconds for _, seconds, _ in lanes["bot"])
    received = call.bot_audio_seconds
    assert heard < received  # the barge-in flushed what had not been played

    marks = {m["kind"]: m for m in data["marks"]}
    barge_in_at = call.record.events("barge_in")[0][0] - call.started_at
    assert abs(marks["barge_in"]["t"] - barge_in_at) < 0.01
    assert marks["disconnect"]["label"] == "disconnect completed"
    assert abs(marks["disconnect"]["t"] - (call.record.disconnect_at - call.started_at)) < 0.01
    assert data["duration"] >= marks["closed"]["t"] >= marks["disconnect"]["t"]

    spans = {s["kind"]: s for s in data["spans"]}
    tool = spans["tool"]
    assert tool["label"].startswith("end_conversation_successfully (") and tool["end"] >= tool["start"]
    farewell = spans["farewell"]
    assert farewell["start"] > tool["start"] and farewell["end"] <= marks["disconnect"]["t"] + 0.01
    assert marks["barge_in"]["t"] < tool["start"]

    variables = call.record.output_variables
    assert variables and variables["COMPLETION_SUMMARY"] == "Caller asked; bot answered."
    assert data["output_variables"] == variables
    assert page.variables == variables  # the table shows them all, escaped and unchanged

    # Self-contained: nothing fetched, the title escaped, the JSON cannot close its element.
    assert not [a for t, a in page.elements if a.get("src") or (t == "link" and a.get("href"))]
    assert "url(" not in text and "@import" not in text
    assert "<title>A call with a barge-in &lt;and&gt; a tool</title>" in text
    assert data["title"] == "A call with a barge-in <and> a tool" and "<" not in page.data_text


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


async def test_a_real_browser_draws_the_lanes(bridged, tmp_path):
    binary = browser()
    if binary is None:
        pytest.skip("no chromium here (apt-get install chromium)")
    path, _ = await call_page(bridged, tmp_path)
    data = json.loads(Page(path.read_text(encoding="utf-8")).data_text)
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        path.as_uri(),
    ]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Page(done.stdout)
    assert any(
        t == "div" and a.get("id") == "chart" and a.get("data-rendered") == "yes" for t, a in dom.elements
    )
    assert any(t == "svg" and a.get("id") == "timeline" for t, a in dom.elements)
    drawn = {
        lane: sum(1 for _, _, level in frames if level > 0)
        for lane, frames in ((x["name"], x["frames"]) for x in data["lanes"])
    }
    assert dom.count("rect", "level", "caller") == drawn["caller"] > 0
    assert dom.count("rect", "level", "bot") == drawn["bot"] > 0
    assert dom.count("g", "mark", "barge_in") == 1
    assert dom.count("g", "mark", "disconnect") == 1
    assert dom.count("g", "span", "tool") == 1
