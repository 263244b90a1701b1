"""Settings: read once at start from the environment (and `.env`), validated, typed, frozen.

Two levels:

* process settings (`Settings`), from the environment; a bad value raises ConfigError with one
  line naming the variable and what it expects, and the value of a secret is never echoed;
* per-call settings (`CallConfig`), resolved once at `open` from, in order of precedence, the
  Architect input variable, the bot profile of the connector id, the environment, the built-in
  default. A malformed input variable falls back with one WARNING line; a malformed profile or
  environment value stops start-up.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import difflib
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

log = logging.getLogger("config")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
MIN_PER_KEY_SECRET_BYTES = 16
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
GEMINI_LIVE_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)


VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")  # Realtime
LIVE_VOICES = (  # GPT-Live's built-in voices (openai.types.live BuiltInVoice)
    "alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta", "echo", "gleam",
    "marin", "meridian", "quartz", "ripple", "sage", "shida", "shimmer", "stone", "tempo", "verse",
    "vesper", "willow",
)  # fmt: skip
GEMINI_VOICES = (
    "Zephyr", "Puck", "Charon", "Kore", "Fenrir", "Leda", "Orus", "Aoede", "Callirrhoe", "Autonoe",
    "Enceladus", "Iapetus", "Umbriel", "Algieba", "Despina", "Erinome", "Algenib", "Rasalgethi",
    "Laomedeia", "Achernar", "Alnilam", "Schedar", "Gacrux", "Pulcherrima", "Achird", "Zubenelgenubi",
    "Vindemiatrix", "Sadachbia", "Sadaltager", "Sulafat",
)  # fmt: skip
VENDORS = ("openai", "azure", "gemini")
OPENAI_APIS = ("realtime", "live", "auto")
DEFAULT_MODEL = "gpt-realtime-2.1-mini"
DEFAULT_LIVE_MODEL = "gpt-live-1"
DEFAULT_VOICE = "sage"  # in Realtime and GPT-Live alike
DEFAULT_GEMINI_VOICE = "Kore"
# Announced shutdowns (openai 3.54.0 docstring; openai-realtime.md §1): model -> (date, replacement).
MODEL_SHUTDOWNS: dict[str, tuple[datetime.date, str]] = {
    "gpt-realtime": (datetime.date(2027, 1, 20), "gpt-realtime-2.1"),
    "gpt-realtime-2025-08-28": (datetime.date(2027, 1, 20), "gpt-realtime-2.1"),
    "gpt-realtime-mini": (datetime.date(2027, 1, 20), "gpt-realtime-2.1-mini"),
    "gpt-realtime-mini-2025-10-06": (datetime.date(2027, 1, 20), "gpt-realtime-2.1-mini"),
    "gpt-realtime-mini-2025-12-15": (datetime.date(2027, 1, 20), "gpt-realtime-2.1-mini"),
}


class ConfigError(Exception):
    """One line: the variable and what it expects."""


# -- per-call settings -----------------------------------------------------------------------


def _text(value: str) -> str:
    return value


def _voice(value: str) -> str:
    # Which list applies depends on the API the call uses: checked again once that is known.
    if value not in VOICES and value not in LIVE_VOICES:
        raise ValueError(f"one of {', '.join(sorted(set(VOICES) | set(LIVE_VOICES)))}")
    return value


_REALTIME_MODEL = re.compile(r"^gpt-[a-z0-9.-]*realtime[a-z0-9.-]*$")
_LIVE_MODEL = re.compile(r"^gpt-live[a-z0-9.-]*$")


@dataclass(frozen=True)
class ModelGuard:
    """The deprecation guard: before a model's announced shutdown a warning, from that day on
    its replacement (unless migration is off). `today` is asked on every check, so a process
    that runs across a shutdown date stops dialling the model that day; tests inject a clock."""

    today: Callable[[], datetime.date] = datetime.date.today
    migrate: bool = True
    # Models whose shutdown has been logged: a date passed mid-run is one line, not one per call.
    _told: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def check(self, model: str) -> tuple[str, str | None]:
        """(the model to dial, a warning to log or None)."""
        known = MODEL_SHUTDOWNS.get(model)
        if known is None:
            return model, None
        shutdown, replacement = known
        when = shutdown.isoformat()
        if self.today() < shutdown:
            return model, f"OpenAI shuts {model} down on {when}; its replacement is {replacement}"
        if not self.migrate:
            return model, f"{model} was shut down on {when} and MODEL_MIGRATION is off: dialling it anyway"
        return replacement, f"{model} was shut down on {when}; using {replacement} instead"

    def is_shut_down(self, model: str) -> bool:
        known = MODEL_SHUTDOWNS.get(model)
        return known is not None and self.today() >= known[0]

    def first_told(self, model: str) -> bool:
        """True the first time only: whether this model's shutdown is still to be logged."""
        if model in self._told:
            return False
        self._told.add(model)
        return True


def _max_output_tokens(value: str) -> int | str:
    if value.lower() == "inf":
        return "inf"
    number = int(value) if value.isdigit() else 0
    if not 1 <= number <= 4096:
        raise ValueError("an integer from 1 to 4096, or inf")
    return number


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return value.lower()

    return parse


def _optional_choice(*choices: str) -> Callable[[str], str | None]:
    def parse(value: str) -> str | None:
        if value == "":
            return None
        if value.lower() not in choices:
            raise ValueError(f"one of {', '.join(choices)}, or empty")
        return value.lower()

    return parse


def _optional_text(value: str) -> str | None:
    return value or None


def _number(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not low <= number <= high:
            raise ValueError(f"a number from {low:g} to {high:g}")
        return number

    return parse


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value) if value.strip().lstrip("-").isdigit() else low - 1
        if not low <= number <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return number

    return parse


def _ids(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in re.split(r"[,|]", value) if p.strip())


def _descriptions(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split("|"))


@dataclass(frozen=True)
class CallKey:
    """A per-call setting: its name (input variable = profile key = environment variable)."""

    name: str
    attr: str
    default: Any
    parse: Callable[[str], Any]
    empty_is_value: bool = False  # "" means "off" rather than "not set"
    input_parse: Callable[[str], Any] | None = None  # stricter check for Architect input variables


