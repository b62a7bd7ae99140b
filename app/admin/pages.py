"""What every console page shares: the admin gate, CSRF, confirmation steps and pagination.

Only admins get in: anonymous browsers are sent to sign in, signed-in users who are not admins
get 403, and when admin MFA is required an admin without TOTP is sent to enrol first. Changes
are POST only, with a CSRF token; destructive ones ask for confirmation first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from app.web.browser import Browser, BrowserDep

PER_PAGE = 50
EXPIRED_FORM = "This form has expired. Go back, reload the page and try again."


class Denied(Exception):
    """Stop a console request with this response (sign-in redirect, 403, 400 ...)."""

    def __init__(self, response: Response):
        self.response = response


async def denied_handler(request: Request, exc: Denied) -> Response:
    return exc.response


def _here(request: Request, browser: Browser) -> str:
    """Where to come back to after signing in: this page for a GET, the overview otherwise."""
    if request.method != "GET":
        return "/admin"
    path = request.url.path.removeprefix(browser.runtime.settings.issuer_path) or "/admin"
    return path + ("?" + request.url.query if request.url.query else "")


def _admin(request: Request, browser: BrowserDep) -> Browser:
    if not browser.signed_in:
        raise Denied(browser.login_redirect(_here(request, browser)))
    assert browser.user is not None and browser.session is not None  # signed in
    if not browser.user.is_admin:
        raise Denied(
            browser.render("error.html", 403, title="Forbidden", message="Only administrators can use the admin console.")
        )
    if browser.runtime.settings.admin_mfa_required:
        here = quote(_here(request, browser), safe="")
        if not browser.user.mfa_enabled:
            # OSTIARY_ADMIN_MFA=required: enrol TOTP before the console.
            raise Denied(browser.redirect("/account/mfa?next=" + here))
        if "otp" not in (browser.session.amr or []):
            # ... and this browser must have signed in with it (not only a password from before).
            raise Denied(browser.redirect("/login?prompt=login&next=" + here))
    return browser


AdminDep = Annotated[Browser, Depends(_admin)]


def require_csrf(browser: Browser, form: FormData) -> None:
    if not browser.csrf_ok(form):
        raise Denied(browser.render("error.html", 400, title="Form expired", message=EXPIRED_FORM))


def confirmed(form: FormData) -> bool:
    return form.get("confirm") == "yes"


def confirm(
    browser: Browser,
    *,
    title: str,
    message: str,
    action: str,
    fields: dict[str, str],
    button: str = "Confirm",
    back: str = "/admin",
    status: int = 200,
    error: str | None = None,
    option: tuple[str, str] | None = None,
) -> Response:
    """The confirmation step of a destructive action: the same POST again with confirm=yes.
    `option` is an extra checkbox (name, label), e.g. "rotate anyway"."""
    return browser.render(
        "admin/confirm.html",
        status,
        section=action.split("/")[2] if action.count("/") >= 2 else "overview",
        title=title,
        message=message,
        action=action,
        fields=fields,
        button=button,
        back=back,
        error=error,
        option=option,
    )


def not_found(browser: Browser, what: str) -> Response:
    return browser.render("error.html", 404, title="Not found", message=f"No such {what}.")


def done_notice(value: str, *known: str) -> str:
    """The `done` query parameter a page shows as a notice after a redirect: a count or a known
    word only, never arbitrary text from a link."""
    return value if (value.isdigit() and len(value) <= 6) or value in known else ""


def page_number(value: str | None) -> int:
    try:
        return max(1, min(int(value or 1), 100_000))
    except ValueError:
        return 1


@dataclass
class Pager:
    page: int
    total: int
    params: dict[str, str] = field(default_factory=dict)
    per_page: int = PER_PAGE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    def url(self, page: int) -> str:
        return "?" + urlencode({**{k: v for k, v in self.params.items() if v}, "page": page})

    @property
    def prev_url(self) -> str | None:
        return self.url(self.page - 1) if self.page > 1 else None

    @property
    def next_url(self) -> str | None:
        return self.url(self.page + 1) if self.page < self.pages else None
