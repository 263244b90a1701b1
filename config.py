"""Settings: read once at start from the environment (and `.env`), validated, typed, frozen.

A bad value raises ConfigError with one line naming the variable and what it expects; the value
of a secret is never echoed.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from genesys_auth import ApiKey

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
MIN_PER_KEY_SECRET_BYTES = 16


class ConfigError(Exception):
    """One line: the variable and what it expects."""


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    api_keys: tuple[ApiKey, ...]
    expected_authority: str | None
    allowed_organization_ids: frozenset[str]
    log_level: str
    log_format: str
    # (name, shown value) of every variable read, secrets masked: for --check-config.
    report: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log filter."""
        out = []
        for key in self.api_keys:
            out.append(key.key)
            if key.secret is not None:
                out.append(base64.b64encode(key.secret).decode())
        return [s for s in out if s]


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

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name)
        result = default
        if value is not None:
            try:
                result = int(value)
            except ValueError:
                result = low - 1
            if not low <= result <= high:
                raise ConfigError(f"{name} must be an integer from {low} to {high} (got {value!r})")
        self.report.append((name, str(result)))
        return result

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name)
        result = default
        if value is not None:
            try:
                result = float(value)
            except ValueError:
                result = float("nan")
            if not low <= result <= high:
                raise ConfigError(f"{name} must be a number from {low:g} to {high:g} (got {value!r})")
        self.report.append((name, f"{result:g}"))
        return result

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


def load_settings(env: Mapping[str, str]) -> Settings:
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
    return Settings(
        host=host,
        port=port,
        api_keys=api_keys,
        expected_authority=expected_authority,
        allowed_organization_ids=frozenset(o.lower() for o in orgs),
        log_level=log_level,
        log_format=log_format,
        report=tuple(r.report),
    )