CALL_KEYS: tuple[CallKey, ...] = (
    CallKey("OPENAI_SYSTEM_PROMPT", "system_prompt", DEFAULT_SYSTEM_PROMPT, _text),
    CallKey("AI_VENDOR", "vendor", "openai", _choice(*VENDORS)),
    CallKey("OPENAI_API", "api", "auto", _choice(*OPENAI_APIS)),
    CallKey("OPENAI_VOICE", "voice", DEFAULT_VOICE, _voice),
    CallKey("OPENAI_MODEL", "model", None, _text),
    CallKey("GEMINI_MODEL", "gemini_model", "gemini-3.8-live", _text),
    CallKey("GEMINI_VOICE", "gemini_voice", DEFAULT_GEMINI_VOICE, _text),
    CallKey("GEMINI_VAD_START_SENSITIVITY", "gemini_vad_start", "low", _choice("low", "high")),
    CallKey("GEMINI_VAD_END_SENSITIVITY", "gemini_vad_end", "high", _choice("low", "high")),
    CallKey("GEMINI_VAD_PREFIX_PADDING_MS", "gemini_vad_prefix_padding_ms", 20, _integer(0, 10_000)),
    CallKey("GEMINI_VAD_SILENCE_MS", "gemini_vad_silence_ms", 500, _integer(0, 10_000)),
    CallKey("OPENAI_MAX_OUTPUT_TOKENS", "max_output_tokens", "inf", _max_output_tokens),
    CallKey("LANGUAGE", "language", None, _optional_text),
    CallKey("CUSTOMER_DATA", "customer_data", None, _optional_text),
    CallKey("AGENT_NAME", "agent_name", "AI Assistant", _text),
    CallKey("COMPANY_NAME", "company_name", "Our Company", _text),
    CallKey("INITIAL_GREETING", "greeting", None, _optional_text),
    CallKey("DATA_ACTION_IDS", "data_action_ids", (), _ids),
    CallKey("DATA_ACTION_DESCRIPTIONS", "data_action_descriptions", (), _descriptions),
    CallKey("OPENAI_TURN_DETECTION", "turn_detection", "semantic_vad", _choice("semantic_vad", "server_vad")),
    CallKey("OPENAI_VAD_THRESHOLD", "vad_threshold", 0.5, _number(0.0, 1.0)),
    CallKey("OPENAI_VAD_SILENCE_MS", "vad_silence_ms", 500, _integer(0, 10_000)),
    CallKey("OPENAI_VAD_PREFIX_PADDING_MS", "vad_prefix_padding_ms", 300, _integer(0, 10_000)),
    CallKey("OPENAI_VAD_EAGERNESS", "vad_eagerness", "auto", _choice("low", "medium", "high", "auto")),
    CallKey(
        "OPENAI_TRANSCRIPTION_MODEL",
        "transcription_model",
        "gpt-4o-mini-transcribe",
        _optional_text,
        empty_is_value=True,
    ),
    CallKey(
        "OPENAI_NOISE_REDUCTION",
        "noise_reduction",
        "near_field",
        _optional_choice("near_field", "far_field"),
        empty_is_value=True,
    ),
)
CALL_KEY_NAMES = frozenset(k.name for k in CALL_KEYS)
SETTING_NAMES = {k.attr: k.name for k in CALL_KEYS} | {"mcp_tools": "MCP_TOOLS"}  # attr -> name
# Accepted from Architect for compatibility, and ignored: the GA Realtime API has no temperature.
IGNORED_INPUT_VARIABLES = frozenset({"OPENAI_TEMPERATURE"})
# Settings GPT-Live has no place for: accepted and ignored (one line per call).
NOT_IN_LIVE = (
    "OPENAI_TURN_DETECTION",
    "OPENAI_VAD_THRESHOLD",
    "OPENAI_VAD_SILENCE_MS",
    "OPENAI_VAD_PREFIX_PADDING_MS",
    "OPENAI_VAD_EAGERNESS",
    "OPENAI_TRANSCRIPTION_MODEL",
    "OPENAI_NOISE_REDUCTION",
    "OPENAI_MAX_OUTPUT_TOKENS",
    "OPENAI_TEMPERATURE",
)


@dataclass(frozen=True)
class CallConfig:
    """One call's settings, resolved once at `open`."""

    system_prompt: str
    vendor: str  # openai, azure, gemini
    api: str  # realtime or live (OpenAI and Azure); "auto" resolved
    voice: str
    model: str  # the OpenAI model or Azure deployment actually dialled (after any migration)
    gemini_model: str
    gemini_voice: str
    gemini_vad_start: str
    gemini_vad_end: str
    gemini_vad_prefix_padding_ms: int
    gemini_vad_silence_ms: int
    max_output_tokens: int | str
    language: str | None
    customer_data: str | None
    agent_name: str
    company_name: str
    greeting: str | None
    data_action_ids: tuple[str, ...]
    data_action_descriptions: tuple[str, ...]
    turn_detection: str
    vad_threshold: float
    vad_silence_ms: int
    vad_prefix_padding_ms: int
    vad_eagerness: str
    transcription_model: str | None
    noise_reduction: str | None
    connector_id: str | None = None
    mcp_tools: tuple[dict[str, Any], ...] = ()


def _read_call_value(key: CallKey, raw: Any, *, from_input: bool = False) -> Any:
    """Parse one per-call value; ValueError names what is expected."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError("a string")
    text = str(raw).strip()
    if text == "" and not key.empty_is_value:
        raise ValueError("a non-empty value")
    parse = key.input_parse if from_input and key.input_parse else key.parse
    return parse(text)


def _call_layer(source: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Environment or profile values for the per-call keys; a bad one is a ConfigError."""
    values = {}
    for key in CALL_KEYS:
        if key.name not in source:
            continue
        raw = source[key.name]
        if isinstance(raw, str) and raw.strip() == "" and not key.empty_is_value:
            continue
        try:
            values[key.attr] = _read_call_value(key, raw)
        except ValueError as exc:
            raise ConfigError(f"{where}{key.name} must be {exc} (got {raw!r})") from None
    return values


