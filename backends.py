"""Which model backend serves a call: the vendor and API its resolved settings name (§4a), with
the endpoint and credentials the environment gives for them. The call core never imports a
vendor's module; this is the one place that does."""

from __future__ import annotations

import asyncio
import urllib.parse

from call_bridge import BackendFor
from config import CallConfig, Settings
from gemini_client import GeminiBackend
from metrics import Metrics
from model_backend import ModelBackend
from openai_client import RealtimeBackend
from openai_live_client import LiveBackend
from text_api import TextApi

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
OPENAI_LIVE_URL = "wss://api.openai.com/v1/live/sessions"
OPENAI_API_BASE_URL = "https://api.openai.com/v1"


def azure_url(endpoint: str, path: str, scheme: str) -> str:
    """`https://<resource>.openai.azure.com` + `/openai/v1/...`, as ws(s) or http(s)."""
    parts = urllib.parse.urlsplit(endpoint)
    secure = parts.scheme == "https"
    chosen = {"ws": "wss" if secure else "ws", "http": "https" if secure else "http"}[scheme]
    return urllib.parse.urlunsplit((chosen, parts.netloc, f"/openai/v1{path}", "", ""))


def openai_endpoints(settings: Settings, vendor: str) -> tuple[str, str, str, dict[str, str]]:
    """(Realtime URL, Live URL, Responses API base, headers) for OpenAI or Azure OpenAI; an
    explicit URL in the environment wins, the header follows the vendor."""
    if vendor == "azure":
        assert settings.azure_endpoint is not None and settings.azure_api_key is not None
        endpoint = settings.azure_endpoint
        return (
            settings.openai_realtime_url or azure_url(endpoint, "/realtime", "ws"),
            settings.openai_live_url or azure_url(endpoint, "/live/sessions", "ws"),
            settings.openai_api_base_url or azure_url(endpoint, "", "http"),
            {"api-key": settings.azure_api_key},
        )
    return (
        settings.openai_realtime_url or OPENAI_REALTIME_URL,
        settings.openai_live_url or OPENAI_LIVE_URL,
        settings.openai_api_base_url or OPENAI_API_BASE_URL,
        {"Authorization": f"Bearer {settings.openai_api_key}"},
    )


def backend_chooser(settings: Settings, metrics: Metrics, text_api: TextApi) -> BackendFor:
    def backend_for(call: CallConfig) -> ModelBackend:
        clock = asyncio.get_running_loop().time
        if call.vendor == "gemini":
            assert settings.gemini_api_key is not None
            return GeminiBackend(
                model=call.gemini_model,
                url=settings.gemini_live_url,
                api_key=settings.gemini_api_key,
                api_base_url=settings.gemini_api_base_url,
                summary_model=settings.gemini_summary_model,
                text_api=text_api,
                metrics=metrics,
                clock=clock,
            )
        label = "Azure OpenAI" if call.vendor == "azure" else "OpenAI"
        realtime_url, live_url, api_base, headers = openai_endpoints(settings, call.vendor)
        if call.api == "live":
            return LiveBackend(
                vendor=call.vendor,
                label=label,
                model=call.model,
                url=live_url,
                headers=headers,
                backend_model=settings.openai_live_backend_model,
                api_base_url=api_base,
                summary_model=settings.openai_summary_model,
                text_api=text_api,
                approval=settings.mcp.approval,
                metrics=metrics,
                clock=clock,
            )
        return RealtimeBackend(
            vendor=call.vendor,
            label=label,
            model=call.model,
            url=realtime_url,
            headers=headers,
            approval=settings.mcp.approval,
            metrics=metrics,
            clock=clock,
        )

    return backend_for
