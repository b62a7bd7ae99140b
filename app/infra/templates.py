"""The jinja2 environment every page is rendered with (built once at startup, autoescaped),
and the filters the pages share."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.infra.paths import TEMPLATES


def make_templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["redirect_hosts"] = redirect_hosts
    env.filters["punycode"] = punycode
    return env


def punycode(host: str) -> str | None:
    """The ASCII (IDNA) spelling of a host with non-ASCII letters, shown beside the Unicode form
    so that look-alike letters (Cyrillic "о" in "nоtes.example.com") show; None for an ASCII
    host."""
    if host.isascii():
        return None
    try:
        return ".".join(label.encode("idna").decode("ascii") if label else "" for label in host.split("."))
    except UnicodeError:
        return "not a valid international domain name"


def when(timestamp: int | None, empty: str = "—") -> str:
    """An epoch timestamp as `2026-01-31 14:05 UTC`."""
    if not timestamp:
        return empty
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def redirect_hosts(uris: list[str] | None) -> str:
    """The distinct hosts (or private-use schemes) of redirect URIs, for a list column."""
    hosts: list[str] = []
    for uri in uris or []:
        parts = urlsplit(uri)
        host = parts.netloc or parts.scheme + ":"
        if host not in hosts:
            hosts.append(host)
    return ", ".join(hosts)
