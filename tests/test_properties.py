"""Property-based tests (hypothesis) of the pure policy functions.

* Redirect URIs (app/oauth/redirect_uris.py; OAuth 2.1 §4.1.1 / §8.4.2, RFC 9700 §4.1.3,
  RFC 8252 §7.3): a request's redirect_uri matches a registered one by exact string comparison,
  except that the port of an http loopback redirect may differ. It never matches another scheme,
  host, path or query; a fragment never matches; nothing crashes on arbitrary unicode or
  percent-encoding.
* Resource indicators (app/oauth/resource_indicators.py; RFC 8707 §2, RFC 3986 §6.2.2-6.2.3):
  canonicalisation is idempotent, lowercases scheme and host, drops the default port and a
  trailing slash, keeps path and query otherwise, refuses fragments, and raises nothing but
  InvalidResource.
* Form bodies (app/http/body.py; RFC 6749 Appendix B): an application/x-www-form-urlencoded body
  is read into exactly the fields, in order, that Starlette's streaming form parser reads from it,
  whatever the bytes.

Bounded: derandomized (stable in CI), no example
database (nothing written to the repository), 300 examples per property, no deadline.
"""

from __future__ import annotations

import os
import re
import string
import tempfile

# Hypothesis caches what it learns under .hypothesis/ in the working directory; keep the
# repository clean (read lazily, at the first test).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "ostiary-hypothesis"))
from urllib.parse import quote, urlsplit

import anyio
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from app.http.body import parse_urlencoded
from app.oauth.redirect_uris import InvalidRedirectUri, is_loopback_redirect, matches, validate_registered
from app.oauth.resource_indicators import InvalidResource, canonical_resource

BOUNDED = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- building blocks ------------------------------------------------------------------------------

LOOPBACK = ["127.0.0.1", "[::1]", "localhost"]
LOOKALIKES = [
    "\u0430pp.example.com",  # Cyrillic а
    "app\uff0eexample\uff0ecom",  # fullwidth dots
    "xn--pp-6kc.example.com",  # punycode of the Cyrillic look-alike
    "\uff11\uff12\uff17.0.0.1",  # fullwidth digits
    "l\u043ecalhost",  # Cyrillic о
    "127.0.0.1.nip.io",
    "localhost.evil.example",
]
label = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10)
dns_host = st.builds(lambda parts: ".".join(parts), st.lists(label, min_size=2, max_size=4))
path_char = string.ascii_letters + string.digits + "-._~!$&'()+,;=:@%"
segment = st.text(alphabet=path_char, max_size=8)
path = st.builds(lambda segs: "".join("/" + s for s in segs), st.lists(segment, max_size=4))
query_text = st.text(alphabet=string.ascii_letters + string.digits + "-._~=&%+", min_size=1, max_size=12)
port = st.integers(min_value=1, max_value=65535)
# Anything at all, with a bias to what URL parsers stumble on.
nasty = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list(":/?#[]@!$&'()*+,;=%\\ \t\r\n\x00\x0b\x7f\u200b\ufeff\uff0e\uff1a\u0430\ud7ff")),
    ),
    max_size=40,
)


def percent_encoded(text: str) -> str:
    return quote(text, safe="")


@st.composite
def https_uri(draw) -> str:
    host = draw(dns_host)
    p = f":{draw(port)}" if draw(st.booleans()) else ""
    q = f"?{draw(query_text)}" if draw(st.booleans()) else ""
    return f"https://{host}{p}{draw(path)}{q}"


@st.composite
def loopback_uri(draw) -> str:
    host = draw(st.sampled_from(LOOPBACK))
    p = f":{draw(port)}" if draw(st.booleans()) else ""
    q = f"?{draw(query_text)}" if draw(st.booleans()) else ""
    return f"http://{host}{p}{draw(path)}{q}"


private_use = st.builds(
    lambda scheme, rest: f"{scheme}:{rest}",
    st.sampled_from(["cursor", "vscode", "com.example.app", "claude"]),
    st.sampled_from(["//anysphere.cursor-mcp/oauth/callback", "/oauth2redirect", "//vscode.mcp-auth/callback"]),
)


def _registrable(uri: str) -> bool:
    try:
        validate_registered(uri)
    except InvalidRedirectUri:
        return False
    return True


