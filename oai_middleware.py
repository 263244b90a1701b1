"""Genesys Audio Connector <-> OpenAI Realtime voice connector: entry point and serving.

One asyncio process serves the AudioHook WebSocket (`/audiohook`, `/audiohook/<connector-id>`)
and plain HTTP (`/`, `/health`, `/ready`, `/metrics`) on the same port. Genesys is authenticated
before the upgrade completes; each accepted connection becomes an `AudioHookSession`. SIGTERM or
SIGINT drains: new calls are refused, calls in progress go on for `SHUTDOWN_DRAIN_SECONDS`, then
the rest are ended with a proper `disconnect`; a second signal cuts the wait short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import http
import json
import logging
import signal
import socket
import sys
import urllib.parse
from collections.abc import Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State as ConnectionState

from audiohook_protocol import is_uuid
from audiohook_server import CLOSE_WAIT, AudioHookSession, HandlerFactory
from backends import backend_chooser
from call_bridge import make_bridge_factory
from call_control import empty_output_variables
from config import SETTING_NAMES, ConfigError, Settings, load_settings, read_environment
from genesys_actions import GenesysApi
from genesys_auth import Authenticator, Failure
from log_setup import RefusalLog, SecretMasker, configure_logging, session_id_var
from metrics import CONTENT_TYPE, Metrics, collect_garbage, watch_loop_lag
from text_api import TextApi
from utils import cancel_and_wait

log = logging.getLogger("connector")

WS_PREFIX = "/audiohook"
MAX_WS_MESSAGE = 2**20  # far above AudioHook's 65,535 characters: oversize gets the protocol answer
AUTH_FAILURE_DELAY = 0.5
REFUSAL_FLUSH_SECONDS = 1.0  # how soon after its interval a flood's count of refusals is logged


def connector_id_from_path(path: str) -> str | None:
    """`/audiohook/<connector-id>` (query string ignored) -> the connector id, if any."""
    path = path.split("?", 1)[0]
    rest = path[len(WS_PREFIX) :].strip("/")
    return urllib.parse.unquote(rest) or None


def is_audiohook_path(path: str) -> bool:
    path = path.split("?", 1)[0]
    return path == WS_PREFIX or path.startswith(WS_PREFIX + "/")


def repeated_header(headers: Headers) -> str | None:
    """The first header of ours sent more than once (`Headers.get` would raise on it)."""
    names = {name.lower() for name in headers}
    for name in sorted(names):
        if (name.startswith("audiohook-") or name in _SINGLE_HEADERS) and len(headers.get_all(name)) > 1:
            return name
    return None


_SINGLE_HEADERS = frozenset({"x-api-key", "signature", "signature-input", "host"})


def _is_upgrade(request: Request) -> bool:
    return "websocket" in ",".join(request.headers.get_all("Upgrade")).lower()


class App:
    """The connector: HTTP routing, upgrade authentication, the registry of live sessions, drain."""

    def __init__(
        self,
        settings: Settings,
        *,
        handler_factory: HandlerFactory | None = None,
        default_outputs: Callable[[str | None], dict[str, str]] = empty_output_variables,
        auth_failure_delay: float = AUTH_FAILURE_DELAY,
        metrics: Metrics | None = None,
        masker: SecretMasker | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.default_outputs = default_outputs
        self.auth_failure_delay = auth_failure_delay
        self.authenticator = Authenticator(
            settings.api_keys,
            allowed_organizations=settings.allowed_organization_ids,
            expected_authority=settings.expected_authority,
        )
        self.genesys_api = (
            GenesysApi(settings.genesys, masker=masker) if settings.genesys is not None else None
        )
        self.text_api = TextApi()  # the model vendors' text calls (summaries), pooled for all calls
        self.handler_factory = handler_factory or make_bridge_factory(
            settings,
            backend_chooser(settings, self.metrics, self.text_api),
            genesys_api=self.genesys_api,
            metrics=self.metrics,
        )
        self.sessions: set[AudioHookSession] = set()
        self.refusals = RefusalLog(log)
        self.pending_handshakes = 0  # connections whose upgrade has not finished
        self.draining = False
        self.server: Server | None = None
        self._admitting: set[ServerConnection] = set()  # authenticated, upgrade not finished yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._housekeeping: list[asyncio.Task[None]] = []

    # -- HTTP --------------------------------------------------------------------------------

    def _full(self) -> bool:
        # A handshake whose connection died before its session started holds no slot.
        self._admitting = {c for c in self._admitting if c.state is not ConnectionState.CLOSED}
        return len(self.sessions) + len(self._admitting) >= self.settings.max_concurrent_calls

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        repeated = repeated_header(request.headers)
        if repeated is not None:
            # Before anything reads the headers: `Headers.get` raises on a repeated one.
            self.refusals.warning(
                "repeated_header", "request refused: header %s sent twice (HTTP 400)", repeated
            )
            self.metrics.auth_failures.labels("repeated_header").inc()
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "Bad Request\n")
        session_id_var.set(_session_id(request))
        upgrade = _is_upgrade(request)
        if path in ("/", "/health") and not (upgrade and path == "/"):
            return _json(http.HTTPStatus.OK, {"status": "alive"})
        if path == "/ready":
            return self._ready()
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE)
        if not is_audiohook_path(path):
            if upgrade:
                hint = " (the Genesys base URI must end in /audiohook)" if path == "/" else ""
                self.refusals.warning(
                    "wrong_path", "WebSocket upgrade on %s refused (HTTP 404)%s", path[:100], hint
                )
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.draining or self._full() or self.pending_handshakes > self.settings.max_pending_handshakes:
            return self._unavailable(connection)
        result = self.authenticator.check(request.path, request.headers)
        if result.ok:
            self._admitting.add(connection)  # counts towards capacity until the session exists
            return None
        failure = result.failure.value if result.failure else "-"
        self.refusals.warning(
            failure, "upgrade refused: %s (HTTP %d) from %s", failure, result.status, _peer(connection)
        )
        self.metrics.auth_failures.labels(failure).inc()
        # A fixed delay blunts timing attacks; it only holds this request.
        await asyncio.sleep(self.auth_failure_delay)
        if result.failure in (Failure.MISSING_HEADER, Failure.MALFORMED_HEADER):
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "Bad Request\n")
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")

    def _unavailable(self, connection: ServerConnection) -> Response:
        if self.draining:
            why, kind = "draining", "draining"
        elif self._full():
            why, kind = "at MAX_CONCURRENT_CALLS", "capacity"
        else:
            why, kind = "too many handshakes in progress (MAX_PENDING_HANDSHAKES)", "handshakes"
        self.refusals.warning(kind, "upgrade refused: %s (HTTP 503)", why)
        self.metrics.errors.labels("refused_" + kind).inc()
        response = connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        response.headers["Retry-After"] = "5"
        return response

    def process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self._admitting.discard(connection)  # the upgrade failed after all (not a WebSocket)

    def _ready(self) -> Response:
        body = {"status": "ready", "calls": len(self.sessions)}
        if self.draining or self._full():
            body["status"] = "draining" if self.draining else "full"
            return _json(http.HTTPStatus.SERVICE_UNAVAILABLE, body)
        return _json(http.HTTPStatus.OK, body)

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
            metrics=self.metrics,
            default_outputs=self.default_outputs,
            supported_languages=self.settings.supported_languages,
        )
        self._admitting.discard(connection)
        self.sessions.add(session)
        self._idle.clear()
        self.metrics.active_calls.inc()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.metrics.active_calls.dec()
            if not self.sessions:
                self._idle.set()

    async def start(self) -> Server:
        await self.text_api.start()
        if self.genesys_api is not None:
            await self.genesys_api.start()
        self._housekeeping = [
            asyncio.create_task(watch_loop_lag(self.metrics.loop_lag), name="loop-lag"),
            asyncio.create_task(collect_garbage(self.metrics.full_collections), name="gc"),
            asyncio.create_task(self._flush_refusals(), name="refusal-log"),
        ]
        self.server = await serve(
            self.handle,
            self.settings.host,
            self.settings.port,
            create_connection=self._counted_connection(),
            process_request=self.process_request,
            process_response=self.process_response,
            max_size=MAX_WS_MESSAGE,
            ping_interval=None,  # AudioHook has its own ping/pong
            compression=None,
            close_timeout=2,
            server_header=None,
        )
        return self.server

    async def _flush_refusals(self) -> None:
        """The end of a flood leaves a count of refusals unlogged until a later one of the same
        reason; this logs it once the reason's interval is over."""
        while True:
            await asyncio.sleep(REFUSAL_FLUSH_SECONDS)
            self.refusals.flush()

    def _counted_connection(self) -> type[ServerConnection]:
        """Connections that count themselves while their upgrade is in progress, so that slow or
        idle ones (a slowloris) cannot hold every descriptor: past the cap, upgrades get 503 and
        `open_timeout` lets the slow ones go."""
        app = self

        class CountedConnection(ServerConnection):
            async def handshake(self, *args, **kwargs) -> None:
                app.pending_handshakes += 1
                try:
                    await super().handshake(*args, **kwargs)
                finally:
                    app.pending_handshakes -= 1

        return CountedConnection

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def drain(self, seconds: float, hurry: asyncio.Event) -> None:
        """Refuse new calls, let calls in progress finish for `seconds` (or until `hurry`), then
        end the rest with `disconnect` reason `error`, info `server shutting down`."""
        self.draining = True
        log.info("draining: %d calls in progress, up to %g s", len(self.sessions), seconds)
        waiting = {asyncio.ensure_future(self._idle.wait()), asyncio.ensure_future(hurry.wait())}
        try:
            await asyncio.wait(waiting, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting:
                task.cancel()
        if self.sessions:
            log.info("ending %d calls: server shutting down", len(self.sessions))
            await asyncio.gather(*(s.shutdown() for s in list(self.sessions)), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT + 3):
                    await self._idle.wait()

    async def stop(self) -> None:
        for task in self._housekeeping:
            await cancel_and_wait(task)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.genesys_api is not None:
            await self.genesys_api.close()
        await self.text_api.close()


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close")]
    )
    return Response(status.value, status.phrase, headers, body)


