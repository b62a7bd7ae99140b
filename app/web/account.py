"""/account: the signed-in user's own page."""

from __future__ import annotations

from fastapi import APIRouter

from app.web.browser import BrowserDep

router = APIRouter()


@router.get("/")
def home(browser: BrowserDep):
    return browser.redirect("/account" if browser.signed_in else "/login")


@router.get("/account")
def account(browser: BrowserDep):
    if not browser.signed_in:
        return browser.login_redirect("/account")
    return browser.render("account.html")
