"""create_app(settings): the FastAPI application, its lifespan, middleware and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.http import cors
from app.http.edge import EdgeMiddleware
from app.http.middleware import RequestMiddleware
from app.infra import logs
from app.infra.db import is_unavailable, make_engine, make_sessionmaker
from app.infra.paths import TEMPLATES
from app.runtime import Runtime
from app.security.secrets import Keyring
from app.services import jobs, keys
from app.services.keys import KeyCache
from app.settings import Settings, load_settings
from app.web.browser import make_templates

log = logging.getLogger("ostiary")


def build_runtime(settings: Settings) -> Runtime:
    engine = make_engine(settings.database_url.get_secret_value())
    factory = make_sessionmaker(engine)
    keyring = Keyring(settings.keyring())
    keys.ensure_keys(factory, settings, keyring)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=factory,
        keyring=keyring,
        keys=KeyCache(factory, settings, keyring),
        templates=make_templates(),
    )


def create_app(settings: Settings, *, run_jobs: bool = True, fetch_transport=None) -> FastAPI:
    """The app. `fetch_transport` replaces the outbound HTTP transport (tests)."""
    runtime = build_runtime(settings)
    runtime.keys.snapshot()  # load and decrypt the keys once, before the first request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(jobs.loop(runtime)) if run_jobs else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            runtime.engine.dispose()

    app = FastAPI(
        title="Ostiary",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime

    from app import admin
    from app.http import health
    from app.oauth import routes as oauth_routes
    from app.oauth.setup import build_server
    from app.web import account, authorize, login, mfa, setup_password

    build_server(runtime, fetch_transport)

    prefix = settings.issuer_path  # everything lives under the issuer's path, if it has one
    app.include_router(oauth_routes.router, prefix=prefix)
    if settings.registration != "closed":  # a closed registration endpoint is not served at all
        app.include_router(oauth_routes.registration_router, prefix=prefix)
    app.include_router(authorize.router, prefix=prefix)
    app.include_router(login.router, prefix=prefix)
    app.include_router(account.router, prefix=prefix)
    app.include_router(mfa.router, prefix=prefix)
    app.include_router(setup_password.router, prefix=prefix)
    admin.install(app, prefix)
    app.include_router(health.router, prefix=prefix)
    app.include_router(oauth_routes.well_known_router)
    app.mount(prefix + "/static", StaticFiles(directory=str(TEMPLATES / "static")), name="static")

    _install_error_handlers(app)
    # Outermost last: every response gets a request id, then the edge policy (proxies, Host,
    # TLS, sizes) runs before CORS and any route.
    app.add_middleware(cors.PublicCORSMiddleware, is_public=oauth_routes.is_public_path(prefix))
    app.add_middleware(EdgeMiddleware, settings=settings, render_page=_page_renderer(runtime))
    app.add_middleware(RequestMiddleware)
    runtime.extras["metadata"] = oauth_routes.MetadataCache(app, runtime)
    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory (`ostiary serve` runs this in every worker)."""
    settings = load_settings()
    logs.configure(settings.log_level)
    return create_app(settings)


def _page_renderer(runtime: Runtime):
    template = runtime.templates.get_template("error.html")

    def render(status: int, title: str, message: str) -> bytes:
        return template.render(title=title, message=message, settings=runtime.settings, user=None).encode()

    return render


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _install_error_handlers(app: FastAPI) -> None:
    def render_error(request: Request, status: int, title: str, message: str):
        runtime: Runtime = request.app.state.runtime
        html = runtime.templates.get_template("error.html").render(
            title=title, message=message, settings=runtime.settings, user=None
        )
        return HTMLResponse(html, status_code=status)

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError):
        if isinstance(exc, DataError):
            # A value the database cannot store (out of range, bad encoding): the request's fault.
            log.warning("refused a value the database cannot store on %s %s", request.method, request.url.path)
            if wants_html(request):
                return render_error(request, 400, "Bad request", "The request contains a value that cannot be stored.")
            return JSONResponse(
                {"error": "invalid_request", "error_description": "The request contains a value that cannot be stored."},
                status_code=400,
                headers={"Cache-Control": "no-store"},
            )
        if not is_unavailable(exc):
            log.exception("database error on %s %s", request.method, request.url.path)
        else:
            log.warning("database unavailable: %s", exc.__class__.__name__)
        headers = {"Retry-After": "5", "Cache-Control": "no-store"}
        if wants_html(request):
            response = render_error(request, 503, "Temporarily unavailable", "Please try again in a moment.")
            response.headers.update(headers)
            return response
        return JSONResponse(
            {"error": "temporarily_unavailable", "error_description": "The server is temporarily unavailable."},
            status_code=503,
            headers=headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if wants_html(request):
            title = {404: "Not found", 405: "Method not allowed", 403: "Forbidden"}.get(exc.status_code, "Error")
            return render_error(request, exc.status_code, title, str(exc.detail))
        return JSONResponse(
            {"error": "invalid_request" if exc.status_code < 500 else "server_error", "error_description": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", [])[1:])
        message = f"Invalid parameter {where}: {first.get('msg', 'invalid')}" if where else "Invalid request"
        if wants_html(request):
            return render_error(request, 400, "Bad request", message)
        return JSONResponse({"error": "invalid_request", "error_description": message}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if wants_html(request):
            return render_error(request, 500, "Something went wrong", "The error was logged. Please try again.")
        return JSONResponse({"error": "server_error", "error_description": "An unexpected error occurred."}, status_code=500)