def resolve_call_config(
    defaults: Mapping[str, Any],
    profile: Mapping[str, Any] | None,
    input_variables: Mapping[str, str],
    connector_id: str | None = None,
    flow_language: str | None = None,
    *,
    vendors: frozenset[str] = frozenset(VENDORS),
    guard: ModelGuard | None = None,
) -> CallConfig:
    """Input variable > profile > environment (`defaults`) > built-in default; the flow's
    language (`open.parameters.language`) when no layer sets `LANGUAGE`. `vendors` are those
    with credentials: an input variable naming another gets the default."""
    values = {key.attr: key.default for key in CALL_KEYS}
    values["language"] = _flow_language(flow_language)
    values.update(defaults)
    values.update(profile or {})
    configured = dict(values)  # what the deployment chose, for a refused input variable
    explicit = {k.name for k in CALL_KEYS if k.attr in defaults or k.attr in (profile or {})}
    models = _configured_models(defaults, profile or {}, connector_id)
    for key in CALL_KEYS:
        if key.name not in input_variables:
            continue
        raw = input_variables[key.name]
        if raw.strip() == "" and not key.empty_is_value:
            continue
        try:
            values[key.attr] = _read_call_value(key, raw, from_input=True)
            explicit.add(key.name)
        except ValueError as exc:
            log.warning("input variable %s is not %s; using %r", key.name, exc, values[key.attr])
            continue
        if key.name == "OPENAI_MODEL":
            models.insert(0, _ModelChoice("input variable OPENAI_MODEL", values["model"], None))
    if values["vendor"] not in vendors:
        log.warning("input variable AI_VENDOR names %s, which has no credentials here; using %s",
                    values["vendor"], configured["vendor"])  # fmt: skip
        values["vendor"] = configured["vendor"]
    _choose_api_and_model(values, models, guard or ModelGuard())
    _check_voices(values, configured)
    for name in IGNORED_INPUT_VARIABLES & input_variables.keys():
        log.info("input variable %s is ignored: the GA Realtime API has no temperature", name)
    ignored = sorted(explicit & set(NOT_IN_LIVE))
    if values["api"] == "live" and values["vendor"] != "gemini" and ignored:
        log.info("GPT-Live has no %s: accepted and ignored", ", ".join(ignored))
    return CallConfig(**values, connector_id=connector_id)


@dataclass(frozen=True)
class _ModelChoice:
    """An `OPENAI_MODEL` value and the vendor it was set for (None: the call's own, as an
    Architect input variable is)."""

    source: str  # for log lines
    model: str
    vendor: str | None

    def meant_for(self, vendor: str) -> bool:
        # OPENAI_MODEL is an OpenAI model name for `openai` and a deployment name for `azure`: a
        # value set for one is not the other's. Set beside Gemini, whose model is GEMINI_MODEL, it
        # can only be meant for OpenAI or Azure.
        return self.vendor in (None, vendor, "gemini")


def _configured_models(
    defaults: Mapping[str, Any], profile: Mapping[str, Any], connector_id: str | None
) -> list[_ModelChoice]:
    """The profile's and the environment's OPENAI_MODEL, nearest first, each with the vendor in
    effect where it was set."""
    env_vendor = defaults.get("vendor", "openai")
    layers = [
        (f"profile {connector_id}", profile, profile.get("vendor", env_vendor)),
        ("environment", defaults, env_vendor),
    ]
    return [
        _ModelChoice(f"OPENAI_MODEL ({where})", layer["model"], vendor)
        for where, layer, vendor in layers
        if layer.get("model")
    ]


def _is_openai_model_name(model: str) -> bool:
    return bool(_REALTIME_MODEL.match(model) or _LIVE_MODEL.match(model))


def _choose_api_and_model(values: dict[str, Any], models: list[_ModelChoice], guard: ModelGuard) -> None:
    """The nearest OPENAI_MODEL set for the call's vendor (an input variable switching vendor
    does not inherit the other vendor's model); for OpenAI only a Realtime or GPT-Live model
    name, wherever it was set (Azure deployment names are free form); `OPENAI_API=auto` by the
    model's name; the API's default when no model fits; the deprecation guard for OpenAI's own
    Realtime models."""
    vendor = values["vendor"]
    chosen, refused = None, []
    for choice in (m for m in models if m.meant_for(vendor)):
        if vendor == "openai" and not _is_openai_model_name(choice.model):
            refused.append(choice)
            continue
        chosen = choice
        break
    model = chosen.model if chosen else None
    api = values["api"]
    if api == "auto":
        api = "live" if model is not None and model.startswith("gpt-live") else "realtime"
    if api == "live":
        if model is None or (vendor == "openai" and not _LIVE_MODEL.match(model)):
            model = DEFAULT_LIVE_MODEL
    elif model is None or (vendor == "openai" and _LIVE_MODEL.match(model)):
        model = DEFAULT_MODEL
    if vendor == "openai" and api == "realtime" and chosen is not None and model == chosen.model:
        model = _guarded(model, chosen, guard)
    for choice in refused:
        name = choice.model[:64]
        log.warning("%s %r is not a Realtime or GPT-Live model name; using %s", choice.source, name, model)
    values["api"], values["model"] = api, model


def _guarded(model: str, chosen: _ModelChoice, guard: ModelGuard) -> str:
    """The model to dial today. A shutdown is logged once per process and model; a configured
    model still to be shut down was warned of at start, an input variable's is on every call."""
    dialled, warning = guard.check(model)
    if warning is None:
        return dialled
    if guard.is_shut_down(model):
        if guard.first_told(model):
            log.warning("%s: %s", chosen.source, warning)
    elif chosen.vendor is None:
        log.warning("%s: %s", chosen.source, warning)
    return dialled


def _check_voices(values: dict[str, Any], configured: dict[str, Any]) -> None:
    voices = LIVE_VOICES if values["api"] == "live" else VOICES
    if values["vendor"] != "gemini" and values["voice"] not in voices:
        kind = "GPT-Live" if values["api"] == "live" else "Realtime"
        log.warning("voice %s is not a %s voice; using %s", values["voice"], kind, DEFAULT_VOICE)
        values["voice"] = DEFAULT_VOICE
    if values["vendor"] == "gemini" and values["gemini_voice"] not in GEMINI_VOICES:
        log.warning(
            "GEMINI_VOICE %s is not a Gemini voice; using %s", values["gemini_voice"], DEFAULT_GEMINI_VOICE
        )
        values["gemini_voice"] = DEFAULT_GEMINI_VOICE


