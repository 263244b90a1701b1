"""One command, no account: a connector, a Realtime simulator and a simulated Genesys call.

    python demo.py

The caller talks to the bot through the connector exactly as a Genesys call would: it listens to
the greeting, says its turns (real words when eSpeak NG is there, `pip install espeakng-loader`;
speech-like audio otherwise; `--say` for other words, `--wav` for a recording), listening to each
answer, and waits for the bot to end the call. The exchange is printed as it happens, then the
output variables Architect would receive, and the bot's audio, as the caller heard it, is written
to `demo-bot.wav` (`--timeline call.html` draws the call).

The settings are built as the server builds them (the environment over `.env`), with only the
demo's own API key, host and port on top, and the simulator's URL when simulating: so with
`OPENAI_API_KEY` set the connector dials the real OpenAI Realtime API with your `OPENAI_MODEL`,
`OPENAI_VOICE` and every other setting (the call is still simulated). `--simulate` uses the
simulator anyway.

It exits non-zero, and writes no WAV, when the call failed (the connector could not reach the
model, a protocol violation, the bot did not end the call); the exit codes are the call
simulator's (`python -m simulators.call_simulator --help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Mapping

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from backends import openai_endpoints
from config import CallConfig, ConfigError, Settings, load_settings, read_environment
from log_setup import SecretMasker, configure_logging
from oai_middleware import App
from simulators import speech
from simulators.audio import RATE, silence
from simulators.call_simulator import (
    CallError,
    Exit,
    GenesysCall,
    UsageError,
    bot_playout,
    call_outcome,
    heard_audio,
    load_wav,
    save_audio,
)
from simulators.gemini_simulator import GeminiSimulator
from simulators.live_simulator import LiveSimulator
from simulators.realtime_simulator import RealtimeSimulator
from simulators.script import Script, Turn
from simulators.timeline import Timeline

DEMO_KEY = "demo-api-key"
SIMULATED_KEYS = {
    "OPENAI_API_KEY": "sk-demo-simulated",
    "AZURE_OPENAI_API_KEY": "demo-simulated",
    "GEMINI_API_KEY": "demo-simulated",
}
# Where a real model would be reached: replaced by the simulator's when simulating.
ENDPOINTS = (
    "OPENAI_REALTIME_URL",
    "OPENAI_LIVE_URL",
    "OPENAI_API_BASE_URL",
    "AZURE_OPENAI_ENDPOINT",
    "GEMINI_LIVE_URL",
    "GEMINI_API_BASE_URL",
)
GREETING = "Hello, thanks for calling the demo line. How can I help?"
CALLER_WORDS = ("Hi, where is my order?", "Great, that's all, thank you.")
ANSWER = "Of course. Your order shipped yesterday and arrives on Friday."
BOT_QUIET = 0.8  # seconds of bot silence after which the caller takes its turn
GREETING_WAIT = 3.0  # the bot may not greet at all (no INITIAL_GREETING): stop listening then
ANSWER_WAIT = 12.0  # the longest the caller waits for an answer to finish
FRAME = 0.2


def demo_script(caller_words: list[str]) -> Script:
    """The simulated model: answers each turn, and ends the call after the caller's last one."""
    answers = [Turn(say=ANSWER)]
    answers += [Turn(say="Sure, I can help with that.")] * (len(caller_words) - 2)
    end_call = Turn(
        call="end_conversation_successfully",
        arguments={"summary": "Order status given; it arrives Friday."},
    )
    return Script(
        turns=[*answers[: len(caller_words) - 1], end_call],
        caller_transcripts=list(caller_words),
        summary_text=json.dumps(
            {
                "topics": ["order status"],
                "decisions": ["no change to the order"],
                "action_items": [],
                "sentiment": "positive",
            }
        ),
    )


def demo_environment(env: Mapping[str, str], simulator: Mapping[str, str] | None) -> dict[str, str]:
    """The server's environment, with only what the demo must set on top: its own key, host and
    port, and when simulating the simulator's endpoints and stand-in credentials (real keys stay
    home)."""
    values = dict(env)
    values.pop("PORT", None)  # the demo listens on an ephemeral port
    values.update(GENESYS_API_KEY=DEMO_KEY, HOST="127.0.0.1")
    if simulator is not None:
        for name in ENDPOINTS:
            values.pop(name, None)
        values.update(simulator)
        values.setdefault("INITIAL_GREETING", GREETING)  # the simulator has a script to follow
    return values


def demo_settings(env: Mapping[str, str], simulator: Mapping[str, str] | None) -> Settings:
    return dataclasses.replace(load_settings(demo_environment(env, simulator)), port=0)


def demo_call(env: Mapping[str, str]) -> CallConfig:
    """The demo call's settings as the server would resolve them (vendor, API, model), whatever
    credentials there are."""
    stand_ins = {"AZURE_OPENAI_ENDPOINT": "https://demo.invalid", **SIMULATED_KEYS}
    probe = demo_environment({**stand_ins, **env}, None)
    return load_settings(probe).call_config("demo-bot", {})