def _json(status: http.HTTPStatus, body: dict) -> Response:
    return _response(status, (json.dumps(body) + "\n").encode(), "application/json")


def _session_id(request: Request) -> str:
    """The session id header for log lines, only when it is a well-formed UUID."""
    value = request.headers.get("Audiohook-Session-Id", "")
    return value.lower() if is_uuid(value) else "-"


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "-"


async def serve_until_signal(settings: Settings, masker: SecretMasker) -> None:
    app = App(settings, masker=masker)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.info("second signal: ending calls now")
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await app.start()
    except OSError as exc:
        await app.stop()
        raise StartupError(_listen_error(settings, exc)) from None
    log.info("listening on %s:%d (%s event loop)", settings.host, app.port, settings.event_loop)
    for warning in settings.warnings:
        log.warning("%s", warning)
    await stop.wait()
    await app.drain(settings.shutdown_drain_seconds, hurry)
    await app.stop()
    log.info("stopped")


class StartupError(Exception):
    """The process cannot serve (the port is taken, the host does not resolve): one line."""


def _listen_error(settings: Settings, exc: OSError) -> str:
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, socket.gaierror):
        reason = exc.strerror or exc
        return f"HOST {settings.host!r} does not resolve ({reason}); set HOST to an address of this machine"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use (PORT={settings.port})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: HOST {settings.host!r} is not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (PORT={settings.port} needs privileges)"
    return f"cannot listen on {where}: {exc.strerror or exc} (HOST, PORT)"


