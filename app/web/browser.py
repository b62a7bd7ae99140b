"""The browser side of a request: who is signed in, the CSRF cookie, and rendering pages.

Sessions are server-side rows keyed by the HMAC of a random 256-bit id (RFC 6749 §10.12 CSRF,
OWASP session management): HttpOnly, SameSite=Lax, Secure with the `__Host-` prefix under https,
an idle and an absolute timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.http.deps import DbDep, RuntimeDep
from app.infra.db import now
from app.models import BrowserSession, User
from app.security import csrf
from app.security.secrets import new_token
from app.stores import sessions as store
from app.web.display import breakable

TOUCH_EVERY = 60  # seconds: how stale last_seen_at may get before a request writes it
# What the next page says after something happened that leaves the user on another page (a
# sign-out, a password set from a link, two-step verification turned on). The cookie carries
# only the key: the page shows this fixed text, never anything from the request.
FLASHES = {
    "signed-out": "You have signed out.",
    "password-set": "Your password is set. Sign in with it.",
    "mfa-on": "Two-step verification is on: signing in now asks for a code from your authenticator app.",
}
FLASH_TTL = 60  # seconds: long enough for a redirect or two, short enough not to greet a later visit
_Response = TypeVar("_Response", bound=Response)

if TYPE_CHECKING:
    from app.runtime import Runtime


def cookie_names(runtime: Runtime) -> tuple[str, str]:
    prefix = "__Host-" if runtime.settings.is_https else ""
    return prefix + "ostiary-session", prefix + "ostiary-csrf"


def flash_cookie(runtime: Runtime) -> str:
    return ("__Host-" if runtime.settings.is_https else "") + "ostiary-flash"


@dataclass
class Browser:
    runtime: Runtime
    session: BrowserSession | None
    user: User | None
    csrf_cookie: str
    new_csrf_cookie: bool
    cookies_to_set: list[tuple[str, str, int | None]] = field(default_factory=list)
    flash: str | None = None  # a key of FLASHES this request brought, shown by the next page rendered

    @property
    def session_hash(self) -> str | None:
        return self.session.id_hash if self.session else None

    @property
    def me(self) -> User:
        """The signed-in user, on a page that has already required sign-in (AdminDep, or a
        `signed_in` check): a programming error otherwise."""
        if self.user is None:
            raise RuntimeError("no signed-in user on a page that requires one")
        return self.user

    @property
    def signed_in(self) -> bool:
        return self.user is not None and self.session is not None and self.session.status == "active"

    @property
    def csrf_token(self) -> str:
        return csrf.token_for(self.runtime.keyring, self.csrf_cookie, self.session_hash)

    def csrf_ok(self, form: FormData | None) -> bool:
        submitted = form.get(csrf.FIELD) if form is not None else None
        if not isinstance(submitted, str):
            submitted = None  # absent (a form's fields are text: read_form refuses files)
        return not self.new_csrf_cookie and csrf.is_valid(self.runtime.keyring, self.csrf_cookie, self.session_hash, submitted)

    # -- sign-in / sign-out ---------------------------------------------------------------

    def start_session(self, db: Session, user: User, request: Request, *, status: str = "active", amr: list[str]) -> None:
        """A new session id on every sign-in (no session fixation), and a new CSRF cookie."""
        if self.session is not None:
            store.remove(db, self.session.id_hash)
        settings = self.runtime.settings
        raw = new_token()
        t = now()
        session = BrowserSession(
            id_hash=self.runtime.keyring.hash(raw),
            user_id=user.id,
            status=status,
            amr=amr,
            auth_time=t,
            created_at=t,
            last_seen_at=t,
            expires_at=t + settings.session_absolute_timeout,
            ip=request.client.host if request.client else None,
            user_agent=(request.headers.get("user-agent") or "")[:300],
        )
        store.add(db, session)
        self.session, self.user = session, user
        session_cookie, csrf_cookie = cookie_names(self.runtime)
        self.cookies_to_set.append((session_cookie, raw, settings.session_absolute_timeout))
        self.csrf_cookie, self.new_csrf_cookie = csrf.new_cookie_value(), False
        self.cookies_to_set.append((csrf_cookie, self.csrf_cookie, None))

    def end_session(self, db: Session) -> None:
        if self.session is not None:
            store.remove(db, self.session.id_hash)
        self.session, self.user = None, None
        self.cookies_to_set.append((cookie_names(self.runtime)[0], "", 0))

    def say_next(self, key: str) -> None:
        """Have the next page this browser is shown say FLASHES[key]."""
        if key not in FLASHES:
            raise ValueError(f"no flash message {key!r}")
        self.flash = None  # this response sets the cookie: it must not clear it as well
        self.cookies_to_set.append((flash_cookie(self.runtime), key, FLASH_TTL))

    # -- responses --------------------------------------------------------------------------

    def apply_cookies(self, response: _Response) -> _Response:
        secure = self.runtime.settings.is_https
        if self.new_csrf_cookie:
            self.cookies_to_set.append((cookie_names(self.runtime)[1], self.csrf_cookie, None))
            self.new_csrf_cookie = False
        for name, value, max_age in self.cookies_to_set:
            if max_age == 0:
                response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")
            else:
                response.set_cookie(name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax")
        self.cookies_to_set.clear()
        return response

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        env = self.runtime.templates
        flash = FLASHES.get(self.flash) if self.flash else None
        if self.flash is not None:
            self.flash = None  # shown once
            self.cookies_to_set.append((flash_cookie(self.runtime), "", 0))
        html = env.get_template(template).render(
            csrf_field=csrf.FIELD,
            csrf_token=self.csrf_token,
            user=self.user if self.signed_in else None,
            settings=self.runtime.settings,
            flash=flash,
            breakable=breakable,
            **context,
        )
        return self.apply_cookies(HTMLResponse(html, status_code=status_code))

    def too_many_requests(self, wait: int, message: str = "Too many requests from your network.") -> HTMLResponse:
        """RFC 6585 §4: 429 with Retry-After, as a page a person can read."""
        later = f"{-(-wait // 60)} minutes" if wait > 60 else f"{wait} second{'s' if wait != 1 else ''}"
        response = self.render("error.html", 429, title="Please wait", message=message, detail=f"Try again in {later}.")
        response.headers["Retry-After"] = str(wait)
        return response

    def limited(self, address: str, rate: str, name: str) -> HTMLResponse | None:
        """The 429 page if `address` is over `rate` (addresses in OSTIARY_RATE_LIMIT_EXEMPT never are)."""
        wait = self.runtime.limiter.hit_from(address, rate, name)
        return None if wait is None else self.too_many_requests(wait)

    def redirect(self, url: str, status_code: int = 303) -> RedirectResponse:
        """Redirect within the app ("/account") or, for an absolute URL, elsewhere."""
        if url.startswith("/"):
            url = self.runtime.settings.issuer_path + url
        return self.apply_cookies(RedirectResponse(url, status_code=status_code))

    def login_redirect(self, next_url: str) -> RedirectResponse:
        return self.redirect("/login?next=" + quote(next_url, safe=""))


def _load(request: Request, db: DbDep, runtime: RuntimeDep) -> Browser:
    return load(request, db, runtime, read_only=False)


def _load_read_only(request: Request, db: DbDep, runtime: RuntimeDep) -> Browser:
    return load(request, db, runtime, read_only=True)


def load(request: Request, db: Session, runtime: Runtime, *, read_only: bool) -> Browser:
    """The browser of a request: its CSRF cookie and, if signed in, its session and user
    (`read_only`: copies outside the session, for pages that only read them)."""
    session_cookie, csrf_cookie = cookie_names(runtime)
    raw_csrf = request.cookies.get(csrf_cookie)
    browser = Browser(
        runtime=runtime,
        session=None,
        user=None,
        csrf_cookie=raw_csrf or csrf.new_cookie_value(),
        new_csrf_cookie=not raw_csrf,
        flash=request.cookies.get(flash_cookie(runtime)) or None,
    )
    raw_session = request.cookies.get(session_cookie)
    if not raw_session or len(raw_session) > 100:
        return browser
    hashes = runtime.keyring.hashes(raw_session)
    found = store.find_read_only(db, hashes) if read_only else store.find(db, hashes)
    if found is None:
        browser.cookies_to_set.append((session_cookie, "", 0))
        return browser
    session, user = found
    t = now()
    settings = runtime.settings
    expired = t >= session.expires_at or t >= session.last_seen_at + settings.session_idle_timeout
    if expired or user.disabled:
        store.remove(db, session.id_hash)
        db.commit()
        browser.cookies_to_set.append((session_cookie, "", 0))
        return browser
    if t - session.last_seen_at >= TOUCH_EVERY:
        store.touch(db, session.id_hash, t)
        db.commit()
        session.last_seen_at = t
    browser.session, browser.user = session, user
    return browser


BrowserDep = Annotated[Browser, Depends(_load)]
# The authorization endpoint and the consent page only read the user and the session: they get
# read-only copies, read on the driver (docs/decisions.md#the-hottest-statements-run-on-the-driver).
ReadOnlyBrowserDep = Annotated[Browser, Depends(_load_read_only)]


def safe_next(value: str | None, default: str = "/account") -> str:
    """Only same-origin paths: never an open redirect (RFC 9700 §4.11)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(c in value for c in "\r\n\t") or any(ord(c) < 0x20 for c in value):
        return default
    return value
