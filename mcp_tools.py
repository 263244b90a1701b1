"""Remote MCP servers for the model: configuration entries, the URL allowlist, approvals.

Entries are OpenAI Realtime `mcp` tool objects, checked once at start (from the environment or a
bot profile) and passed to OpenAI unchanged. `authorization` and `headers` values are secrets:
they never reach a log line (`secrets()` feeds the log filter; `describe()` shows the rest).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mcp")

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


def validate_entries(value: Any) -> tuple[dict[str, Any], ...]:
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


def _normal(url: str) -> str:
    return url.rstrip("/").lower()


def filter_allowed(
    entries: Iterable[dict[str, Any]], allowed_urls: frozenset[str], where: str
) -> tuple[dict[str, Any], ...]:
    """With an allowlist, drop (one WARNING each) every entry whose `server_url` it does not list."""
    if not allowed_urls:
        return tuple(entries)
    allowed = {_normal(u) for u in allowed_urls}
    kept = []
    for entry in entries:
        if _normal(str(entry.get("server_url", ""))) in allowed:
            kept.append(entry)
        else:
            log.warning(
                "MCP server %s (%s) dropped: not in MCP_ALLOWED_SERVER_URLS",
                entry.get("server_label"),
                where,
            )
    return tuple(kept)


def secrets(entries: Iterable[dict[str, Any]]) -> list[str]:
    out = []
    for entry in entries:
        if entry.get("authorization"):
            out.append(entry["authorization"])
        out += [v for v in (entry.get("headers") or {}).values() if v]
    return out


def describe(entries: Iterable[dict[str, Any]]) -> str:
    """Labels and URLs only, for --check-config."""
    return (
        ", ".join(f"{e['server_label']}={e.get('server_url') or e.get('connector_id')}" for e in entries)
        or "<none>"
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
