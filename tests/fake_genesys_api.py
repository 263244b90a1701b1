"""A fake Genesys Cloud API on 127.0.0.1: OAuth client credentials, action schemas, /execute.

Each action has a mode: `ok`, `slow`, `500`, `400` (with a Genesys error body) or `429` (with
`Retry-After`, then ok). Calls to the debugging `/test` endpoint are recorded as a violation.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret-value"


@dataclass
class FakeAction:
    input_schema: dict[str, Any]
    success_schema: dict[str, Any] | None = None
    result: Any = field(default_factory=lambda: {"status": "ok"})
    mode: str = "ok"
    delay: float = 0.0
    throttled: int = 1  # how many 429 answers in mode "429"


class FakeGenesysApi:
    def __init__(self) -> None:
        self.actions: dict[str, FakeAction] = {}
        self.token_requests = 0
        self.token_delay = 0.0
        self.schema_delay = 0.0
        self.expires_in = 3600
        self.valid_tokens: set[str] = set()
        self.executions: list[tuple[str, Any]] = []
        self.schema_requests: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int = 0) -> FakeGenesysApi:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get("/api/v2/integrations/actions/{action}/schemas/{kind}.json", self.schema)
        app.router.add_post("/api/v2/integrations/actions/{action}/execute", self.execute)
        app.router.add_post("/api/v2/integrations/actions/{action}/test", self.test_endpoint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "ENABLE_GENESYS_DATA_ACTIONS": "true",
            "GENESYS_CLIENT_ID": CLIENT_ID,
            "GENESYS_CLIENT_SECRET": CLIENT_SECRET,
            "GENESYS_BASE_URL": self.url,
            "GENESYS_LOGIN_URL": self.url,
            **extra,
        }

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    # -- routes

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        await asyncio.sleep(self.token_delay)
        token = f"token-{next(self._counter)}-secret"
        self.valid_tokens.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
        )

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.valid_tokens

    async def schema(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(
                {"message": "Invalid login credentials", "code": "bad.credentials"}, status=401
            )
        action_id, kind = request.match_info["action"], request.match_info["kind"]
        self.schema_requests.append((action_id, kind))
        await asyncio.sleep(self.schema_delay)
        action = self.actions.get(action_id)
        if action is None:
            return web.json_response({"message": "action not found", "code": "not.found"}, status=404)
        schema = action.input_schema if kind == "inputschema" else action.success_schema
        if schema is None:
            return web.json_response({"message": "no schema", "code": "not.found"}, status=404)
        return web.json_response(schema)

    async def execute(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(
                {"message": "Invalid login credentials", "code": "bad.credentials"}, status=401
            )
        action_id = request.match_info["action"]
        body = await request.json()
        self.executions.append((action_id, body))
        action = self.actions[action_id]
        await asyncio.sleep(action.delay)
        if action.mode == "500":
            return web.json_response(
                {"message": "upstream failure", "code": "internal.server.error"}, status=500
            )
        if action.mode == "400":
            # Genesys embeds the backend's own answer in `message`; the template has no values.
            return web.json_response(
                {
                    "message": "Account 12345 not found: backend said {'ssn': '123-45-6789'}",
                    "code": "bad.request",
                    "status": 400,
                    "messageWithParams": "Account {accountNumber} not found: {backendBody}",
                    "messageParams": {"accountNumber": "12345", "backendBody": "{'ssn': '123-45-6789'}"},
                },
                status=400,
            )
        if action.mode == "not-utf8":
            return web.Response(body=b'{"name": "\xff\xfe"}', content_type="application/json")
        if action.mode == "429" and action.throttled > 0:
            action.throttled -= 1
            return web.json_response(
                {"message": "Rate limit exceeded", "code": "too.many.requests"},
                status=429,
                headers={"Retry-After": "0.2"},
            )
        return web.json_response(action.result)

    async def test_endpoint(self, request: web.Request) -> web.Response:
        self.violations.append(f"the debugging /test endpoint was called for {request.match_info['action']}")
        return web.json_response({"message": "do not use /test"}, status=400)