# -- settings of the features: API keys, Genesys Cloud API, remote MCP ----------------------


@dataclass(frozen=True)
class ApiKey:
    key: str
    secret: bytes | None = None  # decoded client secret; None: the API key alone is enough


@dataclass(frozen=True)
class ApiSettings:
    enabled: bool
    client_id: str
    client_secret: str
    api_base: str
    login_base: str
    http_timeout: float = 10.0
    allowed_action_ids: frozenset[str] = frozenset()  # empty: any requested id
    max_tools_per_session: int = 10
    max_action_calls_per_session: int = 10
    redaction_fields: tuple[str, ...] = ()
    schema_cache_seconds: float = 300.0
    max_argument_bytes: int = 4096
    max_output_bytes: int = 8192


# Genesys Cloud regions: the domain (or its AWS region name) -> the API and login hosts.
_REGION_DOMAINS = {
    "mypurecloud.com": "us-east-1",
    "use2.us-gov-pure.cloud": "us-east-2",
    "usw2.pure.cloud": "us-west-2",
    "cac1.pure.cloud": "ca-central-1",
    "sae1.pure.cloud": "sa-east-1",
    "mypurecloud.ie": "eu-west-1",
    "euw2.pure.cloud": "eu-west-2",
    "mypurecloud.de": "eu-central-1",
    "euc2.pure.cloud": "eu-central-2",
    "mec1.pure.cloud": "me-central-1",
    "aps1.pure.cloud": "ap-south-1",
    "apne2.pure.cloud": "ap-northeast-2",
    "mypurecloud.com.au": "ap-southeast-2",
    "mypurecloud.jp": "ap-northeast-1",
    "apne3.pure.cloud": "ap-northeast-3",
}
_AWS_REGIONS = {aws: domain for domain, aws in _REGION_DOMAINS.items()}


def region_domain(region: str) -> str:
    """`usw2.pure.cloud`, `https://api.usw2.pure.cloud` or `us-west-2` -> `usw2.pure.cloud`."""
    value = region.strip().lower()
    value = re.sub(r"^https?://", "", value).rstrip("/")
    value = re.sub(r"^(api|login)\.", "", value)
    if value in _REGION_DOMAINS:
        return value
    if value in _AWS_REGIONS:
        return _AWS_REGIONS[value]
    raise ValueError(f"a Genesys Cloud region such as {', '.join(list(_REGION_DOMAINS)[:4])}")


MCP_KEYS = frozenset(
    {
        "type",
        "server_label",
        "server_url",
        "connector_id",
        "tunnel_id",
        "authorization",
        "headers",
        "allowed_tools",
        "require_approval",
        "server_description",
        "defer_loading",
        "allowed_callers",
    }
)
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_allowed_tools(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, str) and v for v in value)
    if isinstance(value, dict):
        names = value.get("tool_names", [])
        return (
            set(value) <= {"tool_names", "read_only"}
            and isinstance(names, list)
            and all(isinstance(v, str) for v in names)
            and isinstance(value.get("read_only", False), bool)
        )
    return False


def _check_approval(value: Any) -> bool:
    if value in ("always", "never"):
        return True
    return (
        isinstance(value, dict)
        and set(value) <= {"always", "never"}
        and all(isinstance(v, dict) for v in value.values())
    )


def validate_mcp_entries(value: Any) -> tuple[dict[str, Any], ...]:
    """A JSON array of MCP tool entries; ValueError names the first problem."""
    if not isinstance(value, list):
        raise ValueError("must be a JSON array of MCP tool objects")
    labels: set[str] = set()
    for n, entry in enumerate(value):
        where = f"entry {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        if entry.get("type") != "mcp":
            raise ValueError(
                f'{where}: type must be "mcp" (the Realtime API takes function and MCP tools only)'
            )
        unknown = sorted(set(entry) - MCP_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]}")
        label = entry.get("server_label")
        if not isinstance(label, str) or not _LABEL.match(label):
            raise ValueError(f"{where}: server_label must be 1-64 letters, digits, _ or -")
        if label in labels:
            raise ValueError(f"{where}: server_label {label} is used twice")
        labels.add(label)
        where = f"server {label}"
        url = entry.get("server_url")
        if url is None and not (entry.get("connector_id") or entry.get("tunnel_id")):
            raise ValueError(f"{where}: server_url is required")
        if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
            raise ValueError(f"{where}: server_url must be an https:// URL")
        if "allowed_tools" in entry and not _check_allowed_tools(entry["allowed_tools"]):
            raise ValueError(f"{where}: allowed_tools must be a list of tool names or a tool filter")
        if "require_approval" in entry and not _check_approval(entry["require_approval"]):
            raise ValueError(f'{where}: require_approval must be "always", "never" or a filter object')
        headers = entry.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError(f"{where}: headers must map strings to strings")
        for key in ("authorization", "server_description"):
            if key in entry and not isinstance(entry[key], str):
                raise ValueError(f"{where}: {key} must be a string")
    return tuple(value)


def _url_key(url: str) -> tuple[str, str, str, str]:
    """Scheme and host compare case-insensitively (they are); path and query exactly (they
    are not: `/CRM` and `/crm` can be two servers)."""
    parts = urllib.parse.urlsplit(url.strip())
    return parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query


def filter_mcp_allowed(
    entries: Iterable[dict[str, Any]], allowed_urls: frozenset[str], where: str, warnings: list[str]
) -> tuple[dict[str, Any], ...]:
    """With an allowlist, drop every entry whose `server_url` it does not list, with one line
    each in `warnings` (logged at start once logging is set up, printed by --check-config)."""
    if not allowed_urls:
        return tuple(entries)
    allowed = {_url_key(u) for u in allowed_urls}
    kept = []
    for entry in entries:
        if _url_key(str(entry.get("server_url", ""))) in allowed:
            kept.append(entry)
        else:
            warnings.append(
                f"MCP server {entry.get('server_label')} ({where}) dropped: not in MCP_ALLOWED_SERVER_URLS"
            )
    return tuple(kept)


