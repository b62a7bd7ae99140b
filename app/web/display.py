"""What pages show of the things a client says about itself (RFC 7591 §2: its homepage, policy,
terms and logo), and long URLs that wrap where a reader expects on a phone.

A client's metadata is self-asserted (RFC 7591 §5): a link or logo is shown only over https, with
its host beside it, so that the user sees where it leads. Text reaches the page escaped: the
only markup added here is <wbr>.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from app.security.text import invisible_character

# RFC 7591 §2: "the authorization server SHOULD display this URL to the end-user".
LINK_FIELDS = (("client_uri", "Website"), ("policy_uri", "Privacy policy"), ("tos_uri", "Terms of service"))
MAX_URL = 2000
# A break opportunity after each "/", "." "?" and "&", but not between the two slashes of "//".
_BREAK_AFTER = re.compile(r"(?<=[/.?&])(?![/.])")
# What a CSP source expression's path may hold as written (CSP3, source lists: "," and ";" end a
# source list or a directive; a quote or "*" would read as a keyword or a wildcard).
_CSP_PATH = re.compile(r"[A-Za-z0-9\-._~!$&()+=:@%/]*")


@dataclass(frozen=True)
class Link:
    label: str
    url: str
    host: str  # shown beside the link: where it really leads


def breakable(text: str) -> Markup:
    """`text` escaped, with <wbr> after each "/", ".", "?" and "&": a long URL wraps at a path
    or domain boundary on a narrow screen, not in the middle of a word."""
    return Markup("<wbr>").join(escape(part) for part in _BREAK_AFTER.split(text))


def https_url(value: Any) -> tuple[str, str] | None:
    """(the URL, its host[:port]) if `value` is an absolute https URL with a host, without user
    information (`https://bank.example@evil.example/` reads as the bank's), spaces or
    invisible characters; else None."""
    if not isinstance(value, str) or len(value) > MAX_URL or not value.startswith("https://"):
        return None
    if invisible_character(value) is not None or any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.password is not None:
        return None
    return value, host + (f":{port}" if port else "")


def client_links(metadata: dict[str, Any] | None) -> list[Link]:
    """The homepage, privacy policy and terms a client published, those that are https."""
    links = []
    for name, label in LINK_FIELDS:
        found = https_url((metadata or {}).get(name))
        if found is not None:
            links.append(Link(label, *found))
    return links


def client_logo(metadata: dict[str, Any] | None) -> tuple[str, str] | None:
    """(the logo's URL, the CSP source that allows exactly it) for an https `logo_uri` that a
    source expression can name, else None (no logo is shown)."""
    found = https_url((metadata or {}).get("logo_uri"))
    if found is None:
        return None
    url = found[0]
    parts = urlsplit(url)
    assert parts.hostname is not None  # https_url checked it
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _CSP_PATH.fullmatch(parts.path):
        return None
    port = f":{parts.port}" if parts.port else ""
    # CSP3 (matching a URL against a source expression): a path that does not end in "/"
    # matches that path only; the query is not compared.
    return url, f"https://{host}{port}{parts.path or '/'}"


def allow_image(csp: str, source: str) -> str:
    """`csp` with `source` added to its img-src directive."""
    directives = [d.strip() for d in csp.split(";")]
    if not any(d.startswith("img-src ") for d in directives):
        raise ValueError("the policy has no img-src directive")
    return "; ".join(f"{d} {source}" if d.startswith("img-src ") else d for d in directives)
