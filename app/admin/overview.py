"""/admin: the overview."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.admin import stats
from app.admin.pages import AdminDep
from app.http.deps import DbDep

router = APIRouter()


@router.get("/admin")
def overview(browser: AdminDep, db: DbDep) -> Response:
    return browser.render("admin/overview.html", section="overview", **stats.overview(db))
