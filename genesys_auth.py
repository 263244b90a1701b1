"""Authentication of Genesys upgrade requests: API keys, HTTP message signatures, organizations.

The signature scheme is the early RFC 9421 draft Genesys uses: label `sig1`, `hmac-sha256`, the
key is the base64-decoded client secret and `keyid` is the API key. Nothing here does I/O; the
clock is injected so the documented test vector can be verified.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from config import ApiKey

REQUIRED_COMPONENTS = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)
REQUIRED_HEADERS = ("Audiohook-Organization-Id", "Audiohook-Session-Id", "Audiohook-Correlation-Id")
CLOCK_SKEW_SECONDS = 3
MAX_SIGNATURE_AGE_SECONDS = 10
MIN_NONCE_CHARS = 22
_SIGNATURE_PARAMETERS = frozenset({"keyid", "nonce", "alg", "created", "expires"})
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class Failure(enum.Enum):
    """Why a request was refused; the value is the metrics label."""

    MISSING_HEADER = "missing_header"
    MALFORMED_HEADER = "malformed_header"
    MISSING_API_KEY = "missing_api_key"
    WRONG_API_KEY = "wrong_api_key"
    UNSIGNED = "unsigned"
    MALFORMED_SIGNATURE = "malformed_signature"
    MISSING_COMPONENT = "missing_component"
    UNSUPPORTED = "unsupported"
    WRONG_KEYID = "wrong_keyid"
    BAD_NONCE = "bad_nonce"
    FUTURE = "future"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"
    ORGANIZATION = "organization_not_allowed"


class HeaderLookup(Protocol):
    def get_all(self, key: str) -> list[str]: ...


@dataclass(frozen=True)
class AuthResult:
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def status(self) -> int:
        if self.failure is None:
            return 200
        if self.failure in (Failure.MISSING_HEADER, Failure.MALFORMED_HEADER):
            return 400
        return 401


# -- structured fields (RFC 8941), just what signatures need -----------------------------------


class Token(str):
    """An sf-token, serialized without quotes."""


BareItem = int | str | bytes | bool | Token
Parameters = list[tuple[str, BareItem]]


@dataclass(frozen=True)
class Item:
    value: BareItem
    params: Parameters


@dataclass(frozen=True)
class InnerList:
    items: list[Item]
    params: Parameters


class SFError(ValueError):
    pass


_KEY_START = "abcdefghijklmnopqrstuvwxyz*"
_KEY_CHARS = _KEY_START + "0123456789_-."
_TOKEN_START = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*"
_TCHARS = _TOKEN_START + "0123456789!#$%&'+-.^_`|~:/"
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self, expected: str) -> None:
        if self.peek() != expected:
            raise SFError(f"expected {expected!r} at {self.i}")
        self.i += 1

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def dictionary(self) -> dict[str, Item | InnerList]:
        out: dict[str, Item | InnerList] = {}
        self.skip(" ")
        while self.peek():
            key = self.key()
            if self.peek() == "=":
                self.i += 1
                out[key] = self.inner_list() if self.peek() == "(" else self.item()
            else:
                out[key] = Item(True, self.parameters())
            self.skip(" \t")
            if not self.peek():
                return out
            self.take(",")
            self.skip(" \t")
            if not self.peek():
                raise SFError("trailing comma")
        return out

    def key(self) -> str:
        start = self.i
        if not self.peek() or self.peek() not in _KEY_START:
            raise SFError(f"bad key at {self.i}")
        while self.peek() and self.peek() in _KEY_CHARS:
            self.i += 1
        return self.s[start : self.i]

    def inner_list(self) -> InnerList:
        self.take("(")
        items: list[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return InnerList(items, self.parameters())
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise SFError(f"bad inner list at {self.i}")

    def item(self) -> Item:
        return Item(self.bare_item(), self.parameters())

    def parameters(self) -> Parameters:
        params: Parameters = []
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            params = [(k, v) for k, v in params if k != key]
            params.append((key, value))
        return params

    def bare_item(self) -> BareItem:
        c = self.peek()
        if c == '"':
            return self.string()
        if c == ":":
            return self.binary()
        if c == "?":
            self.i += 1
            flag = self.peek()
            if flag not in ("0", "1"):
                raise SFError("bad boolean")
            self.i += 1
            return flag == "1"
        if c == "-" or c.isdigit():
            return self.integer()
        if c and c in _TOKEN_START:
            start = self.i
            while self.peek() and self.peek() in _TCHARS:
                self.i += 1
            return Token(self.s[start : self.i])
        raise SFError(f"bad item at {self.i}")

    def string(self) -> str:
        self.take('"')
        out = []
        while True:
            c = self.peek()
            if not c:
                raise SFError("unterminated string")
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                c = self.peek()
                if c not in ('"', "\\"):
                    raise SFError("bad escape")
                self.i += 1
            elif not " " <= c <= "~":
                raise SFError("bad string character")
            out.append(c)

    def binary(self) -> bytes:
        self.take(":")
        end = self.s.find(":", self.i)
        if end < 0:
            raise SFError("unterminated byte sequence")
        text = self.s[self.i : end]
        self.i = end + 1
        if not set(text) <= _B64_CHARS:
            raise SFError("bad byte sequence")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except binascii.Error:
            raise SFError("bad byte sequence") from None

    def integer(self) -> int:
        start = self.i
        if self.peek() == "-":
            self.i += 1
        while self.peek().isdigit():
            self.i += 1
        digits = self.s[start : self.i].lstrip("-")
        if not digits or len(digits) > 15 or self.peek() == ".":
            raise SFError("unsupported number")
        return int(self.s[start : self.i])


def parse_dictionary(text: str) -> dict[str, Item | InnerList]:
    """Parse a structured-field dictionary (the `Signature-Input` and `Signature` headers)."""
    parser = _Parser(text.strip(" \t"))
    return parser.dictionary()


def serialize_bare_item(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode() + ":"
    if isinstance(value, Token):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_parameters(params: Parameters) -> str:
    return "".join(f";{k}" if v is True else f";{k}={serialize_bare_item(v)}" for k, v in params)


def serialize_inner_list(inner: InnerList) -> str:
    items = " ".join(serialize_bare_item(i.value) + serialize_parameters(i.params) for i in inner.items)
    return f"({items}){serialize_parameters(inner.params)}"


# -- verification --------------------------------------------------------------------------


class ReplayCache:
    """Nonces seen within their signature's lifetime; bounded in size and in time."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, nonce: str, now: float) -> bool:
        self._expire(now)
        expiry = self._seen.get(nonce)
        return expiry is not None and expiry >= now

    def add(self, nonce: str, until: float, now: float) -> None:
        self._expire(now)
        self._seen[nonce] = until
        self._seen.move_to_end(nonce)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _expire(self, now: float) -> None:
        # Entries are inserted in roughly expiry order; stop at the first live one.
        while self._seen:
            nonce, expiry = next(iter(self._seen.items()))
            if expiry >= now:
                break
            del self._seen[nonce]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _header(headers: HeaderLookup, name: str) -> str | None:
    values = headers.get_all(name)
    if not values:
        return None
    return ", ".join(v.strip() for v in values)


