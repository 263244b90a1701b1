"""Genesys Cloud Data Actions as tools for the model.

`GenesysApi` is the process-wide client: one aiohttp `ClientSession` (pooled connections), an
OAuth client-credentials token shared by every call and refreshed by one request at a time,
input/success schemas cached with a TTL, and `/execute` (never the debugging `/test` endpoint).
A request is retried only where the action cannot have run: the connection was refused, or
Genesys answered 429 with `Retry-After`. Never after a 5xx or a timeout.

`DataActionTools` is one call's set: the allowed, capped list of actions, their OpenAI function
definitions, and their execution with argument validation (jsonschema), a per-call cap,
redaction and a size cap, always returning a short JSON text the model can read, never raising.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonschema
import referencing.exceptions

from config import ApiSettings
from instructions import ToolNote
from log_setup import SecretMasker
from model_backend import ToolSpec

log = logging.getLogger("data-actions")

REDACTED = "[REDACTED]"
TOOL_PREFIX = "genesys_data_action_"
MAX_TOOL_NAME = 64
MAX_RETRIES = 2
TOKEN_MARGIN_SECONDS = 60.0


class ActionError(Exception):
    """A Data Action could not be run.

    `str()` is the short reason, safe to log; `detail` may echo customer data (a Genesys error
    message, the offending argument) and goes only to the model and to DEBUG lines.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = detail

    def for_model(self) -> str:
        return f"{self}: {self.detail}" if self.detail else str(self)


# -- redaction -------------------------------------------------------------------------------


def redact(value: Any, paths: Sequence[str]) -> Any:
    """A copy with every dotted path replaced by `[REDACTED]`; lists apply the rest of the path
    to every element (`accounts.number` redacts `number` in each account)."""
    result = copy.deepcopy(value)
    for path in paths:
        parts = [p for p in path.split(".") if p]
        if parts:
            _redact(result, parts)
    return result


def _redact(node: Any, parts: list[str]) -> None:
    if isinstance(node, list):
        for element in node:
            _redact(element, parts)
        return
    if not isinstance(node, dict) or parts[0] not in node:
        return
    if len(parts) == 1:
        node[parts[0]] = REDACTED
    else:
        _redact(node[parts[0]], parts[1:])


# -- tool names and definitions --------------------------------------------------------------


def tool_name(label: str, action_id: str, taken: set[str]) -> str:
    """`genesys_data_action_<label>`: a valid OpenAI function name, at most 64, unique."""
    slug = re.sub(r"[^a-z0-9_-]+", "_", label.lower()).strip("_-") or "action"
    name = (TOOL_PREFIX + slug)[:MAX_TOOL_NAME]
    if name in taken:
        suffix = "_" + hashlib.sha1(action_id.encode()).hexdigest()[:8]
        name = name[: MAX_TOOL_NAME - len(suffix)] + suffix
        counter = 1
        while name in taken:
            tail = f"{suffix}{counter}"
            name = name[: MAX_TOOL_NAME - len(tail)] + tail
            counter += 1
    taken.add(name)
    return name


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """The input schema as function parameters: an object schema without schema-document keys."""
    params = {k: v for k, v in schema.items() if k not in ("$schema", "$id", "title")}
    params["type"] = "object"
    params.setdefault("properties", {})
    return params


def _label(action_id: str, schema: dict[str, Any]) -> str:
    title = schema.get("title")
    if isinstance(title, str) and title.strip():
        return re.sub(r"\b(request|input)\b", "", title, flags=re.IGNORECASE).strip() or action_id
    return action_id


@dataclass
class _Token:
    value: str = ""
    expires: float = 0.0