registered_uri = st.one_of(https_uri(), loopback_uri(), private_use).filter(_registrable)

_AUTHORITY = r"(http://(?:\[[^\]]*\]|[^\[/:?#][^/:?#]*))"
_PORT = re.compile(r"^" + _AUTHORITY + r":\d*")


def without_loopback_port(uri: str) -> str:
    """The URI as a string with the port of an http loopback authority removed."""
    return _PORT.sub(r"\1", uri, count=1)


def allowed_match(registered: str, requested: str) -> bool:
    """The policy itself, as strings: equal, or both http loopback and equal but for the port."""
    if requested == registered:
        return True
    return (
        is_loopback_redirect(registered)
        and is_loopback_redirect(requested)
        and without_loopback_port(requested) == without_loopback_port(registered)
    )


def components(uri: str) -> tuple[str, str, str, str]:
    """(scheme, host exactly as written, path, query) — never the port: the authority without
    userinfo and without a trailing `:digits`."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts.scheme, re.sub(r":\d*$", "", netloc), parts.path, parts.query


CONTROL = "\r\n\t \x00\x0b\x0c\x1f\x7f"


# -- a mutation: another string than the registered one ------------------------------------------------


ALL_KINDS = ("scheme", "host", "path", "query", "userinfo", "lookalike", "encode", "append", "ipv6-suffix")


@st.composite
def mutated(draw, uri: str, kinds: tuple[str, ...] = ALL_KINDS) -> str:
    """`uri` changed in one component the policy forbids to differ."""
    parts = urlsplit(uri)
    kind = draw(st.sampled_from(kinds))
    if kind == "ipv6-suffix" and parts.netloc.startswith("["):
        end = uri.index("]") + 1
        return uri[:end] + draw(st.sampled_from(["x", ".evil.example", ";x", "%00", "evil"])) + uri[end:]
    if kind == "scheme":
        other = draw(st.sampled_from(["https", "http", "ftp", "javascript", "cursor", "wss"]).filter(lambda s: s != parts.scheme))
        return other + uri[len(parts.scheme) :]
    if kind == "host" and parts.netloc:
        host = components(uri)[1]
        other = draw(
            st.one_of(
                dns_host,
                st.sampled_from(
                    [*LOOPBACK, "evil.example", host + ".evil.example", host.upper() if host.upper() != host else host + "x"]
                ),
            )
        )
        assume(other != host)
        return uri.replace(host, other, 1)
    if kind == "path":
        extra = draw(st.sampled_from(["/", "x", "/..", "%2F", "/evil", "/.", ";x"]))
        head, sep, tail = uri.partition("?")
        return head + extra + sep + tail
    if kind == "query":
        if parts.query:
            return uri.split("?", 1)[0] + draw(st.sampled_from(["", "?other=1", "?" + parts.query + "&x=1"]))
        return uri + "?" + draw(query_text)
    if kind == "userinfo" and parts.netloc:
        return uri.replace("//", "//" + draw(st.sampled_from(["evil@", "user:pass@", components(uri)[1] + "@"])), 1)
    if kind == "lookalike" and parts.netloc:
        return uri.replace(components(uri)[1], draw(st.sampled_from(LOOKALIKES)), 1)
    if kind == "encode" and len(parts.path) > 1:
        i = draw(st.integers(min_value=1, max_value=len(parts.path) - 1))
        ch = parts.path[i]
        assume(ch not in "%/")
        encoded = parts.path[:i] + f"%{ord(ch):02X}" if ord(ch) < 128 else parts.path[:i] + quote(ch)
        return uri.replace(parts.path, encoded + parts.path[i + 1 :], 1)
    return uri + draw(st.sampled_from(["x", "/", "%00", "%0d%0a", "&", ".evil"]))


# == redirect-URI matching ========================================================================================


@BOUNDED
@given(registered_uri)
def test_a_registered_redirect_uri_matches_itself(uri):
    """OAuth 2.1 §4.1.1: the exact registered string always matches."""
    assert matches([uri], uri)


@BOUNDED
@given(loopback_uri(), st.one_of(port, st.none()))
def test_an_http_loopback_redirect_matches_on_any_port(uri, new_port):
    """OAuth 2.1 §8.4.2 / RFC 8252 §7.3: for http loopback redirects the port may differ."""
    assume(_registrable(uri))
    stripped = without_loopback_port(uri)
    scheme_host, rest = re.match(r"^" + _AUTHORITY + r"(.*)$", stripped).groups()
    requested = scheme_host + (f":{new_port}" if new_port is not None else "") + rest
    assert matches([uri], requested)


@st.composite
def registered_and_mutated(draw, kinds: tuple[str, ...] = ALL_KINDS, *, scheme_case: bool = False, hosts=None) -> tuple[str, str]:
    uri = draw(registered_uri if hosts is None else registered_uri.filter(hosts))
    if scheme_case and draw(st.booleans()):
        return uri, uri.split(":", 1)[0].upper() + ":" + uri.split(":", 1)[1]
    return uri, draw(mutated(uri, kinds))


def not_ipv6(uri: str) -> bool:
    return "//[" not in uri


@BOUNDED
@given(registered_and_mutated(("scheme", "path", "query", "encode", "append")))
def test_never_matches_another_scheme_path_or_query(pair):
    """OAuth 2.1 §4.1.1 / RFC 9700 §4.1.3: a URI whose scheme, path or query differs from the
    registered one (percent-encoding, dot segments, an appended `/`, `%00`, `.evil` ...) never
    matches."""
    uri, requested = pair
    assume(not any(c in requested for c in CONTROL))
    if matches([uri], requested):
        assert components(requested)[0] == components(uri)[0] and components(requested)[2:] == components(uri)[2:], (
            uri,
            requested,
        )


@BOUNDED
@given(registered_and_mutated(("host", "userinfo", "lookalike", "append"), hosts=not_ipv6))
def test_never_matches_another_host(pair):
    """RFC 9700 §4.1.3 / OAuth 2.1 §8.4.2: another host — a look-alike (Cyrillic letters,
    fullwidth dots or digits, punycode), a suffix (`127.0.0.1.nip.io`), another loopback name
    (`localhost` for `127.0.0.1`), another case, or a userinfo trick — never matches (hosts
    written as names or IPv4; IPv6 literals below)."""
    uri, requested = pair
    assume(not any(c in requested for c in CONTROL))
    if matches([uri], requested):
        assert components(requested)[1] == components(uri)[1], (uri, requested)
        assert "@" not in urlsplit(requested).netloc, (uri, requested)


@BOUNDED
@example(pair=("http://[::1]:9876/callback", "http://[::1].evil.example:9876/callback")).via("known counterexample")
@given(registered_and_mutated(("ipv6-suffix",), hosts=lambda u: not not_ipv6(u)))
def test_never_matches_another_host_after_an_ipv6_literal(pair):
    """OAuth 2.1 §8.4.2 / RFC 3986 §3.2.2: `[::1]` followed by anything but `:port` is another
    authority and never matches the registered `[::1]`."""
    uri, requested = pair
    assert not matches([uri], requested), (uri, requested)


@BOUNDED
@example(pair=("http://127.0.0.1:9876/callback", "http://127.0.0.1:9876/callback?")).via("known counterexample: trailing '?'")
@example(pair=("http://127.0.0.1:9876/callback", "HTTP://127.0.0.1:9876/callback")).via("known counterexample: scheme case")
@given(registered_and_mutated(scheme_case=True))
def test_match_is_exact_string_comparison_except_the_loopback_port(pair):
    """OAuth 2.1 §4.1.1 ("simple string comparison") / §8.4.2: matching is the exact string,
    the only allowed difference being the port of an http loopback redirect."""
    uri, requested = pair
    assume(not any(c in requested for c in CONTROL))
    assert matches([uri], requested) == allowed_match(uri, requested), (uri, requested)


@BOUNDED
@example(uri="http://127.0.0.1:9876/callback", position=21, char="\r\n").via("known counterexample: CR LF in the path")
@example(uri="http://127.0.0.1:9876/callback", position=0, char=" ").via("known counterexample: a leading space")
@given(registered_uri, st.integers(min_value=0, max_value=200), st.sampled_from([*CONTROL, "\r\n"]))
def test_control_characters_and_spaces_never_match(uri, position, char):
    """RFC 3986 §2 / OAuth 2.1 §4.1.1: a redirect URI with a control character or space
    inserted anywhere is another string and never matches (nor may it reach a Location header)."""
    position = min(position, len(uri))
    requested = uri[:position] + char + uri[position:]
    assert not matches([uri], requested), (uri, requested)


@BOUNDED
@given(registered_uri, st.text(max_size=20))
def test_a_fragment_never_matches(uri, fragment):
    """RFC 6749 §3.1.2: the redirection endpoint MUST NOT include a fragment; a requested
    redirect_uri with one (even empty) never matches."""
    assert not matches([uri], uri + "#" + fragment)


@BOUNDED
@given(st.lists(registered_uri, min_size=1, max_size=4), nasty)
def test_matching_arbitrary_text_never_raises(registered, requested):
    """Arbitrary unicode (controls, surrogate-free non-BMP, fullwidth punctuation) never
    crashes matching, and what matches passes the policy."""
    result = matches(registered, requested)
    assert isinstance(result, bool)
    if result:
        assert any(allowed_match(r, requested) or components(r) == components(requested) for r in registered)


@BOUNDED
@given(st.lists(registered_uri, min_size=1, max_size=4), nasty)
def test_matching_percent_encoded_text_never_raises_and_never_matches_by_decoding(registered, text):
    """RFC 3986 §2.1: percent-encoding is not decoded for comparison: an encoded form of a
    registered URI, or of anything, never matches, and never crashes."""
    for requested in (percent_encoded(text), percent_encoded(registered[0]), registered[0].replace("/", "%2F")):
        assert isinstance(matches(registered, requested), bool)
    assert not matches(registered, percent_encoded(registered[0]))


@BOUNDED
@given(st.one_of(nasty, https_uri(), loopback_uri(), st.builds(lambda a, b: a + b, https_uri(), nasty)))
def test_registration_raises_only_its_own_error_and_accepts_only_safe_uris(uri):
    """OAuth 2.1 §2.3.1 / RFC 8252 §7 / RFC 9700 §4.1.3: validate_registered() raises nothing
    but InvalidRedirectUri, and what it accepts has no fragment, no wildcard, no userinfo, no
    control character, no forbidden scheme, and uses http only on loopback."""
    try:
        accepted = validate_registered(uri)
    except InvalidRedirectUri:
        return
    assert accepted == uri
    parts = urlsplit(uri)
    assert "#" not in uri and "*" not in uri
    assert not any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri)
    assert parts.username is None and parts.password is None
    assert parts.scheme not in {"javascript", "data", "file", "vbscript"}
    if parts.scheme == "http":
        assert is_loopback_redirect(uri)


# == resource canonicalisation ======================================================================================


resource_host = st.one_of(
    dns_host,
    st.builds(str.upper, dns_host),
    st.sampled_from(["127.0.0.1", "[::1]", "localhost", "LOCALHOST", "[2001:DB8::1]", "MCP.Example.COM", *LOOKALIKES]),
)


@st.composite
def resource_uri(draw) -> str:
    scheme = draw(st.sampled_from(["https", "HTTPS", "Https", "http", "HTTP"]))
    host = draw(resource_host)
    p = draw(st.sampled_from(["", ":443", ":80", ":8443", ":0443", ":1"]))
    q = draw(st.one_of(st.just(""), st.just("?"), query_text.map(lambda t: "?" + t)))
    trailing = draw(st.sampled_from(["", "/", "//"]))
    return f"{scheme}://{host}{p}{draw(path)}{trailing}{q}"


def _canonical_or_none(value: str) -> str | None:
    try:
        return canonical_resource(value)
    except InvalidResource:
        return None


@BOUNDED
@given(st.one_of(resource_uri(), nasty, st.builds(lambda a, b: a + b, resource_uri(), nasty)))
def test_canonicalisation_raises_only_invalid_resource(value):
    """RFC 8707 §2: any input is either canonicalised or refused with InvalidResource; nothing
    else (ValueError from urlsplit, KeyError, UnicodeError ...) escapes."""
    try:
        result = canonical_resource(value)
    except InvalidResource:
        return
    assert isinstance(result, str)


@BOUNDED
@given(st.one_of(resource_uri(), st.builds(lambda a, b: a + b, resource_uri(), nasty)))
def test_canonicalisation_is_idempotent(value):
    """RFC 8707 §2: the canonical form of a canonical form is itself (so a stored resource and
    a requested one compare equal however often they are canonicalised)."""
    once = _canonical_or_none(value)
    assume(once is not None)
    assert canonical_resource(once) == once


@BOUNDED
@given(resource_uri())
def test_canonicalisation_lowercases_scheme_and_host_and_keeps_path_and_query(value):
    """RFC 3986 §6.2.2.1 / RFC 8707 §2: scheme and host are lowercased, the default port is
    dropped (§6.2.3), a trailing slash dropped, and the path and query kept as written."""
    result = _canonical_or_none(value)
    assume(result is not None)
    original, canonical = urlsplit(value), urlsplit(result)
    scheme, _, rest = result.partition("://")
    assert scheme == original.scheme.lower()
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    assert authority == authority.lower()
    assert canonical.hostname == original.hostname  # urlsplit's hostname is lowercased already
    default = {"https": 443, "http": 80}[scheme]
    assert canonical.port == (None if original.port in (None, default) else original.port)
    assert canonical.path == original.path.rstrip("/")
    assert canonical.query == original.query
    assert not canonical.fragment and canonical.username is None


@BOUNDED
@given(st.sampled_from(["https"]), dns_host, path, st.one_of(st.just(""), query_text.map(lambda t: "?" + t)))
def test_spellings_of_one_resource_canonicalise_to_one_uri(scheme, host, p, q):
    """RFC 8707 §2 (the example of docs/decisions.md#resource-uris-are-canonicalised-before-comparison):
    `HTTPS://Example.com:443/mcp/` and `https://example.com/mcp` name one resource."""
    plain = f"{scheme}://{host}{p}{q}"
    variants = [
        f"{scheme.upper()}://{host.upper()}{p}{q}",
        f"{scheme}://{host}:443{p}{q}",
        f"{scheme}://{host}{p}/{q}",
        f"{scheme.capitalize()}://{host.capitalize()}:443{p}/{q}",
    ]
    expected = canonical_resource(plain)
    for variant in variants:
        assert canonical_resource(variant) == expected, variant


@BOUNDED
@given(st.one_of(resource_uri(), nasty), st.text(max_size=20))
def test_a_fragment_is_never_accepted(value, fragment):
    """RFC 8707 §2: the resource "MUST NOT include a fragment component" — even an empty one."""
    with pytest.raises(InvalidResource):
        canonical_resource(value + "#" + fragment)


@BOUNDED
@given(st.one_of(resource_uri(), st.builds(lambda a, b: a + b, resource_uri(), nasty)))
def test_canonical_resources_are_absolute_https_or_loopback_http_without_userinfo(value):
    """RFC 8707 §2 / OAuth 2.1 §1.5: what is accepted is absolute, https (http only on a
    loopback host), without userinfo, controls or spaces."""
    result = _canonical_or_none(value)
    assume(result is not None)
    parts = urlsplit(result)
    assert parts.scheme in ("https", "http") and parts.hostname
    assert parts.username is None and parts.password is None
    assert not any(ord(c) <= 0x20 or ord(c) == 0x7F for c in result)
    if parts.scheme == "http":
        assert parts.hostname in ("127.0.0.1", "::1", "localhost") or parts.hostname.startswith("127.")


# -- form bodies -----------------------------------------------------------------------------------

FORM_PIECES = [
    b"a",
    b"b",
    b"=",
    b"&",
    b";",
    b"+",
    b"%",
    b"2",
    b"0",
    b"F",
    b"%20",
    b"%e2%82%ac",
    "\u00e9".encode(),
    b"\xff",
    b" ",
    b"%zz",
    b"\x00",
]


def _starlette_form(body: bytes) -> list[tuple[str, object]]:
    from starlette.datastructures import Headers
    from starlette.formparsers import FormParser

    async def parse() -> list[tuple[str, object]]:
        async def stream():
            yield body

        return list((await FormParser(Headers({}), stream()).parse()).multi_items())

    return anyio.run(parse)


@BOUNDED
@given(st.lists(st.sampled_from(FORM_PIECES), max_size=16).map(b"".join) | st.binary(max_size=40))
def test_urlencoded_bodies_read_as_the_framework_reads_them(body):
    """RFC 6749 Appendix B: names and values are percent-decoded (UTF-8, "+" is a space) and
    empty fields skipped, exactly as the streaming parser the protocol endpoints used before."""
    assert parse_urlencoded(body) == _starlette_form(body)