@dataclass(frozen=True)
class _Signature:
    inner: InnerList
    components: list[str]
    params: dict[str, BareItem]
    mac: bytes


class Authenticator:
    """Decides whether an upgrade request from Genesys may become a session."""

    def __init__(
        self,
        keys: Sequence[ApiKey],
        *,
        allowed_organizations: frozenset[str] = frozenset(),
        expected_authority: str | None = None,
        clock: Callable[[], float] = time.time,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        if not keys:
            raise ValueError("at least one API key is needed")
        self._keys = [(_digest(k.key), k) for k in keys]
        self._allowed_orgs = frozenset(o.lower() for o in allowed_organizations)
        self._expected_authority = expected_authority
        self._clock = clock
        self._replays = replay_cache if replay_cache is not None else ReplayCache()

    def check(self, target: str, headers: HeaderLookup) -> AuthResult:
        for name in REQUIRED_HEADERS:
            value = _header(headers, name)
            if not value:
                return AuthResult(Failure.MISSING_HEADER)
            if not _UUID.match(value):
                return AuthResult(Failure.MALFORMED_HEADER)
        presented = _header(headers, "x-api-key")
        if not presented:
            return AuthResult(Failure.MISSING_API_KEY)
        key = self._find_key(presented)
        if key is None:
            return AuthResult(Failure.WRONG_API_KEY)
        if key.secret is not None:
            failure = self._verify_signature(target, headers, key)
            if failure is not None:
                return AuthResult(failure)
        org = (_header(headers, "audiohook-organization-id") or "").lower()
        if self._allowed_orgs and org not in self._allowed_orgs:
            return AuthResult(Failure.ORGANIZATION)
        return AuthResult()

    def _find_key(self, presented: str) -> ApiKey | None:
        wanted = _digest(presented)
        found = None
        for digest, key in self._keys:  # no early exit: the time taken says nothing
            if hmac.compare_digest(digest, wanted):
                found = key
        return found

    def _verify_signature(self, target: str, headers: HeaderLookup, key: ApiKey) -> Failure | None:
        assert key.secret is not None
        parsed = _parse_signature(headers)
        if isinstance(parsed, Failure):
            return parsed
        params = parsed.params
        keyid = params.get("keyid")
        if not isinstance(keyid, str) or not hmac.compare_digest(_digest(keyid), _digest(key.key)):
            return Failure.WRONG_KEYID
        alg = params.get("alg", "hmac-sha256")
        if alg != "hmac-sha256":
            return Failure.UNSUPPORTED
        nonce = params.get("nonce")
        if not isinstance(nonce, str) or len(nonce) < MIN_NONCE_CHARS:
            return Failure.BAD_NONCE
        failure = self._check_freshness(params)
        if failure is not None:
            return failure
        base = self._signature_base(parsed, target, headers)
        if isinstance(base, Failure):
            return base
        expected = hmac.new(key.secret, base.encode("utf-8", "surrogateescape"), hashlib.sha256)
        if not hmac.compare_digest(expected.digest(), parsed.mac):
            return Failure.BAD_SIGNATURE
        now = self._clock()
        if self._replays.seen(nonce, now):
            return Failure.REPLAYED
        created = params["created"]
        assert isinstance(created, int)
        # Past created + max age the signature is refused as expired, so the nonce can go then.
        self._replays.add(nonce, created + MAX_SIGNATURE_AGE_SECONDS, now)
        return None

    def _check_freshness(self, params: dict[str, BareItem]) -> Failure | None:
        now = self._clock()
        created = params.get("created")
        expires = params.get("expires", None)
        if not _is_timestamp(created):
            return Failure.MALFORMED_SIGNATURE
        if expires is not None and not _is_timestamp(expires):
            return Failure.MALFORMED_SIGNATURE
        assert isinstance(created, int)
        if created > now + CLOCK_SKEW_SECONDS:
            return Failure.FUTURE
        if isinstance(expires, int) and expires < now + CLOCK_SKEW_SECONDS:
            return Failure.EXPIRED
        if created + MAX_SIGNATURE_AGE_SECONDS < now + CLOCK_SKEW_SECONDS:
            return Failure.EXPIRED
        return None

    def _signature_base(self, sig: _Signature, target: str, headers: HeaderLookup) -> str | Failure:
        lines = []
        for name in sig.components:
            if name == "@request-target":
                value = target
            elif name == "@authority":
                value = self._expected_authority or _header(headers, "host")
            elif name.startswith("@"):
                return Failure.UNSUPPORTED
            else:
                value = _header(headers, name)
            if not value:
                return Failure.MISSING_COMPONENT
            lines.append(f'"{name}": {value}')
        lines.append(f'"@signature-params": {serialize_inner_list(sig.inner)}')
        return "\n".join(lines)


def _is_timestamp(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_signature(headers: HeaderLookup) -> _Signature | Failure:
    raw_input = _header(headers, "signature-input")
    raw_signature = _header(headers, "signature")
    if raw_input is None and raw_signature is None:
        return Failure.UNSIGNED
    if raw_input is None or raw_signature is None:
        return Failure.MALFORMED_SIGNATURE
    try:
        inputs = parse_dictionary(raw_input)
        signatures = parse_dictionary(raw_signature)
    except SFError:
        return Failure.MALFORMED_SIGNATURE
    inner = inputs.get("sig1")
    mac = signatures.get("sig1")
    if not isinstance(inner, InnerList) or not isinstance(mac, Item):
        return Failure.MALFORMED_SIGNATURE
    if not isinstance(mac.value, bytes) or isinstance(mac.value, bool):
        return Failure.MALFORMED_SIGNATURE
    components = []
    for item in inner.items:
        if not isinstance(item.value, str) or isinstance(item.value, Token) or item.params:
            return Failure.MALFORMED_SIGNATURE
        components.append(item.value)
    if len(set(components)) != len(components) or "@signature-params" in components:
        return Failure.MALFORMED_SIGNATURE
    if not set(REQUIRED_COMPONENTS) <= set(components):
        return Failure.MISSING_COMPONENT
    params = dict(inner.params)
    if not set(params) <= _SIGNATURE_PARAMETERS:
        return Failure.MALFORMED_SIGNATURE
    return _Signature(inner=inner, components=components, params=params, mac=mac.value)


# -- signing (the call simulator and tests use it) ----------------------------------------


def sign_request(
    *,
    target: str,
    authority: str,
    headers: dict[str, str],
    api_key: str,
    secret: bytes,
    nonce: str,
    created: int,
    expires: int,
) -> dict[str, str]:
    """The `Signature-Input` and `Signature` headers Genesys would send for this request."""
    lowered = {k.lower(): v for k, v in headers.items()}
    values = {"@request-target": target, "@authority": authority, **lowered, "x-api-key": api_key}
    inner = InnerList(
        [Item(name, []) for name in REQUIRED_COMPONENTS],
        [
            ("keyid", api_key),
            ("nonce", nonce),
            ("alg", "hmac-sha256"),
            ("created", created),
            ("expires", expires),
        ],
    )
    lines = [f'"{name}": {values[name].strip()}' for name in REQUIRED_COMPONENTS]
    lines.append(f'"@signature-params": {serialize_inner_list(inner)}')
    mac = hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest()
    return {
        "Signature-Input": f"sig1={serialize_inner_list(inner)}",
        "Signature": f"sig1=:{base64.b64encode(mac).decode()}:",
    }
