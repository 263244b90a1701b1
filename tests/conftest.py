"""Shared fixtures: a connector on 127.0.0.1 with an ephemeral port, and call simulators dialling it."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import load_settings  # noqa: E402
from log_setup import install_call_context  # noqa: E402
from oai_middleware import App  # noqa: E402

install_call_context()

API_KEY = "test-api-key"
# The documented test vector's client secret.
CLIENT_SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="


OPENAI_KEY = "sk-test-not-a-real-key"


def make_settings(**env: str):
    base = {
        "GENESYS_API_KEY": API_KEY,
        "HOST": "127.0.0.1",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
    }
    base.update(env)
    return dataclasses.replace(load_settings(base), port=0)


async def _simulators(make):
    """Yield a starter of strict model simulators (they validate what they send too); each one
    started is stopped at the end of the test."""
    sims = []

    async def start(script=None, **kwargs):
        kwargs.setdefault("validate_server", True)
        sim = await make(script, **kwargs).start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def realtime():
    """Start Realtime simulators."""
    from simulators.realtime_simulator import RealtimeSimulator

    async for start in _simulators(RealtimeSimulator):
        yield start


@pytest.fixture
async def live():
    """Start GPT-Live simulators."""
    from simulators.live_simulator import LiveSimulator

    async for start in _simulators(LiveSimulator):
        yield start


@pytest.fixture
async def gemini():
    """Start Gemini Live simulators."""
    from simulators.gemini_simulator import GeminiSimulator

    async for start in _simulators(GeminiSimulator):
        yield start


@pytest.fixture
async def bridged(start_app, realtime):
    """A connector whose calls go to a fresh Realtime simulator: returns (app, simulator)."""

    async def start(script=None, sim_options=None, **env):
        sim = await realtime(script, **(sim_options or {}))
        app = await start_app(make_settings(OPENAI_REALTIME_URL=sim.url, **env))
        return app, sim

    return start


@pytest.fixture
async def start_app():
    """Start connectors; every one started is stopped at the end of the test."""
    apps: list[App] = []

    async def start(settings=None, **kwargs) -> App:
        kwargs.setdefault("auth_failure_delay", 0.01)
        app = App(settings or make_settings(), **kwargs)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()


def ws_url(app: App, path: str = "/audiohook") -> str:
    return f"ws://127.0.0.1:{app.port}{path}"


class RecordingHandler:
    """A bot for session tests: records what the session hands it; optional scripted actions."""

    instances: list[RecordingHandler] = []

    def __init__(self, session, request, script=None) -> None:
        self.session = session
        self.request = request
        self.audio = bytearray()
        self.digits: list[str] = []
        self.pauses = self.resumes = 0
        self.languages: list[str] = []
        self.cancelled = False
        self.script = script
        RecordingHandler.instances.append(self)

    async def run(self) -> None:
        import asyncio

        try:
            if self.script is not None:
                await self.script(self)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def on_audio(self, audio: bytes) -> None:
        self.audio += audio

    def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def on_pause(self) -> None:
        self.pauses += 1

    def on_resume(self) -> None:
        self.resumes += 1

    def on_language(self, language: str) -> None:
        self.languages.append(language)

    def output_variables(self, failure=None) -> dict[str, str]:
        return {"RECORDED_BYTES": str(len(self.audio)), "FAILURE": str(failure)}


def recording_factory(script=None):
    def factory(session, request):
        return RecordingHandler(session, request, script)

    return factory


async def settled(app: App, timeout: float = 3.0) -> None:
    """Wait until the connector holds no session any more."""
    import asyncio

    async with asyncio.timeout(timeout):
        while app.sessions:
            await asyncio.sleep(0.01)


# The connector's own modules: none of their objects may outlive a call in a reference cycle.
CONNECTOR_MODULES = frozenset(
    {
        "audiohook_protocol",
        "audiohook_server",
        "call_bridge",
        "call_control",
        "genesys_actions",
        "model_backend",
        "model_socket",
        "openai_client",
        "playout",
    }
)


def save_garbage() -> None:
    """From now on, keep what the garbage collector frees (automatic collections included)."""
    import gc

    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)


def stop_saving_garbage() -> None:
    import gc

    gc.set_debug(0)
    gc.garbage.clear()


def connector_garbage() -> dict[str, int]:
    """Connector objects that only a reference cycle kept alive since `save_garbage()`."""
    import collections
    import gc

    gc.collect()
    try:
        found = collections.Counter(
            type(obj).__qualname__ for obj in gc.garbage if type(obj).__module__ in CONNECTOR_MODULES
        )
    finally:
        stop_saving_garbage()
    return dict(found)


def live_tasks() -> set:
    import asyncio

    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@pytest.fixture
async def genesys_api():
    """A fake Genesys Cloud API; fails the test if the debugging /test endpoint is called."""
    from fake_genesys_api import FakeGenesysApi

    api = await FakeGenesysApi().start()
    yield api
    await api.stop()
    assert api.violations == []
