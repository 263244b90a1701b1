"""A picture of one simulated call: a self-contained HTML page (no network, no external fonts).

Two lanes show the caller's and the bot's audio over time, one bar per frame as loud as the
frame; the bot's lane is what the caller heard (played back to back, barge-ins flushed). Marks
show the events (barge-ins, DTMF, the bot's turns, the `disconnect` with its reason, `closed`);
spans show what took time (tool calls with their latency, the farewell). The output variables
are a table. The data is embedded as JSON (`<script type="application/json" id="call-data">`) and
drawn as SVG by an inline script.

    timeline = Timeline.from_call(call)               # a finished GenesysCall
    timeline.add_model_events(sim_session.timeline)   # what only the model simulator saw
    timeline.write("call.html")
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simulators.call_simulator import RATE, GenesysCall, Played, bot_playout
from utils import ulaw_rms

BOT_TURN_GAP = 0.3  # seconds of silence that end one bot turn and start another
FAREWELL_BEFORE_DISCONNECT = 1.5  # a last bot turn ending this close to a completed disconnect


@dataclass(frozen=True)
class Frame:
    """One frame of audio on a lane: from `start`, for `seconds`, at an RMS `level` (16-bit scale)."""

    start: float
    seconds: float
    level: int


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    kind: str
    label: str


@dataclass(frozen=True)
class Mark:
    t: float
    kind: str
    label: str


class Timeline:
    """What happened in a call, on one time axis (monotonic seconds in, seconds from `origin` out)."""

    def __init__(self, origin: float, *, title: str = "Simulated call") -> None:
        self.origin = origin
        self.title = title
        self.caller: list[Frame] = []
        self.bot: list[Frame] = []
        self.spans: list[Span] = []
        self.marks: list[Mark] = []
        self.output_variables: dict[str, str] = {}
        self.facts: list[tuple[str, str]] = []
        self.end = origin

    # -- building

    @classmethod
    def from_call(cls, call: GenesysCall, *, title: str | None = None) -> Timeline:
        record = call.record
        timeline = cls(call.started_at, title=title or f"Call {call.session_id}")
        channels = len(call.media[0]["channels"])
        timeline.caller = [Frame(t, size / RATE, level) for t, size, level in record.caller_frames]
        played = bot_playout(call, origin=call.started_at)
        timeline.bot = [
            Frame(call.started_at + p.start / RATE, len(p.audio) / RATE, ulaw_rms(p.audio)) for p in played
        ]
        if record.opened_at is not None:
            timeline.add_mark(record.opened_at, "opened", "opened")
        for t, digit in record.dtmf_sent:
            timeline.add_mark(t, "dtmf", f"DTMF {digit}")
        for t, message in record.messages:
            if message.get("type") == "event":
                for entity in message["parameters"].get("entities", []):
                    timeline.add_mark(t, str(entity.get("type")), _entity_label(entity))
        for t, type_ in call.sent_log:
            if type_ == "close":
                timeline.add_mark(t, "close", "caller close")
        if record.disconnect is not None and record.disconnect_at is not None:
            params = record.disconnect["parameters"]
            info = f": {params['info']}" if params.get("info") else ""
            timeline.add_mark(record.disconnect_at, "disconnect", f"disconnect {params.get('reason')}{info}")
            timeline.output_variables = dict(record.output_variables or {})
            timeline._add_farewell(played, record.disconnect_at, params.get("reason"))
        if record.closed_at is not None:
            timeline.add_mark(record.closed_at, "closed", "closed")
        timeline.facts = [
            ("session", call.session_id),
            ("connector", call.url),
            ("media", "stereo" if channels == 2 else "mono"),
            ("caller audio sent", f"{call.audio_seconds_sent:.1f} s"),
            ("bot audio received", f"{call.bot_audio_seconds:.1f} s in {len(record.audio_frames)} frames"),
            ("barge-ins", str(len(record.events("barge_in")))),
            ("protocol violations", "; ".join(record.violations) or "none"),
        ]
        ends = [t for t, _ in record.messages] + [t for t, _ in call.sent_log]
        timeline.end = max(
            [timeline.end, *ends, *(f.start + f.seconds for f in timeline.caller + timeline.bot)]
        )
        return timeline

    def _add_farewell(self, played: list[Played], disconnect_at: float, reason: object) -> None:
        """The bot's last turn, when it ended just before it completed the call: its farewell."""
        if reason != "completed" or not played:
            return
        turn_start = played[-1].start
        for before, after in zip(reversed(played[:-1]), reversed(played[1:]), strict=True):
            if after.start - before.end > BOT_TURN_GAP * RATE:
                break
            turn_start = before.start
        start = self.origin + turn_start / RATE
        end = self.origin + played[-1].end / RATE
        if 0 <= disconnect_at - end <= FAREWELL_BEFORE_DISCONNECT:
            self.add_span(start, end, "farewell", "farewell")

    def add_span(self, start: float, end: float, kind: str, label: str) -> None:
        """Something that took time, from `start` to `end` (monotonic seconds)."""
        self.spans.append(Span(start, max(start, end), kind, label))
        self.end = max(self.end, end)

    def add_mark(self, t: float, kind: str, label: str) -> None:
        """Something that happened at `t` (monotonic seconds)."""
        self.marks.append(Mark(t, kind, label))
        self.end = max(self.end, t)

    def add_model_events(self, events: Iterable[tuple[float, str, dict[str, Any]]]) -> None:
        """Tool calls and the connector's own responses, from a model simulator session's
        `timeline` ((time, "in" or "out", event)): a tool call runs from the model's
        `response.function_call_arguments.done` to the connector's `function_call_output`."""
        calls: dict[str, tuple[float, str]] = {}
        responses: dict[str, tuple[float, str]] = {}
        for t, direction, event in events:
            type_ = event.get("type")
            if direction == "out" and type_ == "response.function_call_arguments.done":
                calls[str(event.get("call_id"))] = (t, str(event.get("name")))
            elif direction == "in" and type_ == "conversation.item.create":
                item = event.get("item") or {}
                started = (
                    calls.pop(str(item.get("call_id")), None)
                    if item.get("type") == "function_call_output"
                    else None
                )
                if started is not None:
                    start, name = started
                    self.add_span(start, t, "tool", f"{name} ({(t - start) * 1000:.0f} ms)")
            elif direction == "out" and type_ == "response.created":
                response = event.get("response") or {}
                purpose = (response.get("metadata") or {}).get("purpose")
                if purpose:
                    responses[str(response.get("id"))] = (t, str(purpose))
            elif direction == "out" and type_ == "response.done":
                started = responses.pop(str((event.get("response") or {}).get("id")), None)
                if started is not None:
                    start, purpose = started
                    self.add_span(start, t, "response", f"model {purpose} response")
        for t, name in calls.values():
            self.add_mark(t, "tool", f"{name}: no result")

    # -- output

    def data(self) -> dict[str, Any]:
        """Everything the page draws, in seconds from the origin."""

        def at(t: float) -> float:
            return round(t - self.origin, 3)

        def lane(frames: list[Frame]) -> list[list[float]]:
            return [[at(f.start), round(f.seconds, 3), f.level] for f in frames]

        return {
            "title": self.title,
            "duration": round(self.end - self.origin, 3),
            "lanes": [
                {"name": "caller", "frames": lane(self.caller)},
                {"name": "bot", "frames": lane(self.bot)},
            ],
            "spans": [dict(asdict(s), start=at(s.start), end=at(s.end)) for s in self.spans],
            "marks": sorted((dict(asdict(m), t=at(m.t)) for m in self.marks), key=lambda m: m["t"]),
            "output_variables": self.output_variables,
            "facts": [list(fact) for fact in self.facts],
        }

    def html(self) -> str:
        data = self.data()
        # JSON inside <script>: no "<", ">" or "&" may close the element or start a comment.
        blob = (
            json.dumps(data, ensure_ascii=False)
            .replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
        )
        return _PAGE.format(
            title=html.escape(self.title),
            facts=_rows(data["facts"]),
            variables=_variables(self.output_variables),
            events=_events(data),
            style=_STYLE,
            data=blob,
            script=_SCRIPT,
        )

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.html(), encoding="utf-8")


