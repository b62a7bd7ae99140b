"""The client side of the HTTP: requests with per-worker cookie jars, HTML forms, and what a run
records. No browser: pages are parsed with the standard library and forms submitted as a
browser would submit them."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

MAX_MESSAGES = 5


class Fail(Exception):
    """One failed operation: `kind` is what errors are counted by, `detail` says more."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail[:300]


# -- cookies -------------------------------------------------------------------------------------


class Jar:
    """A browser's cookies for one host (cookies are scoped by host, not port: RFC 6265 §8.5);
    name -> (value, path), sent where the path matches (RFC 6265 §5.1.4)."""

    def __init__(self) -> None:
        self.cookies: dict[tuple[str, str], str] = {}

    def update(self, headers: CIMultiDictProxy[str]) -> None:
        for line in headers.getall("Set-Cookie", []):
            parts = [p.strip() for p in line.split(";")]
            name, sep, value = parts[0].partition("=")
            if not sep:
                continue
            path, expired = "/", False
            for attr in parts[1:]:
                key, _, val = attr.partition("=")
                key = key.strip().lower()
                if key == "path" and val.startswith("/"):
                    path = val
                elif key == "max-age":
                    expired = expired or (val.lstrip("-").isdigit() and int(val) <= 0)
                elif key == "expires":
                    with contextlib.suppress(TypeError, ValueError):
                        expired = expired or parsedate_to_datetime(val).timestamp() <= time.time()
            if expired:
                self.cookies.pop((name, path), None)
            else:
                self.cookies[(name, path)] = value

    def header(self, url: URL) -> str | None:
        path = url.path or "/"
        sent = [
            f"{name}={value}"
            for (name, cookie_path), value in sorted(self.cookies.items(), key=lambda item: -len(item[0][1]))
            if path == cookie_path
            or (path.startswith(cookie_path) and (cookie_path.endswith("/") or path[len(cookie_path)] == "/"))
        ]
        return "; ".join(sent) or None


# -- pages and forms -----------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    inputs: list[dict[str, str]] = field(default_factory=list)  # name, type, value
    buttons: list[dict[str, str]] = field(default_factory=list)  # name, value, label

    def hidden(self) -> list[tuple[str, str]]:
        return [(i["name"], i["value"]) for i in self.inputs if i["type"] == "hidden" and i["name"]]

    def is_login(self) -> bool:
        return any(i["type"] == "password" for i in self.inputs)

    def allow_button(self) -> dict[str, str] | None:
        for button in self.buttons:
            if "allow" in (button["value"].lower(), button["label"].strip().lower()):
                return button
        return None

    def login_fields(self, username: str, password: str) -> list[tuple[str, str]]:
        visible = [i for i in self.inputs if i["type"] in ("text", "email", "") and i["name"]]
        if not visible:
            raise Fail("sign-in page: no username field")
        named = [i for i in visible if re.search(r"user|login|email", i["name"], re.I)]
        user_field = (named or visible)[0]["name"]
        password_field = next(i["name"] for i in self.inputs if i["type"] == "password")
        fields = [*self.hidden(), (user_field, username), (password_field, password)]
        submit = next((b for b in self.buttons if b["name"]), None)
        return fields + ([(submit["name"], submit["value"])] if submit else [])

    def consent_fields(self) -> list[tuple[str, str]]:
        button = self.allow_button()
        assert button is not None
        return self.hidden() + ([(button["name"], button["value"])] if button["name"] else [])


class Page(HTMLParser):
    """The forms of an HTML page, its title and its alert text (for error messages)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.title = ""
        self.alert = ""
        self._in: str | None = None  # "title", "alert" or "button"
        self._button: dict[str, str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        form = self.forms[-1] if self.forms else None
        if tag == "form":
            self.forms.append(Form(action=a.get("action", ""), method=(a.get("method") or "get").upper()))
        elif tag == "input" and form is not None:
            kind = a.get("type", "text").lower()
            if kind in ("submit", "image"):
                form.buttons.append({"name": a.get("name", ""), "value": a.get("value", ""), "label": a.get("value", "")})
            else:
                form.inputs.append({"name": a.get("name", ""), "type": kind, "value": a.get("value", "")})
        elif tag == "button" and form is not None and a.get("type", "submit").lower() == "submit":
            self._button = {"name": a.get("name", ""), "value": a.get("value", ""), "label": ""}
            form.buttons.append(self._button)
            self._in = "button"
        elif tag == "title":
            self._in = "title"
        elif a.get("role") == "alert" or "error" in a.get("class", "").split():
            self._in = "alert"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "button") or self._in == "alert":
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "alert":
            self.alert += data
        elif self._in == "button" and self._button is not None:
            self._button["label"] += data

    def describe(self) -> str:
        return " ".join(f"{self.title.strip()} {self.alert.strip()}".split())


# -- requests ------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        if not isinstance(value, dict):
            raise Fail("bad response", "not a JSON object")
        return value

    def oauth_error(self) -> str:
        """RFC 6749 §5.2's error code, if the body has one."""
        try:
            return str(self.json().get("error") or "")
        except (ValueError, Fail):
            return ""


@dataclass
class Stats:
    """What one run records; nothing while `active` is False (warm-up, set-up)."""

    active: bool = False
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    requests: dict[str, list[float]] = field(default_factory=dict)

    def ok(self, seconds: float) -> None:
        if self.active:
            self.latencies.append(seconds)

    def error(self, kind: str, detail: str) -> None:
        if self.active:
            self.errors[kind] += 1
            if len(self.messages) < MAX_MESSAGES:
                self.messages.append(f"{kind}: {detail}" if detail else kind)

    def request(self, label: str, seconds: float) -> None:
        latencies = self.requests.setdefault(label, [])  # labels in the order an operation makes them
        if self.active:
            latencies.append(seconds)


_ID_SEGMENT = re.compile(r"/[A-Za-z0-9_-]{16,}")


class Http:
    """aiohttp with the driver's cookie jars and a latency per request (by method and path,
    long random path segments shown as {id})."""

    def __init__(self, session: aiohttp.ClientSession, stats: Stats) -> None:
        self.session = session
        self.stats = stats

    async def request(
        self,
        method: str,
        url: URL,
        *,
        jar: Jar | None = None,
        data: list[tuple[str, str]] | dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        sent = dict(headers or {})
        if jar is not None and (cookie := jar.header(url)):
            sent["Cookie"] = cookie
        started = time.perf_counter()
        try:
            async with self.session.request(method, url, data=data, json=json_body, headers=sent, allow_redirects=False) as r:
                body = await r.read()
                response = Response(r.status, r.headers, body)
        except TimeoutError:
            raise Fail("timeout", f"{method} {url.path}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Fail(type(exc).__name__, f"{method} {url.path}: {exc}") from None
        self.stats.request(f"{method} {_ID_SEGMENT.sub('/{id}', url.path)}", time.perf_counter() - started)
        if jar is not None:
            jar.update(response.headers)
        return response
