"""Genesys Audio Connector <-> OpenAI Realtime voice connector: entry point and serving.

One asyncio process serves the AudioHook WebSocket (`/audiohook`, `/audiohook/<connector-id>`)
and plain HTTP (`/`, `/health`, `/ready`) on the same port. Genesys is authenticated before the
upgrade completes; each accepted connection becomes an `AudioHookSession`.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import logging
import signal
import sys
import urllib.parse
from collections.abc import Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from audiohook_protocol import is_uuid
from audiohook_server import AudioHookSession, HandlerFactory
from call_bridge import make_bridge_factory
from call_control import empty_output_variables
from config import DEPRECATED_MODELS, ConfigError, Settings, load_settings, read_environment
from genesys_actions import GenesysApi
from genesys_auth import Authenticator, Failure
from log_setup import configure_logging, session_id_var

log = logging.getLogger("connector")

WS_PREFIX = "/audiohook"
MAX_WS_MESSAGE = 2**20  # far above AudioHook's 65,535 characters: oversize gets the protocol answer
AUTH_FAILURE_DELAY = 0.5


def connector_id_from_path(path: str) -> str | None:
    """`/audiohook/<connector-id>` (query string ignored) -> the connector id, if any."""
    path = path.split("?", 1)[0]
    rest = path[len(WS_PREFIX) :].strip("/")
    return urllib.parse.unquote(rest) or None


def is_audiohook_path(path: str) -> bool:
    path = path.split("?", 1)[0]
    return path == WS_PREFIX or path.startswith(WS_PREFIX + "/")


class App:
    """The connector: HTTP routing, upgrade authentication, and the registry of live sessions."""

    def __init__(
        self,
        settings: Settings,
        *,
        handler_factory: HandlerFactory | None = None,
        default_outputs: Callable[[str | None], dict[str, str]] = empty_output_variables,
        auth_failure_delay: float = AUTH_FAILURE_DELAY,
    ) -> None:
        self.settings = settings
        self.genesys_api = GenesysApi(settings.genesys) if settings.genesys is not None else None
        self.handler_factory = handler_factory or make_bridge_factory(settings, genesys_api=self.genesys_api)
        self.default_outputs = default_outputs
        self.auth_failure_delay = auth_failure_delay
        self.authenticator = Authenticator(
            settings.api_keys,
            allowed_organizations=settings.allowed_organization_ids,
            expected_authority=settings.expected_authority,
        )
        self.sessions: set[AudioHookSession] = set()
        self.server: Server | None = None

    # -- HTTP --------------------------------------------------------------------------------

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        session_id_var.set(_session_id(request))
        if path in ("/", "/health"):
            return _json(connection, http.HTTPStatus.OK, {"status": "alive"})
        if path == "/ready":
            return self._ready(connection)
        if not is_audiohook_path(path):
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        result = self.authenticator.check(request.path, request.headers)
        if result.ok:
            return None
        log.warning(
            "upgrade refused: %s (HTTP %d) from %s",
            result.failure.value if result.failure else "-",
            result.status,
            _peer(connection),
        )
        # A fixed delay blunts timing attacks; it only holds this request.
        await asyncio.sleep(self.auth_failure_delay)
        if result.failure in (Failure.MISSING_HEADER, Failure.MALFORMED_HEADER):
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "Bad Request\n")
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")

    def _ready(self, connection: ServerConnection) -> Response:
        return _json(connection, http.HTTPStatus.OK, {"status": "ready", "calls": len(self.sessions)})

    # -- WebSocket ---------------------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        headers = request.headers
        session_id = _session_id(request)
        session_id_var.set(session_id)
        session = AudioHookSession(
            connection,
            session_id=session_id,
            organization_id=headers["Audiohook-Organization-Id"],
            connector_id=connector_id_from_path(request.path),
            handler_factory=self.handler_factory,
            default_outputs=self.default_outputs,
        )
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def start(self) -> Server:
        if self.genesys_api is not None:
            await self.genesys_api.start()
        self.server = await serve(
            self.handle,
            self.settings.host,
            self.settings.port,
            process_request=self.process_request,
            max_size=MAX_WS_MESSAGE,
            ping_interval=None,  # AudioHook has its own ping/pong
            compression=None,
            close_timeout=2,
            server_header=None,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.genesys_api is not None:
            await self.genesys_api.close()


def _json(connection: ServerConnection, status: http.HTTPStatus, body: dict) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


def _session_id(request: Request) -> str:
    """The session id header for log lines, only when it is a well-formed UUID."""
    value = request.headers.get("Audiohook-Session-Id", "")
    return value.lower() if is_uuid(value) else "-"


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "-"


async def serve_until_signal(settings: Settings) -> None:
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    log.info("listening on %s:%d (%s event loop)", settings.host, app.port, settings.event_loop)
    model = settings.call_defaults.get("model", "gpt-realtime-mini")
    if model in DEPRECATED_MODELS:
        log.warning("OPENAI_MODEL %s is marked deprecated by OpenAI; consider gpt-realtime-2.1-mini", model)
    await stop.wait()
    log.info("stopping")
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Genesys Audio Connector <-> OpenAI Realtime connector")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it with secrets masked, and exit",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(read_environment())
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        for name, value in settings.report:
            print(f"{name}={value}")
        return 0
    configure_logging(settings.log_level, settings.log_format)
    loop_factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve_until_signal(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