def print_configuration(settings: Settings) -> None:
    """`--check-config`: the effective configuration, secrets masked, the bot profiles, the
    warnings, and a last line saying it is fine."""
    for name, value in settings.report:
        print(f"{name}={value}")
    for connector_id, profile in sorted(settings.profiles.items()):
        keys = ", ".join(sorted(SETTING_NAMES.get(k, k) for k in profile)) or "no settings"
        print(f"profile {connector_id}: {keys}")
    for warning in settings.warnings:
        print(f"warning: {warning}")
    for name in settings.placeholders:
        print(f"warning: {name} still holds the example file's placeholder; the server will refuse to start")
    print("configuration OK")


def tune_garbage_collector() -> None:
    """Keep full collections rare and short on a busy connector.

    Measured with bench/load.py at 500 calls: with CPython's defaults a full (generation 2)
    collection ran every ~4 s, walked ~200,000 objects for ~140 ms and freed almost nothing,
    stalling every call at once (event loop lag and pong p99 over 100 ms). Most of those objects
    live for one message (futures, timer handles, coroutine frames): with a larger young
    generation they die by reference counting before a collection promotes them, and automatic
    full collections all but stop. Objects created at start-up are frozen out of them. What
    little cyclic garbage finished calls leave behind is freed by `metrics.collect_garbage`.
    """
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Genesys Audio Connector <-> speech-to-speech model connector"
    )
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
        print_configuration(settings)
        return 0
    if settings.placeholders:
        names = ", ".join(settings.placeholders)
        print(
            f"configuration error: {names} still hold the example file's placeholder (change-me)",
            file=sys.stderr,
        )
        return 2
    masker = SecretMasker(settings.secrets())
    configure_logging(settings.log_level, settings.log_format, masker)
    tune_garbage_collector()
    loop_factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(serve_until_signal(settings, masker))
        except StartupError as exc:
            print(f"start-up error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
