"""create_app(settings): the FastAPI application, its lifespan, middleware and routers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from app.admin import audit_log, clients, consents, idps, keys, overview, resources, users
from app.admin.pages import Denied, denied_handler
from app.http import errors, health
from app.http.cors import PublicCORSMiddleware
from app.http.documents import PublicDocuments
from app.http.edge import EdgeMiddleware
from app.http.middleware import RequestMiddleware
from app.http.protocol_endpoints import ProtocolEndpoints
from app.infra import logs
from app.infra.paths import TEMPLATES
from app.oauth import resource_scopes
from app.oauth import routes as oauth_routes
from app.runtime import Runtime, build_runtime
from app.security.secrets import DecryptError
from app.services import jobs
from app.services.keys import keyring_mismatch
from app.settings import Settings, SettingsError, load_settings
from app.web import account, authorize, login, mfa, setup_password, upstream


def create_app(settings: Settings, *, run_jobs: bool = True, fetch_transport: httpx.BaseTransport | None = None) -> FastAPI:
    """The app. `fetch_transport` replaces the outbound HTTP transport (tests)."""
    runtime = build_runtime(settings, fetch_transport=fetch_transport)
    runtime.keys.snapshot()  # load and decrypt the keys once, before the first request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(jobs.loop(runtime.jobs())) if run_jobs else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            runtime.engine.dispose()

    app = Ostiary(title="Ostiary", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime

    prefix = settings.issuer_path  # everything lives under the issuer's path, if it has one
    app.include_router(oauth_routes.router, prefix=prefix)
    app.include_router(resource_scopes.router, prefix=prefix)
    # upstream after mfa: /login/otp is a page, /login/{name} an identity provider.
    for pages in (authorize, login, account, mfa, setup_password, upstream):
        app.include_router(pages.router, prefix=prefix)
    for console in (overview, consents, users, clients, resources, idps, keys, audit_log):
        app.include_router(console.router, prefix=prefix)
    app.include_router(health.router, prefix=prefix)
    app.include_router(oauth_routes.well_known_router)
    app.mount(prefix + "/static", StaticFiles(directory=str(TEMPLATES / "static")), name="static")

    app.add_exception_handler(Denied, denied_handler)  # type: ignore[arg-type]  # starlette passes only a Denied here
    error_responses = errors.ErrorResponses(_page_renderer(runtime))
    errors.install(app, error_responses)
    # Outermost first: every response gets a request id, then the edge policy (proxies, Host,
    # TLS, sizes) runs before CORS, the public documents, the protocol endpoints and FastAPI.
    app.front = [
        Middleware(RequestMiddleware, errors=error_responses),
        Middleware(EdgeMiddleware, settings=settings, render_page=_page_renderer(runtime)),
        Middleware(PublicCORSMiddleware, prefix=prefix),
        Middleware(
            PublicDocuments,
            prefix=prefix,
            metadata=(runtime.metadata.fresh_body, runtime.metadata.body),
            jwks=(runtime.keys.fresh_jwks, lambda: runtime.keys.snapshot().jwks_json),
            jwks_max_age=settings.jwks_max_age,
        ),
        Middleware(ProtocolEndpoints, prefix=prefix, handlers=oauth_routes.protocol_handlers(runtime), errors=error_responses),
    ]
    return app


class Ostiary(FastAPI):
    """FastAPI behind Ostiary's own pure-ASGI middleware (`front`), which runs outside FastAPI's
    error, telemetry and body-limit middleware: the public documents and the protocol endpoints
    are answered there without them, and RequestMiddleware answers what escapes everything
    (docs/decisions.md#protocol-endpoints-bypass-the-router)."""

    front: list[Middleware]

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for cls, args, kwargs in reversed(self.front):
            app = cls(app, *args, **kwargs)
        return app


EX_CONFIG = 78


def create_app_from_env() -> FastAPI:
    """The uvicorn factory (`ostiary serve` runs this in every worker). A setting that stops the
    app from starting is one line naming it and exit status 78 (EX_CONFIG), not a traceback:
    `ostiary serve` checks the same before it says "serving", this is for other launchers."""
    try:
        settings = load_settings()
        logs.configure(settings.log_level)
        return create_app(settings)
    except SettingsError as exc:
        problem = f"invalid setting {exc.name}: {exc.message}"
    except DecryptError:
        problem = f"invalid setting OSTIARY_SECRET_KEYS: {keyring_mismatch()}"
    print(f"ostiary: {problem}", file=sys.stderr)
    raise SystemExit(EX_CONFIG)


def _page_renderer(runtime: Runtime) -> errors.PageRenderer:
    template = runtime.templates.get_template("error.html")

    def render(status: int, title: str, message: str) -> bytes:
        return template.render(title=title, message=message, settings=runtime.settings, user=None).encode()

    return render
