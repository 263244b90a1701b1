"""One command, no account: a connector, a Realtime simulator and a simulated Genesys call.

    python demo.py

The caller (generated speech, or `--wav`) talks to the bot through the connector exactly as a
Genesys call would; the exchange is printed as it happens, then the output variables Architect
would receive, and the bot's audio is written to `demo-bot.wav`. With `OPENAI_API_KEY` set in the
environment the connector dials the real OpenAI Realtime API instead of the simulator (the call
is still simulated, so nothing else is needed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys

from config import load_settings
from log_setup import configure_logging
from oai_middleware import App
from simulators.audio import read_wav, silence, speech_like, write_wav
from simulators.call_simulator import GenesysCall
from simulators.realtime_simulator import RealtimeSimulator
from simulators.script import Script, Turn

DEMO_KEY = "demo-api-key"
GREETING = "Hello, thanks for calling the demo line. How can I help?"


def demo_script() -> Script:
    return Script(
        turns=[
            Turn(say="Of course. Your order shipped yesterday and arrives on Friday.", seconds=3.0),
            Turn(
                call="end_conversation_successfully",
                arguments={"summary": "Order status given; it arrives Friday."},
            ),
        ],
        caller_transcripts=["Hi, where is my order?", "Great, that's all, thank you."],
        summary_text=json.dumps(
            {
                "topics": ["order status"],
                "decisions": ["no change to the order"],
                "action_items": [],
                "sentiment": "positive",
            }
        ),
    )


async def run(args: argparse.Namespace) -> int:
    configure_logging("INFO" if args.verbose else "WARNING", "text")
    real_openai = bool(os.environ.get("OPENAI_API_KEY")) and not args.simulate
    sim = None
    env = {
        "GENESYS_API_KEY": DEMO_KEY,
        "HOST": "127.0.0.1",
        "INITIAL_GREETING": GREETING,
        "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-demo-simulated"),
    }
    if real_openai:
        print("Connector -> the real OpenAI Realtime API (OPENAI_API_KEY is set)")
    else:
        sim = await RealtimeSimulator(demo_script(), strict=False).start()
        env["OPENAI_REALTIME_URL"] = sim.url
        print(f"Connector -> the local Realtime simulator at {sim.url}")
    app = App(dataclasses.replace(load_settings(env), port=0))
    await app.start()
    url = f"ws://127.0.0.1:{app.port}/audiohook/demo-bot"
    print(f"Simulated Genesys call -> {url}\n")
    first_turn = read_wav(args.wav) if args.wav else speech_like(1.6, seed=1)
    turns = [
        ("listens to the greeting", silence(4.5)),
        ("speaks", first_turn),
        ("listens", silence(5.0)),
        ("speaks", speech_like(1.4, seed=2)),
        ("listens", silence(args.listen)),
    ]
    call = GenesysCall(
        url,
        api_key=DEMO_KEY,
        connector_id=None,
        input_variables={"AGENT_NAME": "Ava", "COMPANY_NAME": "Demo Corp"},
        verbose=True,
    )
    try:
        await call.connect()
        await call.open()
        for what, audio in turns:
            if call.record.disconnect is not None:
                break
            print(f"[{call.elapsed():6.2f}s] caller {what} ({len(audio) / 8000:.1f} s)", flush=True)
            await call.stream(audio)
        if call.record.disconnect is None:
            await call.close()
        else:
            await call.wait_closed(5)
    finally:
        await call.aclose()
        await app.stop()
        if sim is not None:
            await sim.stop()
    return report(call, args.save)


def report(call: GenesysCall, path: str) -> int:
    record = call.record
    print(f"\nBot audio received: {len(record.bot_audio) / 8000:.1f} s, saved to {path}")
    write_wav(path, bytes(record.bot_audio))
    variables = record.output_variables
    if variables:
        print("Output variables for Architect:")
        for name, value in sorted(variables.items()):
            print(f"  {name} = {value}")
    else:
        print("The call ended without output variables (the caller hung up first).")
    if record.violations:
        print("Protocol violations:", *record.violations, sep="\n  ")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the connector against simulators, with no account.")
    parser.add_argument("--wav", help="caller audio for the first turn (any WAV)")
    parser.add_argument(
        "--save", default="demo-bot.wav", help="where to write the bot audio (default demo-bot.wav)"
    )
    parser.add_argument(
        "--listen", type=float, default=8.0, help="seconds of silence after the caller's last turn"
    )
    parser.add_argument(
        "--simulate", action="store_true", help="use the simulator even when OPENAI_API_KEY is set"
    )
    parser.add_argument("--verbose", action="store_true", help="show the connector's own log lines")
    args = parser.parse_args(argv)
    logging.captureWarnings(True)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