class GenesysApi:
    """The process-wide Genesys Cloud API client."""

    def __init__(
        self, settings: ApiSettings, *, clock=time.monotonic, masker: SecretMasker | None = None
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._masker = masker
        self._session: aiohttp.ClientSession | None = None
        self._token = _Token()
        self._token_lock = asyncio.Lock()
        self._schemas: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._schema_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.token_fetches = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.http_timeout),
            connector=aiohttp.TCPConnector(limit=100),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- OAuth

    async def token(self) -> str:
        if self._token.value and self._clock() < self._token.expires:
            return self._token.value
        async with self._token_lock:  # one refresh at a time; the others get its token
            if self._token.value and self._clock() < self._token.expires:
                return self._token.value
            self._token = await self._fetch_token()
            return self._token.value

    async def _fetch_token(self) -> _Token:
        session = self._require_session()
        s = self.settings
        self.token_fetches += 1
        try:
            async with session.post(
                f"{s.login_base}/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": _basic_auth(s.client_id, s.client_secret)},
            ) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ActionError(f"the Genesys login service failed ({type(exc).__name__})") from None
        if status != 200 or not isinstance(body, dict) or not body.get("access_token"):
            log.warning("Genesys OAuth refused the client credentials (HTTP %d)", status)
            raise ActionError(f"the Genesys login service refused the credentials (HTTP {status})")
        if self._masker is not None:
            self._masker.add(str(body["access_token"]))  # never printed from here on
        lifetime = _seconds(body.get("expires_in", 3600))
        if lifetime is None:
            raise ActionError("the Genesys login service answered without a valid token lifetime")
        margin = min(TOKEN_MARGIN_SECONDS, lifetime / 10)
        log.info("Genesys token obtained, valid %.0f s", lifetime)
        return _Token(str(body["access_token"]), self._clock() + lifetime - margin)

    def _forget_token(self, value: str) -> None:
        if self._token.value == value:
            self._token = _Token()

    # -- requests

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ActionError("the Genesys client is not started")
        return self._session

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One API request within the timeout; (status, parsed JSON or text)."""
        session = self._require_session()
        deadline = self._clock() + self.settings.http_timeout
        refreshed = False
        retries = 0
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ActionError("the Genesys API did not answer in time")
            token = await self.token()
            try:
                async with session.request(
                    method,
                    self.settings.api_base + path,
                    json=body,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=remaining),
                ) as response:
                    text = _decoded(await response.read())
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except aiohttp.ClientConnectorError:
                # Nothing reached Genesys: safe to try again.
                if retries >= MAX_RETRIES:
                    raise ActionError("cannot connect to the Genesys API") from None
                retries += 1
                await asyncio.sleep(min(0.2 * 2**retries, max(0.0, deadline - self._clock())))
                continue
            except TimeoutError:
                raise ActionError("the Genesys API did not answer in time") from None
            except aiohttp.ClientError as exc:
                raise ActionError(f"the Genesys API connection failed ({type(exc).__name__})") from None
            if status == 401 and not refreshed:
                refreshed = True
                self._forget_token(token)
                continue
            wait = _retry_after(retry_after)
            if (
                status == 429
                and wait is not None
                and retries < MAX_RETRIES
                and self._clock() + wait < deadline
            ):
                retries += 1
                log.info("Genesys API asked to retry in %.1f s", wait)
                await asyncio.sleep(wait)
                continue
            return status, _parse(text)

    async def schema(self, action_id: str, kind: str) -> dict[str, Any]:
        """`inputschema.json` or `successschema.json`, cached for `schema_cache_seconds`."""
        key = (action_id, kind)
        cached = self._schemas.get(key)
        if cached and self._clock() < cached[0]:
            return cached[1]
        lock = self._schema_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._schemas.get(key)
            if cached and self._clock() < cached[0]:
                return cached[1]
            status, body = await self.request("GET", f"{_action_path(action_id)}/schemas/{kind}.json")
            if status != 200 or not isinstance(body, dict):
                raise ActionError(f"HTTP {status}")
            self._schemas[key] = (self._clock() + self.settings.schema_cache_seconds, body)
            return body

    async def execute(self, action_id: str, arguments: dict[str, Any]) -> tuple[int, Any]:
        return await self.request("POST", f"{_action_path(action_id)}/execute", arguments)


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _action_path(action_id: str) -> str:
    return f"/api/v2/integrations/actions/{urllib.parse.quote(action_id, safe='')}"


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 60 else None


def _decoded(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ActionError("the Genesys API answered with a body that is not UTF-8 text") from None


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 10 * 86_400 else None


def _refusal(body: Any) -> str:
    """What the model may learn of a Genesys refusal: its code and message template. Genesys
    embeds the backend's own answer (customer data) in `message` and `messageParams`, never
    in the template's placeholders."""
    if not isinstance(body, dict):
        return ""
    parts = [
        str(body.get(key))[:200] for key in ("code", "messageWithParams") if isinstance(body.get(key), str)
    ]
    return ": ".join(parts)


def _schema_problem(problem: jsonschema.ValidationError) -> str:
    """A schema violation described by where and which rule, never by the value: jsonschema's
    own messages quote the argument ("'1234 5678' is not of type 'integer'")."""
    where = ".".join(str(p) for p in problem.absolute_path) or "the arguments"
    rule, expected = problem.validator, problem.validator_value
    if rule == "required":
        missing = [
            name for name in expected if isinstance(problem.instance, dict) and name not in problem.instance
        ]
        return f"{where}: missing {', '.join(map(str, missing))}"[:200]
    if rule in ("type", "enum", "const", "format", "pattern", "minLength", "maxLength", "minimum", "maximum"):
        return f"{where}: must satisfy {rule} {json.dumps(expected)[:100]}"
    return f"{where}: does not satisfy the schema's {rule} rule"