def _entity_label(entity: dict[str, Any]) -> str:
    data = entity.get("data")
    kind = str(entity.get("type"))
    if kind == "bot_turn_response" and isinstance(data, dict):
        return f"bot: {str(data.get('text', ''))[:80]}"
    return kind.replace("_", "-")


def _rows(pairs: Iterable[Iterable[str]]) -> str:
    return "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in pair) + "</tr>" for pair in pairs
    )


def _variables(variables: dict[str, str]) -> str:
    if not variables:
        return '<p id="no-output-variables">No output variables: the connector did not end the call.</p>'
    return (
        '<table id="output-variables"><thead><tr><th>name</th><th>value</th></tr></thead><tbody>'
        + _rows(sorted(variables.items()))
        + "</tbody></table>"
    )


def _events(data: dict[str, Any]) -> str:
    rows = [(m["t"], m["kind"], m["label"]) for m in data["marks"]]
    rows += [(s["start"], s["kind"], f"{s['label']} (until {s['end']:.2f} s)") for s in data["spans"]]
    return _rows((f"{t:.2f} s", kind, label) for t, kind, label in sorted(rows, key=lambda r: r[0]))


_STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1d2330; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { border: 1px solid #d5d9e0; padding: 2px 8px; text-align: left; }
td { vertical-align: top; white-space: pre-wrap; word-break: break-word; max-width: 60em; }
#chart { overflow-x: auto; border: 1px solid #d5d9e0; background: #fbfcfd; }
svg text { font: 11px system-ui, sans-serif; fill: #1d2330; }
.level.caller { fill: #2f7ed8; } .level.bot { fill: #2a9d5c; }
.lane-base { stroke: #c9ced6; } .grid { stroke: #eceef2; }
.mark line { stroke-width: 1.5; } .mark.barge_in line { stroke: #d62728; }
.mark.disconnect line { stroke: #111; stroke-width: 2.5; } .mark.closed line { stroke: #777; }
.mark.dtmf line { stroke: #9467bd; } .mark.bot_turn_response line { stroke: #2a9d5c; stroke-dasharray: 3 3; }
.mark line { stroke: #8c96a5; }
.span rect { fill: #f2b134; opacity: .75; } .span.tool rect { fill: #e07b39; }
.span.farewell rect { fill: #7f5fb0; opacity: .6; } .span.response rect { fill: #b8c2d1; }
.legend span { display: inline-block; margin-right: 1.2em; }
.swatch { display: inline-block; width: .9em; height: .9em; vertical-align: -1px; margin-right: .3em; }
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<table id="facts">{facts}</table>
<h2>Timeline</h2>
<p class="legend">
<span><i class="swatch" style="background:#2f7ed8"></i>caller audio</span>
<span><i class="swatch" style="background:#2a9d5c"></i>bot audio, as heard</span>
<span><i class="swatch" style="background:#d62728"></i>barge-in</span>
<span><i class="swatch" style="background:#e07b39"></i>tool call</span>
<span><i class="swatch" style="background:#7f5fb0"></i>farewell</span>
<span><i class="swatch" style="background:#111"></i>disconnect</span>
</p>
<div id="chart"><noscript>The timeline is drawn by a script; the events are listed below.</noscript></div>
<h2>Output variables</h2>
{variables}
<h2>Events</h2>
<table id="events"><thead><tr><th>time</th><th>kind</th><th>what</th></tr></thead><tbody>
{events}
</tbody></table>
<script type="application/json" id="call-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("call-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var duration = Math.max(data.duration, 1);
  var left = 70, laneHeight = 56, axis = 22, spanRow = 16;
  var scale = Math.min(200, Math.max(20, 1100 / duration));
  var width = left + duration * scale + 220;
  var lanesTop = axis + 6;
  var spansTop = lanesTop + data.lanes.length * (laneHeight + 8);
  var rows = [];
  data.spans.sort(function (a, b) { return a.start - b.start; });
  data.spans.forEach(function (s) {
    var row = 0;
    while (rows[row] !== undefined && rows[row] > s.start) { row++; }
    rows[row] = Math.max(s.end, s.start + (s.label.length * 6.5 + 12) / scale);
    s.row = row;
  });
  var height = spansTop + Math.max(rows.length, 1) * (spanRow + 4) + 40;

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function title(node, text) { el("title", {}, node).textContent = text; }
  function x(t) { return left + t * scale; }
  function barHeight(level) {
    if (level <= 0) { return 0; }
    var db = 20 * Math.log10(level / 32768);
    return Math.max(1, Math.min(1, (db + 60) / 60) * (laneHeight - 4));
  }

  var svg = el("svg", {id: "timeline", width: width, height: height,
                       viewBox: "0 0 " + width + " " + height, role: "img"});
  var step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find(function (s) { return s * scale >= 60; }) || 600;
  for (var t = 0; t <= duration; t += step) {
    el("line", {"class": "grid", x1: x(t), x2: x(t), y1: axis, y2: height - 30}, svg);
    el("text", {x: x(t) + 2, y: 14}, svg).textContent = t + " s";
  }
  data.lanes.forEach(function (lane, n) {
    var top = lanesTop + n * (laneHeight + 8), middle = top + laneHeight / 2;
    var group = el("g", {"class": "lane " + lane.name, "data-frames": lane.frames.length}, svg);
    el("text", {x: 4, y: middle + 4}, group).textContent = lane.name;
    el("line", {"class": "lane-base", x1: left, x2: x(duration), y1: middle, y2: middle}, group);
    lane.frames.forEach(function (f) {
      var h = barHeight(f[2]);
      if (!h) { return; }
      var bar = el("rect", {"class": "level " + lane.name, x: x(f[0]), y: middle - h / 2,
                            width: Math.max(1, f[1] * scale - 0.5), height: h}, group);
      title(bar, lane.name + " " + f[0].toFixed(2) + " s, level " + f[2]);
    });
  });
  data.spans.forEach(function (s) {
    var group = el("g", {"class": "span " + s.kind}, svg);
    var y = spansTop + s.row * (spanRow + 4);
    var spanWidth = Math.max(2, (s.end - s.start) * scale);
    el("rect", {x: x(s.start), y: y, width: spanWidth, height: spanRow, rx: 3}, group);
    el("text", {x: x(s.start) + 3, y: y + 12}, group).textContent = s.label;
    title(group, s.label + ": " + s.start.toFixed(2) + " to " + s.end.toFixed(2) + " s");
  });
  data.marks.forEach(function (m) {
    var group = el("g", {"class": "mark " + m.kind}, svg);
    el("line", {x1: x(m.t), x2: x(m.t), y1: axis, y2: height - 30}, group);
    if (m.kind === "barge_in" || m.kind === "disconnect") {
      el("text", {x: x(m.t) + 3, y: height - 16}, group).textContent = m.label;
    }
    title(group, m.t.toFixed(2) + " s: " + m.label);
  });
  var chart = document.getElementById("chart");
  chart.appendChild(svg);
  chart.setAttribute("data-rendered", "yes");
})();
"""
