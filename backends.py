"""Which model backend serves a call: the vendor and API the call's settings name, with the
endpoint and credentials the environment gives for them."""

from __future__ import annotations

import asyncio

from call_bridge import BackendFor
from config import CallConfig, Settings
from metrics import Metrics
from model_backend import ModelBackend
from openai_client import RealtimeBackend


def backend_chooser(settings: Settings, metrics: Metrics) -> BackendFor:
    def backend_for(call: CallConfig) -> ModelBackend:
        return RealtimeBackend(
            vendor="openai",
            label="OpenAI",
            model=call.model,
            url=settings.openai_realtime_url,
            headers={"Authorization": f"Bearer {settings.openai_api_key}"},
            approval=settings.mcp.approval,
            metrics=metrics,
            clock=asyncio.get_running_loop().time,
        )

    return backend_for