def mcp_secrets(entries: Iterable[dict[str, Any]]) -> list[str]:
    out = []
    for entry in entries:
        if entry.get("authorization"):
            out.append(entry["authorization"])
        out += [v for v in (entry.get("headers") or {}).values() if v]
    return out


def describe_mcp(entries: Iterable[dict[str, Any]]) -> str:
    """Labels and URLs only, for --check-config."""
    return (
        ", ".join(f"{e['server_label']}={e.get('server_url') or e.get('connector_id')}" for e in entries)
        or "<unset>"
    )


@dataclass(frozen=True)
class ApprovalPolicy:
    """`MCP_APPROVAL_POLICY`: deny every approval request, or approve the listed tools only."""

    policy: str = "deny"
    approved_tools: frozenset[str] = frozenset()  # `tool` or `server_label:tool`

    def approves(self, server_label: str, tool: str) -> bool:
        if self.policy != "approve":
            return False
        return tool in self.approved_tools or f"{server_label}:{tool}" in self.approved_tools


_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


def _flow_language(value: str | None) -> str | None:
    """A BCP-47 tag from Genesys (`es-es`, `en-US`), or None when it is not one."""
    if value is None or not _LANGUAGE_TAG.match(value.strip()):
        return None
    return value.strip()


def iso_639_1(language: str | None) -> str | None:
    """`es-ES` -> `es`: input transcription wants the bare language code."""
    if not language:
        return None
    code = language.strip().split("-", 1)[0].lower()
    return code if len(code) == 2 and code.isalpha() else None