def has_credentials(env: Mapping[str, str], call: CallConfig) -> bool:
    needed = {"openai": ("OPENAI_API_KEY",), "azure": ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY")}
    return all(env.get(name) for name in needed.get(call.vendor, ("GEMINI_API_KEY",)))


Simulator = RealtimeSimulator | LiveSimulator | GeminiSimulator


async def start_simulator(call: CallConfig, words: list[str]) -> tuple[Simulator, dict[str, str]]:
    """The stand-in for the backend the call uses, and the settings that point the connector at it."""
    script = demo_script(words)
    if call.vendor == "gemini":
        gemini = await GeminiSimulator(script, strict=False, speak_words=True).start()
        return gemini, {
            "GEMINI_LIVE_URL": gemini.url,
            "GEMINI_API_BASE_URL": gemini.api_base_url,
            "GEMINI_API_KEY": SIMULATED_KEYS["GEMINI_API_KEY"],
        }
    sim: LiveSimulator | RealtimeSimulator
    if call.api == "live":
        sim = await LiveSimulator(script, strict=False, speak_words=True).start()
        openai = {"OPENAI_LIVE_URL": sim.url, "OPENAI_API_BASE_URL": sim.api_base_url}
    else:
        sim = await RealtimeSimulator(script, strict=False, speak_words=True).start()
        openai = {"OPENAI_REALTIME_URL": sim.url}
    if call.vendor == "azure":
        return sim, {
            "AZURE_OPENAI_ENDPOINT": sim.azure_endpoint,
            "AZURE_OPENAI_API_KEY": SIMULATED_KEYS["AZURE_OPENAI_API_KEY"],
        }
    return sim, {**openai, "OPENAI_API_KEY": SIMULATED_KEYS["OPENAI_API_KEY"]}


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One caller turn: how the exchange shows it, and its audio."""

    label: str
    audio: bytes


def caller_turns(words: list[str], wav: str | None) -> list[Utterance]:
    turns = []
    for n, text in enumerate(words):
        audio, spoken = speech.spoken(text, seed=n + 1)
        turns.append(Utterance(f"says {text!r}" if spoken else f"says {text!r} (speech-like audio)", audio))
    if wav:
        turns[0] = Utterance(f"plays {wav}", load_wav(wav))
    return turns


async def listen_to_answer(call: GenesysCall, *, start_within: float, most: float) -> None:
    """Silence while the bot answers: until its answer has played and it has been quiet for a
    moment, or it has not started within `start_within` s, or `most` s have passed."""
    before = call.record.bot_audio_bytes
    began = time.monotonic()
    while call.record.disconnect is None:
        await call.stream(silence(FRAME))
        now = time.monotonic()
        answered = call.record.bot_audio_bytes > before
        if answered and call.bot_playing_until < now - BOT_QUIET:
            return
        if (not answered and now - began >= start_within) or now - began >= most:
            return


async def listen_until_hang_up(call: GenesysCall, most: float) -> None:
    """Silence until the bot ends the call, for at most `most` seconds."""
    deadline = time.monotonic() + most
    while call.record.disconnect is None and time.monotonic() < deadline:
        await call.stream(silence(FRAME))


async def converse(call: GenesysCall, turns: list[Utterance], listen: float) -> None:
    try:
        await call.open()
    except CallError:  # a disconnect instead of opened: the call simulator answers it with close
        await call.wait_closed(10)
        return
    print(f"[{call.elapsed():6.2f}s] caller listens to the greeting", flush=True)
    await listen_to_answer(call, start_within=GREETING_WAIT, most=ANSWER_WAIT)
    for n, turn in enumerate(turns):
        if call.record.disconnect is not None:
            break
        print(f"[{call.elapsed():6.2f}s] caller {turn.label} ({len(turn.audio) / RATE:.1f} s)", flush=True)
        await call.stream(turn.audio)
        if n < len(turns) - 1:
            await listen_to_answer(call, start_within=ANSWER_WAIT, most=ANSWER_WAIT)
    await listen_until_hang_up(call, listen)
    if call.record.disconnect is None:
        await call.close()
    else:
        await call.wait_closed(10)


async def start_model(
    env: Mapping[str, str], words: list[str], simulate: bool
) -> tuple[Settings, Simulator | None]:
    """The settings, and the simulator of the call's backend when simulating (None otherwise)."""
    call = demo_call(env)
    if not simulate and has_credentials(env, call):
        return demo_settings(env, None), None
    sim, endpoints = await start_simulator(call, words)
    try:
        return demo_settings(env, endpoints), sim
    except ConfigError:
        await sim.stop()
        raise


async def run(args: argparse.Namespace) -> int:
    env = read_environment()
    words = args.say or list(CALLER_WORDS)
    try:
        turns = caller_turns(words, args.wav)
        settings, sim = await start_model(env, words, args.simulate)
    except (ConfigError, UsageError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return Exit.USAGE
    masker = SecretMasker(settings.secrets())
    configure_logging("INFO" if args.verbose else "WARNING", "text", masker)
    for warning in settings.warnings:  # what the server would log at start (a deprecated model…)
        print(f"warning: {warning}")
    per_call = settings.call_config("demo-bot", {})
    print(f"Connector -> {describe_backend(per_call, settings, sim)}")
    app = App(settings, masker=masker)
    try:
        await app.start()
        call = GenesysCall(
            f"ws://127.0.0.1:{app.port}/audiohook/demo-bot",
            api_key=DEMO_KEY,
            input_variables={"AGENT_NAME": "Ava", "COMPANY_NAME": "Demo Corp"},
            verbose=True,
        )
        print(f"Simulated Genesys call -> {call.url}\n")
        refused = await place_call(call, turns, args.listen)
    finally:
        await app.stop()
        if sim is not None:
            await sim.stop()
    return report(call, args, refused, sim)


def describe_backend(call: CallConfig, settings: Settings, sim: Simulator | None) -> str:
    if call.vendor == "gemini":
        kind, model, where, voice = (
            "Gemini Live",
            call.gemini_model,
            settings.gemini_live_url,
            call.gemini_voice,
        )
    else:
        realtime, live, _, _ = openai_endpoints(settings, call.vendor)
        api = "GPT-Live" if call.api == "live" else "Realtime"
        kind = f"{'Azure OpenAI' if call.vendor == 'azure' else 'OpenAI'} {api}"
        model, where, voice = call.model, live if call.api == "live" else realtime, call.voice
    if sim is not None:
        return f"the local {kind} simulator at {where} (model {model}, voice {voice})"
    return f"the real {kind} API at {where} (model {model}, voice {voice})"


async def place_call(call: GenesysCall, turns: list[Utterance], listen: float) -> str | None:
    """Dial and talk; says why when the connector could not be reached."""
    try:
        await call.connect()
    except InvalidStatus as exc:
        return f"the connector refused the call: HTTP {exc.response.status_code}"
    except (OSError, TimeoutError, WebSocketException) as exc:
        return f"cannot reach the connector: {str(exc) or type(exc).__name__}"
    try:
        with contextlib.suppress(ConnectionClosed, TimeoutError):  # the outcome says what is missing
            await converse(call, turns, listen)
    finally:
        await call.aclose()
    return None


def report(call: GenesysCall, args: argparse.Namespace, refused: str | None, sim: Simulator | None) -> int:
    record = call.record
    code, why = call_outcome(call, refused=refused)
    variables = record.output_variables
    if code is Exit.COMPLETED and not variables:
        code = Exit.TIMEOUT
        why = f"the bot did not end the call within --listen {args.listen:g} s: no output variables"
    if args.timeline and code is not Exit.UNREACHABLE:
        timeline = Timeline.from_call(call, title="Demo call")
        for session in sim.sessions if sim is not None else []:
            timeline.add_model_events(session.timeline)
        timeline.write(args.timeline)
        print(f"\nTimeline drawn in {args.timeline}")
    if variables:
        print("\nOutput variables for Architect:")
        for name, value in sorted(variables.items()):
            print(f"  {name} = {value}")
    if record.violations:
        print("\nProtocol violations:", *record.violations, sep="\n  ")
    if code is not Exit.COMPLETED:
        print(f"\ndemo: the call failed: {why} (no WAV written)", file=sys.stderr)
        return code
    heard = heard_audio(bot_playout(call))
    if heard:
        save_audio(args.save, heard)
        print(f"\nBot audio received: {call.bot_audio_seconds:.1f} s, saved as heard to {args.save}")
    else:
        print("\nThe bot said nothing: no WAV written.")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the connector against simulators, with no account.")
    parser.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="TEXT",
        help="a caller turn, spoken with eSpeak NG when installed (repeatable;"
        f" default: {' / '.join(CALLER_WORDS)})",
    )
    parser.add_argument("--wav", help="caller audio for the first turn instead (any PCM or μ-law WAV)")
    parser.add_argument(
        "--save", default="demo-bot.wav", help="where to write the bot audio (default demo-bot.wav)"
    )
    parser.add_argument("--timeline", metavar="HTML", help="draw the call on a self-contained HTML page")
    parser.add_argument(
        "--listen",
        type=float,
        default=8.0,
        help="after the caller's last turn, how long to wait for the bot to end the call (default 8)",
    )
    parser.add_argument(
        "--simulate", action="store_true", help="use the simulator even when the vendor's credentials are set"
    )
    parser.add_argument("--verbose", action="store_true", help="show the connector's own log lines")
    args = parser.parse_args(argv)
    logging.captureWarnings(True)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
