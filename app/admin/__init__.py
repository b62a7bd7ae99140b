"""The admin console (/admin/...): server-rendered pages for admins only.

Pages: overview, consents, users, clients, MCP servers (resources), signing keys, audit log.
Routes are thin; the work is in app/consents.py, app/mfa.py, app/admin/actions.py,
app/admin/resource_form.py, app/admin/stats.py and the stores.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.admin.pages import Denied, denied_handler


def install(app: FastAPI, prefix: str) -> None:
    from app.admin import audit_log, clients, consents, keys, overview, resources, users

    for module in (overview, consents, users, clients, resources, keys, audit_log):
        app.include_router(module.router, prefix=prefix)
    app.add_exception_handler(Denied, denied_handler)
