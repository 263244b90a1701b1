"""Upgrade authentication: API keys, the HTTP message signature (documented test vector), orgs."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers

from config import ApiKey
from genesys_auth import (
    Authenticator,
    Failure,
    InnerList,
    Item,
    ReplayCache,
    SFError,
    Token,
    parse_dictionary,
    serialize_inner_list,
    sign_request,
)

# The documented test vector (Genesys docs, quoted in the forum; recomputed independently).
TARGET = "/api/v1/voicebiometrics/ws"
AUTHORITY = "audiohook.example.com"
API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = base64.b64decode("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=")
ORG = "d7934305-0972-4844-938e-9060eef73d05"
CORRELATION = "e160e428-53e2-487c-977d-96989bf5c99d"
SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
NONCE = "VGhpc0lzQVVuaXF1ZU5vbmNl"
CREATED = 1641013200
EXPIRES = 3282026430
EXPECTED_SIGNATURE = "NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4="
VECTOR_INPUT = (
    'sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
    '"audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";'
    'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";created=1641013200;expires=3282026430'
)


def vector_headers(**overrides: str | None) -> Headers:
    values = {
        "Host": AUTHORITY,
        "Audiohook-Organization-Id": ORG,
        "Audiohook-Correlation-Id": CORRELATION,
        "Audiohook-Session-Id": SESSION,
        "X-API-KEY": API_KEY,
        "Signature-Input": VECTOR_INPUT,
        "Signature": f"sig1=:{EXPECTED_SIGNATURE}:",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        match = next((k for k in values if k.lower() == name.lower()), name)
        if value is None:
            values.pop(match, None)
        else:
            values[match] = value
    return Headers(values)


def authenticator(now: float = CREATED, **kwargs) -> Authenticator:
    keys = kwargs.pop("keys", [ApiKey(API_KEY, SECRET)])
    return Authenticator(keys, clock=lambda: now, **kwargs)


def test_signer_reproduces_the_documented_test_vector():
    signed = sign_request(
        target=TARGET,
        authority=AUTHORITY,
        headers={
            "Audiohook-Organization-Id": ORG,
            "Audiohook-Session-Id": SESSION,
            "Audiohook-Correlation-Id": CORRELATION,
        },
        api_key=API_KEY,
        secret=SECRET,
        nonce=NONCE,
        created=CREATED,
        expires=EXPIRES,
    )
    assert signed == {"Signature-Input": VECTOR_INPUT, "Signature": f"sig1=:{EXPECTED_SIGNATURE}:"}


@pytest.mark.parametrize("now", [CREATED - 3, CREATED, CREATED + 7])
def test_documented_vector_verifies_at_its_time(now):
    assert authenticator(now).check(TARGET, vector_headers()).ok


def test_documented_vector_fails_as_expired_at_the_real_time():
    result = Authenticator([ApiKey(API_KEY, SECRET)]).check(TARGET, vector_headers())
    assert result.failure is Failure.EXPIRED and result.status == 401


@pytest.mark.parametrize(("now", "failure"), [(CREATED - 4, Failure.FUTURE), (CREATED + 8, Failure.EXPIRED)])
def test_freshness_window(now, failure):
    assert authenticator(now).check(TARGET, vector_headers()).failure is failure


def test_replayed_nonce_is_refused_within_the_lifetime_and_forgotten_after():
    clock = [CREATED]
    cache = ReplayCache()
    auth = Authenticator([ApiKey(API_KEY, SECRET)], clock=lambda: clock[0], replay_cache=cache)
    assert auth.check(TARGET, vector_headers()).ok
    assert auth.check(TARGET, vector_headers()).failure is Failure.REPLAYED
    clock[0] = CREATED + 11
    assert cache.seen(NONCE, clock[0]) is False
    assert len(cache) == 0


def test_replay_cache_is_bounded_in_size():
    cache = ReplayCache(max_entries=3)
    for n in range(10):
        cache.add(f"nonce-{n}", until=100.0, now=0.0)
    assert len(cache) == 3
    assert cache.seen("nonce-9", 0.0) and not cache.seen("nonce-0", 0.0)


def test_expected_authority_replaces_the_host_header():
    headers = vector_headers(Host="internal-lb:8080")
    assert authenticator().check(TARGET, headers).failure is Failure.BAD_SIGNATURE
    assert authenticator(expected_authority=AUTHORITY).check(TARGET, headers).ok


@pytest.mark.parametrize(
    ("overrides", "failure"),
    [
        (
            {"Audiohook-Correlation-Id": "a160e428-53e2-487c-977d-96989bf5c99d"},
            Failure.BAD_SIGNATURE,
        ),
        (
            {"Signature": "sig1=:AAAAZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDu=:"},
            Failure.BAD_SIGNATURE,
        ),
        (
            {"Signature-Input": VECTOR_INPUT.replace(f'keyid="{API_KEY}"', 'keyid="other"')},
            Failure.WRONG_KEYID,
        ),
        ({"Signature-Input": VECTOR_INPUT.replace(NONCE, NONCE[:21])}, Failure.BAD_NONCE),
        ({"Signature-Input": VECTOR_INPUT.replace(f'nonce="{NONCE}";', "")}, Failure.BAD_NONCE),
        ({"Signature-Input": VECTOR_INPUT.replace('"x-api-key"', "")}, Failure.MISSING_COMPONENT),
        (
            {"Signature-Input": VECTOR_INPUT.replace("hmac-sha256", "rsa-pss-sha512")},
            Failure.UNSUPPORTED,
        ),
        ({"Signature-Input": VECTOR_INPUT + ';tag="x"'}, Failure.MALFORMED_SIGNATURE),
        ({"Signature-Input": 'sig1=("@request-target"'}, Failure.MALFORMED_SIGNATURE),
        ({"Signature-Input": "garbage"}, Failure.MALFORMED_SIGNATURE),
        ({"Signature": 'sig1="not bytes"'}, Failure.MALFORMED_SIGNATURE),
        ({"Signature": "sig2=:AAAA:"}, Failure.MALFORMED_SIGNATURE),
        ({"Signature": None}, Failure.MALFORMED_SIGNATURE),
        ({"Signature": None, "Signature-Input": None}, Failure.UNSIGNED),
        ({"X-API-KEY": None}, Failure.MISSING_API_KEY),
        ({"X-API-KEY": "wrong"}, Failure.WRONG_API_KEY),
        ({"Audiohook-Session-Id": None}, Failure.MISSING_HEADER),
        ({"Audiohook-Organization-Id": None}, Failure.MISSING_HEADER),
        ({"Audiohook-Correlation-Id": None}, Failure.MISSING_HEADER),
        ({"Audiohook-Session-Id": "not-a-uuid"}, Failure.MALFORMED_HEADER),
    ],
)
def test_bad_requests_are_refused_with_the_right_reason(overrides, failure):
    result = authenticator().check(TARGET, vector_headers(**overrides))
    assert result.failure is failure
    assert result.status == (400 if failure in (Failure.MISSING_HEADER, Failure.MALFORMED_HEADER) else 401)


def test_a_changed_request_target_breaks_the_signature():
    assert authenticator().check(TARGET + "?x=1", vector_headers()).failure is Failure.BAD_SIGNATURE


def test_wrong_secret_fails():
    auth = authenticator(keys=[ApiKey(API_KEY, b"another secret of some length")])
    assert auth.check(TARGET, vector_headers()).failure is Failure.BAD_SIGNATURE


def test_key_without_secret_needs_no_signature_and_rotation_list_works():
    auth = authenticator(keys=[ApiKey("old-key"), ApiKey("new-key")])
    for key in ("old-key", "new-key"):
        assert auth.check(TARGET, vector_headers(X_API_KEY=key, Signature=None, Signature_Input=None)).ok
    assert (
        auth.check(TARGET, vector_headers(X_API_KEY="other", Signature=None, Signature_Input=None)).failure
        is Failure.WRONG_API_KEY
    )


def test_each_key_can_have_its_own_secret():
    auth = authenticator(keys=[ApiKey("plain-key"), ApiKey(API_KEY, SECRET)])
    assert auth.check(TARGET, vector_headers()).ok
    unsigned = vector_headers(Signature=None, Signature_Input=None)
    assert auth.check(TARGET, unsigned).failure is Failure.UNSIGNED


def test_allowed_organizations():
    ok = authenticator(allowed_organizations=frozenset({ORG.upper()}))
    assert ok.check(TARGET, vector_headers()).ok
    other = authenticator(allowed_organizations=frozenset({"11111111-2222-3333-4444-555555555555"}))
    assert other.check(TARGET, vector_headers()).failure is Failure.ORGANIZATION


def test_header_names_match_case_insensitively():
    headers = Headers({k.lower(): v for k, v in vector_headers().raw_items()})
    assert authenticator().check(TARGET, headers).ok


def test_structured_field_dictionary_round_trip_of_the_vector():
    parsed = parse_dictionary(VECTOR_INPUT)
    assert isinstance(parsed["sig1"], InnerList)
    assert "sig1=" + serialize_inner_list(parsed["sig1"]) == VECTOR_INPUT
    sig = parse_dictionary(f"sig1=:{EXPECTED_SIGNATURE}:, other=?1;x=1")
    assert sig["sig1"].value == base64.b64decode(EXPECTED_SIGNATURE)
    assert sig["other"] == Item(True, [("x", 1)])


@pytest.mark.parametrize(
    "text",
    ["sig1=(", "sig1=:abc", 'sig1="unterminated', "SIG1=1", "sig1=1.5", "a=1,", "a=?2", 'a="\\x"'],
)
def test_structured_field_parser_rejects_malformed_text(text):
    with pytest.raises(SFError):
        parse_dictionary(text)


_sf_strings = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
_tokens = st.from_regex(r"[A-Za-z*][A-Za-z0-9!#$%&'+\-.^_`|~:/]{0,10}", fullmatch=True).map(Token)
_bare = (
    st.integers(-(10**15) + 1, 10**15 - 1) | _sf_strings | st.binary(max_size=20) | st.booleans() | _tokens
)
_keys = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,8}", fullmatch=True)
_params = st.lists(st.tuples(_keys, _bare), max_size=4, unique_by=lambda kv: kv[0])


@given(st.lists(st.tuples(_bare, _params), max_size=6), _params)
def test_inner_list_serialization_round_trips(items, params):
    inner = InnerList([Item(v, p) for v, p in items], params)
    parsed = parse_dictionary("sig1=" + serialize_inner_list(inner))["sig1"]
    assert serialize_inner_list(parsed) == serialize_inner_list(inner)


_header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


@given(_header_values | st.sampled_from(VECTOR_INPUT.split(";")).map(lambda s: s + ";"))
def test_signature_headers_never_crash_the_verifier(text):
    auth = authenticator()
    for headers in (vector_headers(Signature_Input=text), vector_headers(Signature=text)):
        result = auth.check(TARGET, headers)
        assert result.status in (200, 401)