# -- process settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class McpSettings:
    enabled: bool = False
    tools: tuple[dict[str, Any], ...] = ()  # from MCP_TOOLS_JSON or MCP_SERVERS_CONFIG_PATH
    allowed_server_urls: frozenset[str] = frozenset()
    approval: ApprovalPolicy = field(default_factory=ApprovalPolicy)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    api_keys: tuple[ApiKey, ...]
    expected_authority: str | None
    allowed_organization_ids: frozenset[str]
    log_level: str
    log_format: str
    openai_api_key: str | None
    openai_realtime_url: str | None  # an explicit override; else derived for the vendor
    openai_reconnect_seconds: float
    openai_live_url: str | None = None  # an explicit override; else derived for the vendor
    openai_api_base_url: str | None = None  # Responses API (GPT-Live summaries); else derived
    openai_live_backend_model: str = "gpt-5.4-mini"
    openai_summary_model: str = "gpt-5.4-mini"
    azure_endpoint: str | None = None  # https://<resource>.openai.azure.com
    azure_api_key: str | None = None
    gemini_api_key: str | None = None
    gemini_live_url: str = GEMINI_LIVE_URL
    gemini_api_base_url: str = "https://generativelanguage.googleapis.com"
    gemini_summary_model: str = "gemini-2.5-flash"
    model_guard: ModelGuard = field(default_factory=ModelGuard)
    vendors: frozenset[str] = frozenset({"openai"})  # the vendors with credentials
    warnings: tuple[str, ...] = ()  # for the log at start and --check-config
    placeholders: tuple[str, ...] = ()  # settings still holding the example file's placeholder
    max_call_duration_seconds: float = 3600.0
    idle_timeout_seconds: float = 120.0
    farewell_timeout_seconds: float = 10.0
    max_concurrent_calls: int = 500
    max_pending_handshakes: int = 256
    supported_languages: tuple[str, ...] = ()  # listed in `opened` when `open` asks
    shutdown_drain_seconds: float = 30.0
    event_loop: str = "asyncio"  # or "uvloop"
    genesys: ApiSettings | None = None  # None: Data Actions are off
    mcp: McpSettings = field(default_factory=McpSettings)
    tool_filler_after_ms: int = 1500
    # Per-call defaults from the environment (CallKey.attr -> value) and bot profiles.
    call_defaults: Mapping[str, Any] = field(default_factory=dict)
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # (name, shown value) of every variable read, secrets masked: for --check-config.
    report: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log filter."""
        out = [self.openai_api_key or "", self.azure_api_key or "", self.gemini_api_key or ""]
        for key in self.api_keys:
            out.append(key.key)
            if key.secret is not None:
                out.append(base64.b64encode(key.secret).decode())
        if self.genesys is not None:
            out.append(self.genesys.client_secret)
        out += mcp_secrets(self.mcp.tools)
        for profile in self.profiles.values():
            out += mcp_secrets(profile.get("mcp_tools", ()))
        return [s for s in out if s]

    def call_config(
        self,
        connector_id: str | None,
        input_variables: Mapping[str, str],
        flow_language: str | None = None,
    ) -> CallConfig:
        profile = self.profiles.get(connector_id) if connector_id else None
        return resolve_call_config(
            self.call_defaults,
            profile,
            input_variables,
            connector_id,
            flow_language,
            vendors=self.vendors,
            guard=self.model_guard,
        )


def read_environment(env_file: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """The process environment over the `.env` file: the environment wins."""
    values: dict[str, str] = {}
    if Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return values


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.report: list[tuple[str, str]] = []
        # Found while reading, before logging is set up: logged at start, shown by --check-config.
        self.warnings: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def string(self, name: str, default: str | None = None, *, secret: bool = False) -> str | None:
        value = self.raw(name)
        result = default if value is None else value
        self.report.append((name, _mask(result) if secret else _show(result)))
        return result

    def required(self, name: str, what: str, *, secret: bool = False) -> str:
        value = self.string(name, secret=secret)
        if value is None:
            raise ConfigError(f"{name} is required: {what}")
        return value

    def parsed(
        self, name: str, default: Any, parse: Callable[[str], Any], show: Callable[[Any], str] = str
    ) -> Any:
        value = self.raw(name)
        result = default
        if value is not None:
            try:
                result = parse(value)
            except ValueError as exc:
                raise ConfigError(f"{name} must be {exc} (got {value!r})") from None
        self.report.append((name, show(result)))
        return result

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return self.parsed(name, default, _integer(low, high))

    def number(self, name: str, default: float, low: float, high: float) -> float:
        return self.parsed(name, default, _number(low, high), lambda v: f"{v:g}")

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        result = default
        if value is not None:
            lowered = value.lower()
            if lowered not in _TRUE | _FALSE:
                raise ConfigError(f"{name} must be true or false (got {value!r})")
            result = lowered in _TRUE
        self.report.append((name, "true" if result else "false"))
        return result

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
        value = self.raw(name)
        result = default if value is None else (value.upper() if upper else value.lower())
        if result not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
        self.report.append((name, result))
        return result

    def csv(self, name: str) -> tuple[str, ...]:
        value = self.raw(name) or ""
        items = tuple(p.strip() for p in value.replace("|", ",").split(",") if p.strip())
        self.report.append((name, ",".join(items) if items else "<unset>"))
        return items

    def call_defaults(self) -> dict[str, Any]:
        values = _call_layer(self.env, "")
        for key in CALL_KEYS:
            shown = values.get(key.attr, key.default)
            if key.name == "OPENAI_MODEL" and shown is None:
                shown = f"{DEFAULT_MODEL} (GPT-Live: {DEFAULT_LIVE_MODEL})"
            elif isinstance(shown, tuple):
                shown = ",".join(shown) or None
            self.report.append((key.name, _show(None if shown is None else str(shown))))
        return values


def _show(value: str | None) -> str:
    return "<unset>" if value is None else value


def _mask(value: str | None) -> str:
    return "<unset>" if value is None else f"<set, {len(value)} characters>"


def decode_secret(name: str, value: str) -> bytes:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise ConfigError(f"{name} must be the integration's client secret in base64")
    return decoded


def _per_key_secret(entry: str) -> tuple[str, bytes] | None:
    """`key:secret` when the part after the first colon is base64 of at least 16 bytes."""
    key, sep, secret = entry.partition(":")
    if not sep or not key or not secret:
        return None
    try:
        decoded = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(decoded) < MIN_PER_KEY_SECRET_BYTES:
        return None
    return key, decoded


def parse_api_keys(raw: str, shared_secret: bytes | None) -> tuple[ApiKey, ...]:
    """`GENESYS_API_KEY`: one key, a comma list for rotation, or `key:secret` entries.

    An entry is read as `key:secret` only when the part after its first colon is base64 of at
    least 16 bytes; otherwise the whole entry is the key, so the one-key form always works.
    """
    keys = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        pair = _per_key_secret(entry)
        if pair is not None:
            keys.append(ApiKey(pair[0], pair[1]))
        else:
            keys.append(ApiKey(entry, shared_secret))
    if not keys:
        raise ConfigError("GENESYS_API_KEY is required: the API key of the Audio Connector integration")
    return tuple(keys)


def load_profiles(
    path: str, allowed_mcp_urls: frozenset[str] = frozenset(), warnings: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """`BOT_PROFILES_PATH`: a JSON object keyed by connector id, each a profile of per-call keys.
    What the MCP allowlist drops is told in `warnings`."""
    name = "BOT_PROFILES_PATH"
    warnings = [] if warnings is None else warnings
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path} ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{name}: {path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{name}: {path} must hold a JSON object keyed by connector id")
    profiles = {}
    for connector_id, profile in document.items():
        where = f"{name}: profile {connector_id!r}: "
        if not isinstance(profile, dict):
            raise ConfigError(f"{where}must be an object")
        unknown = sorted(set(profile) - CALL_KEY_NAMES - {"MCP_TOOLS"})
        if unknown:
            raise ConfigError(f"{where}unknown key {unknown[0]}")
        profiles[connector_id] = _call_layer(profile, where)
        if "MCP_TOOLS" in profile:
            try:
                entries = validate_mcp_entries(profile["MCP_TOOLS"])
            except ValueError as exc:
                raise ConfigError(f"{where}MCP_TOOLS {exc}") from None
            where_from = f"profile {connector_id}"
            profiles[connector_id]["mcp_tools"] = filter_mcp_allowed(
                entries, allowed_mcp_urls, where_from, warnings
            )
    return profiles


def _genesys_settings(r: _Reader) -> ApiSettings | None:
    enabled = r.boolean("ENABLE_GENESYS_DATA_ACTIONS", False)
    region = r.string("GENESYS_REGION")
    api_base = r.string("GENESYS_BASE_URL")
    login_base = r.string("GENESYS_LOGIN_URL")
    for name, url in (("GENESYS_BASE_URL", api_base), ("GENESYS_LOGIN_URL", login_base)):
        if url is not None and not url.startswith(("https://", "http://")):
            raise ConfigError(f"{name} must be an http(s) URL (got {url!r})")
    if region is not None:
        try:
            domain = region_domain(region)
        except ValueError as exc:
            raise ConfigError(f"GENESYS_REGION must be {exc} (got {region!r})") from None
        api_base = api_base or f"https://api.{domain}"
        login_base = login_base or f"https://login.{domain}"
    if api_base and not login_base and re.match(r"^https://api\.", api_base):
        login_base = api_base.replace("https://api.", "https://login.", 1)
    client_id = r.string("GENESYS_CLIENT_ID")
    client_secret = r.string("GENESYS_CLIENT_SECRET", secret=True)
    settings = dict(
        http_timeout=r.number("GENESYS_HTTP_TIMEOUT_SECONDS", 10.0, 0.5, 120.0),
        allowed_action_ids=frozenset(r.csv("GENESYS_ALLOWED_DATA_ACTION_IDS")),
        max_tools_per_session=r.integer("GENESYS_MAX_TOOLS_PER_SESSION", 10, 0, 100),
        max_action_calls_per_session=r.integer("GENESYS_MAX_ACTION_CALLS_PER_SESSION", 10, 0, 1000),
        redaction_fields=r.csv("GENESYS_TOOL_OUTPUT_REDACTION_FIELDS"),
        schema_cache_seconds=r.number("GENESYS_SCHEMA_CACHE_SECONDS", 300.0, 0.0, 86_400.0),
        max_argument_bytes=r.integer("GENESYS_MAX_ARGUMENT_BYTES", 4096, 64, 1_000_000),
        max_output_bytes=r.integer("GENESYS_MAX_TOOL_OUTPUT_BYTES", 8192, 256, 1_000_000),
    )
    if not enabled:
        return None
    if not client_id or not client_secret:
        raise ConfigError(
            "GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET are required with ENABLE_GENESYS_DATA_ACTIONS=true"
        )
    if not api_base or not login_base:
        raise ConfigError(
            "GENESYS_REGION (or GENESYS_BASE_URL and GENESYS_LOGIN_URL) is required "
            "with ENABLE_GENESYS_DATA_ACTIONS=true"
        )
    return ApiSettings(
        enabled=True,
        client_id=client_id,
        client_secret=client_secret,
        api_base=api_base.rstrip("/"),
        login_base=login_base.rstrip("/"),
        **settings,
    )


def _mcp_settings(r: _Reader) -> McpSettings:
    enabled = r.boolean("ENABLE_MCP_TOOLS", False)
    raw_json = r.raw("MCP_TOOLS_JSON")
    path = r.string("MCP_SERVERS_CONFIG_PATH")
    if raw_json and path:
        raise ConfigError("MCP_TOOLS_JSON and MCP_SERVERS_CONFIG_PATH: set only one of them")
    name, text = ("MCP_TOOLS_JSON", raw_json) if raw_json else ("MCP_SERVERS_CONFIG_PATH", None)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"MCP_SERVERS_CONFIG_PATH: cannot read {path} ({exc.strerror})") from None
    entries: tuple[dict[str, Any], ...] = ()
    if text:
        try:
            entries = validate_mcp_entries(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise ConfigError(f"{name} {exc}") from None
    allowed = frozenset(r.csv("MCP_ALLOWED_SERVER_URLS"))
    entries = filter_mcp_allowed(entries, allowed, name, r.warnings)
    r.report.append(("MCP_TOOLS_JSON", describe_mcp(entries)))
    policy = r.choice("MCP_APPROVAL_POLICY", "deny", ("deny", "approve"))
    approved = frozenset(r.csv("MCP_APPROVED_TOOLS"))
    if policy == "approve" and not approved:
        raise ConfigError(
            "MCP_APPROVAL_POLICY=approve needs MCP_APPROVED_TOOLS (tool or server_label:tool names)"
        )
    if entries and not enabled:
        r.warnings.append("MCP servers are configured but ENABLE_MCP_TOOLS is false: not offered")
    return McpSettings(
        enabled=enabled,
        tools=entries if enabled else (),
        allowed_server_urls=allowed,
        approval=ApprovalPolicy(policy, approved),
    )


def _event_loop(choice: str) -> str:
    """`auto`: uvloop when it is installed (an optional dependency), else asyncio's own."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "EVENT_LOOP is uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return "asyncio"
    return "asyncio" if choice == "asyncio" else "uvloop"