def _parse(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


# -- one call's tools ------------------------------------------------------------------------


@dataclass
class ActionTool:
    action_id: str
    name: str
    description: str
    parameters: dict[str, Any]
    validator: Any = field(repr=False)


def requested_actions(
    ids: Sequence[str], descriptions: Sequence[str], allowed: frozenset[str], cap: int
) -> list[tuple[str, str]]:
    """(id, description) to offer: descriptions aligned by position in the original list, kept
    through the allowlist filter, then capped."""
    pairs = [(action_id, descriptions[i] if i < len(descriptions) else "") for i, action_id in enumerate(ids)]
    seen: set[str] = set()
    chosen = []
    for action_id, description in pairs:
        if action_id in seen:
            continue
        seen.add(action_id)
        if allowed and action_id not in allowed:
            log.warning("data action %s is not in GENESYS_ALLOWED_DATA_ACTION_IDS; not offered", action_id)
            continue
        chosen.append((action_id, description))
    if len(chosen) > cap:
        log.warning(
            "only the first %d of %d data actions are offered (GENESYS_MAX_TOOLS_PER_SESSION)",
            cap,
            len(chosen),
        )
    return chosen[:cap]


class DataActionTools:
    """The Data Actions one call may use."""

    def __init__(self, api: GenesysApi, ids: Sequence[str], descriptions: Sequence[str]) -> None:
        self.api = api
        self.settings = api.settings
        self.requested = requested_actions(
            ids, descriptions, self.settings.allowed_action_ids, self.settings.max_tools_per_session
        )
        self.tools: dict[str, ActionTool] = {}
        self.calls = 0

    async def prepare(self) -> None:
        """Fetch the schemas (in parallel, cached) and build the tools; a failure leaves one out."""
        results = await asyncio.gather(*(self._tool(aid, desc) for aid, desc in self.requested))
        taken: set[str] = set()
        for (action_id, description), result in zip(self.requested, results, strict=True):
            if isinstance(result, str):
                log.warning(
                    "data action %s left out: its schema could not be fetched (%s)", action_id, result
                )
                continue
            schema, success = result
            name = tool_name(_label(action_id, schema), action_id, taken)
            text = description or str(
                schema.get("description") or f"Run the Genesys Data Action {_label(action_id, schema)}."
            )
            fields = sorted((success.get("properties") or {}).keys()) if success else []
            if fields:
                text += f" Returns: {', '.join(fields[:20])}."
            self.tools[name] = ActionTool(
                action_id=action_id,
                name=name,
                description=text[:1000],
                parameters=_parameters(schema),
                validator=jsonschema.validators.validator_for(schema)(schema),
            )
        if self.requested:
            log.info("data actions offered: %d of %d requested", len(self.tools), len(self.requested))

    async def _tool(self, action_id: str, description: str) -> tuple[dict, dict | None] | str:
        try:
            schema = await self.api.schema(action_id, "inputschema")
        except ActionError as exc:
            return str(exc)
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError:
            return "the input schema is not a valid JSON schema"
        try:
            success = await self.api.schema(action_id, "successschema")
        except ActionError:
            success = None
        return schema, success

    @property
    def specs(self) -> list[ToolSpec]:
        return [ToolSpec(tool.name, tool.description, tool.parameters) for tool in self.tools.values()]

    @property
    def notes(self) -> list[ToolNote]:
        return [ToolNote(tool.name, tool.description) for tool in self.tools.values()]

    def handles(self, name: str) -> bool:
        return name in self.tools

    async def run(self, name: str, raw_arguments: str) -> tuple[str, bool]:
        """The function output for the model (a JSON text) and whether it worked; never raises."""
        tool = self.tools[name]
        started = time.monotonic()
        try:
            result = await self._run(tool, raw_arguments)
        except ActionError as exc:
            log.info("data action %s failed in %.0f ms: %s", tool.action_id, _ms(started), exc)
            if exc.detail:
                log.debug("data action %s failure detail: %s", tool.action_id, exc.detail)
            return json.dumps({"error": exc.for_model()}), False
        log.info("data action %s succeeded in %.0f ms", tool.action_id, _ms(started))
        return result, True

    async def _run(self, tool: ActionTool, raw_arguments: str) -> str:
        s = self.settings
        if len(raw_arguments.encode()) > s.max_argument_bytes:
            raise ActionError(f"the arguments are larger than {s.max_argument_bytes} bytes")
        try:
            arguments = json.loads(raw_arguments or "{}")
        except ValueError:
            raise ActionError("the arguments are not valid JSON") from None
        if not isinstance(arguments, dict):
            raise ActionError("the arguments must be a JSON object")
        try:
            problem = next(iter(tool.validator.iter_errors(arguments)), None)
        except referencing.exceptions.Unresolvable:
            raise ActionError("the action's input schema has a reference that cannot be resolved") from None
        if problem is not None:
            raise ActionError("invalid arguments", _schema_problem(problem))
        if self.calls >= s.max_action_calls_per_session:
            raise ActionError("no more data lookups are allowed on this call")
        self.calls += 1
        log.debug(
            "data action %s arguments: %s", tool.action_id, json.dumps(redact(arguments, s.redaction_fields))
        )
        status, body = await self.api.execute(tool.action_id, arguments)
        if status >= 500:
            raise ActionError(f"the data service failed (HTTP {status}); the action may or may not have run")
        if status >= 400:
            raise ActionError(f"the data service refused the request (HTTP {status})", _refusal(body))
        safe = redact(body, s.redaction_fields)
        text = json.dumps(safe, ensure_ascii=False)
        if len(text.encode()) > s.max_output_bytes:
            text = json.dumps({"result_truncated": True, "partial_result": text[: s.max_output_bytes // 2]})
        log.debug("data action %s result: %s", tool.action_id, text)
        return text


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