def _url(r: _Reader, name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    value = r.string(name, default)
    if value is not None and not value.startswith(schemes):
        raise ConfigError(
            f"{name} must be a {' or '.join(s.rstrip('/') for s in schemes)} URL (got {value!r})"
        )
    return value


@dataclass(frozen=True)
class _Vendors:
    openai_api_key: str | None
    azure_endpoint: str | None
    azure_api_key: str | None
    gemini_api_key: str | None

    def available(self) -> frozenset[str]:
        have = {
            "openai": bool(self.openai_api_key),
            "azure": bool(self.azure_endpoint and self.azure_api_key),
            "gemini": bool(self.gemini_api_key),
        }
        return frozenset(v for v, ok in have.items() if ok)

    def require(self, named: set[str]) -> None:
        """Credentials for every vendor the environment or a profile names, and only for those."""
        needs = {
            "openai": ("OPENAI_API_KEY", "an OpenAI API key"),
            "azure": (
                "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY",
                "the Azure OpenAI resource and its key",
            ),
            "gemini": ("GEMINI_API_KEY", "a Gemini API key"),
        }
        available = self.available()
        for vendor in sorted(named - available):
            names, what = needs[vendor]
            verb = "are" if " and " in names else "is"
            raise ConfigError(f"{names} {verb} required: {what} (AI_VENDOR {vendor} is in use)")


def _start_warnings(
    call_defaults: Mapping[str, Any], profiles: Mapping[str, Mapping[str, Any]], guard: ModelGuard
) -> tuple[str, ...]:
    """The deprecation guard's word on every model the environment and the profiles configure."""
    found = []
    for where, layer in [("environment", call_defaults), *((f"profile {k}", p) for k, p in profiles.items())]:
        vendor = layer.get("vendor", call_defaults.get("vendor", "openai"))
        model = layer.get("model")
        if vendor == "openai" and model and not _is_openai_model_name(model):
            # Refused at start, not on every call: a deployment's own setting is wrong.
            raise ConfigError(
                f"OPENAI_MODEL ({where}) must be a Realtime or GPT-Live model name for AI_VENDOR openai "
                f"(got {model[:64]!r}); Azure deployment names go with AI_VENDOR azure"
            )
        if vendor == "openai" and model:
            _, warning = guard.check(model)
            if warning:
                found.append(f"OPENAI_MODEL ({where}): {warning}")
            if guard.is_shut_down(model):
                guard.first_told(model)  # said at start: not again at the first call
    return tuple(found)


PLACEHOLDER = "change-me"  # what .env.local.example puts where a real value goes
OUR_PREFIXES = ("GENESYS_", "OPENAI_", "AZURE_OPENAI_", "GEMINI_", "MCP_", "AI_", "MAX_", "BOT_", "TOOL_")


def _placeholders(env: Mapping[str, str], known: set[str]) -> list[str]:
    return sorted(name for name in known if PLACEHOLDER in (env.get(name) or "").lower())


def _look_alikes(env: Mapping[str, str], known: set[str]) -> list[str]:
    """Variables named like ours that are not: a typo leaves a setting at its default."""
    found = []
    for name in sorted(env):
        if name in known or not name.startswith(OUR_PREFIXES):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        if close:
            found.append(f"{name} is not a setting of this connector: did you mean {close[0]}?")
    return found


def _clock(today: datetime.date | Callable[[], datetime.date] | None) -> Callable[[], datetime.date]:
    """The guard's calendar: today's date, asked on every call; a test passes a fixed date or a
    clock of its own."""
    if today is None:
        return datetime.date.today
    if isinstance(today, datetime.date):
        return lambda: today
    return today


def load_settings(
    env: Mapping[str, str], *, today: datetime.date | Callable[[], datetime.date] | None = None
) -> Settings:
    r = _Reader(env)
    debug = r.boolean("DEBUG", False)
    log_level = r.choice("LOG_LEVEL", "DEBUG" if debug else "INFO", LOG_LEVELS, upper=True)
    log_format = r.choice("LOG_FORMAT", "text", LOG_FORMATS)
    host = r.string("HOST", "0.0.0.0")
    assert host is not None
    port = r.integer("PORT", 8080, 1, 65535)
    raw_keys = r.required("GENESYS_API_KEY", "the API key of the Audio Connector integration", secret=True)
    secret_text = r.string("GENESYS_AUDIOHOOK_CLIENT_SECRET", secret=True)
    shared_secret = decode_secret("GENESYS_AUDIOHOOK_CLIENT_SECRET", secret_text) if secret_text else None
    api_keys = parse_api_keys(raw_keys, shared_secret)
    expected_authority = r.string("GENESYS_EXPECTED_AUTHORITY")
    orgs = r.csv("GENESYS_ALLOWED_ORGANIZATION_IDS")
    credentials = _Vendors(
        openai_api_key=r.string("OPENAI_API_KEY", secret=True),
        azure_endpoint=_url(r, "AZURE_OPENAI_ENDPOINT", None, ("https://", "http://")),
        azure_api_key=r.string("AZURE_OPENAI_API_KEY", secret=True),
        gemini_api_key=r.string("GEMINI_API_KEY", secret=True),
    )
    realtime_url = _url(r, "OPENAI_REALTIME_URL", None, ("ws://", "wss://"))
    live_url = _url(r, "OPENAI_LIVE_URL", None, ("ws://", "wss://"))
    api_base_url = _url(r, "OPENAI_API_BASE_URL", None, ("https://", "http://"))
    gemini_live_url = _url(r, "GEMINI_LIVE_URL", GEMINI_LIVE_URL, ("ws://", "wss://"))
    gemini_api_base = _url(
        r, "GEMINI_API_BASE_URL", "https://generativelanguage.googleapis.com", ("https://", "http://")
    )
    live_backend_model = r.string("OPENAI_LIVE_BACKEND_MODEL", "gpt-5.4-mini")
    summary_model = r.string("OPENAI_SUMMARY_MODEL", "gpt-5.4-mini")
    gemini_summary_model = r.string("GEMINI_SUMMARY_MODEL", "gemini-2.5-flash")
    guard = ModelGuard(_clock(today), r.choice("MODEL_MIGRATION", "on", ("on", "off")) == "on")
    reconnect = r.number("OPENAI_RECONNECT_SECONDS", 10.0, 0.5, 300.0)
    max_duration = r.number("MAX_CALL_DURATION_SECONDS", 3600.0, 1.0, 86_400.0)
    idle_timeout = r.number("IDLE_TIMEOUT_SECONDS", 120.0, 1.0, 86_400.0)
    farewell_timeout = r.number("FAREWELL_TIMEOUT_SECONDS", 10.0, 0.5, 120.0)
    max_calls = r.integer("MAX_CONCURRENT_CALLS", 500, 1, 100_000)
    max_handshakes = r.integer("MAX_PENDING_HANDSHAKES", 256, 1, 100_000)
    supported_languages = r.csv("SUPPORTED_LANGUAGES")
    drain = r.number("SHUTDOWN_DRAIN_SECONDS", 30.0, 0.0, 3600.0)
    event_loop = _event_loop(r.choice("EVENT_LOOP", "auto", ("auto", "asyncio", "uvloop")))
    genesys = _genesys_settings(r)
    mcp = _mcp_settings(r)
    filler = r.integer("TOOL_FILLER_AFTER_MS", 1500, 0, 60_000)
    call_defaults = r.call_defaults()
    call_defaults["mcp_tools"] = mcp.tools
    profiles_path = r.string("BOT_PROFILES_PATH")
    profiles = load_profiles(profiles_path, mcp.allowed_server_urls, r.warnings) if profiles_path else {}
    if not mcp.enabled:
        for profile in profiles.values():
            profile.pop("mcp_tools", None)
    named = {call_defaults.get("vendor", "openai")} | {
        p["vendor"] for p in profiles.values() if "vendor" in p
    }
    credentials.require(named)
    known = {name for name, _ in r.report} | CALL_KEY_NAMES | IGNORED_INPUT_VARIABLES
    assert (
        gemini_live_url and gemini_api_base and live_backend_model and summary_model and gemini_summary_model
    )
    return Settings(
        host=host,
        port=port,
        api_keys=api_keys,
        expected_authority=expected_authority,
        allowed_organization_ids=frozenset(o.lower() for o in orgs),
        log_level=log_level,
        log_format=log_format,
        openai_api_key=credentials.openai_api_key,
        openai_realtime_url=realtime_url,
        openai_reconnect_seconds=reconnect,
        openai_live_url=live_url,
        openai_api_base_url=api_base_url,
        openai_live_backend_model=live_backend_model,
        openai_summary_model=summary_model,
        azure_endpoint=credentials.azure_endpoint.rstrip("/") if credentials.azure_endpoint else None,
        azure_api_key=credentials.azure_api_key,
        gemini_api_key=credentials.gemini_api_key,
        gemini_live_url=gemini_live_url,
        gemini_api_base_url=gemini_api_base.rstrip("/"),
        gemini_summary_model=gemini_summary_model,
        model_guard=guard,
        vendors=credentials.available(),
        warnings=(*r.warnings, *_start_warnings(call_defaults, profiles, guard), *_look_alikes(env, known)),
        placeholders=tuple(_placeholders(env, known)),
        max_call_duration_seconds=max_duration,
        idle_timeout_seconds=idle_timeout,
        farewell_timeout_seconds=farewell_timeout,
        max_concurrent_calls=max_calls,
        max_pending_handshakes=max_handshakes,
        supported_languages=supported_languages,
        shutdown_drain_seconds=drain,
        event_loop=event_loop,
        genesys=genesys,
        mcp=mcp,
        tool_filler_after_ms=filler,
        call_defaults=call_defaults,
        profiles=profiles,
        report=tuple(r.report),
    )
