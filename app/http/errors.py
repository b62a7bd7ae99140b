"""The error channel of last resort: what an exception that no route turned into a response
becomes. JSON callers get an RFC 6749 §5.2-shaped body, browsers a readable page; never a stack
trace. A database that cannot be reached is a 503 with Retry-After (RFC 9110 §15.6.4)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.infra.db import is_unavailable

log = logging.getLogger("ostiary")

PageRenderer = Callable[[int, str, str], bytes]  # (status, title, message) -> an HTML page


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


class ErrorResponses:
    """The response each exception becomes. FastAPI's exception handlers (`install`) and the
    routes answered before the router (app/http/protocol_endpoints.py) answer alike."""

    def __init__(self, render_page: PageRenderer):
        self.render_page = render_page

    def page(self, status: int, title: str, message: str) -> HTMLResponse:
        return HTMLResponse(self.render_page(status, title, message), status_code=status)

    def error(
        self, request: Request, status: int, error: str, description: str, title: str, headers: dict[str, str] | None = None
    ) -> Response:
        if wants_html(request):
            response: Response = self.page(status, title, description)
            response.headers.update(headers or {})
            return response
        return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=headers)

    async def database_error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, DataError):
            # A value the database cannot store (out of range, bad encoding): the request's fault.
            log.warning("refused a value the database cannot store on %s %s", request.method, request.url.path)
            message = "The request contains a value that cannot be stored."
            return self.error(request, 400, "invalid_request", message, "Bad request", {"Cache-Control": "no-store"})
        if not is_unavailable(exc):
            log.exception("database error on %s %s", request.method, request.url.path)
        else:
            log.warning("database unavailable: %s", exc.__class__.__name__)
        headers = {"Retry-After": "5", "Cache-Control": "no-store"}
        if wants_html(request):
            return self.error(
                request, 503, "temporarily_unavailable", "Please try again in a moment.", "Temporarily unavailable", headers
            )
        return self.error(request, 503, "temporarily_unavailable", "The server is temporarily unavailable.", "", headers)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if wants_html(request):
            title = {404: "Not found", 405: "Method not allowed", 403: "Forbidden"}.get(exc.status_code, "Error")
            return self.page(exc.status_code, title, str(exc.detail))
        return JSONResponse(
            {"error": "invalid_request" if exc.status_code < 500 else "server_error", "error_description": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def validation_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", [])[1:])
        message = f"Invalid parameter {where}: {first.get('msg', 'invalid')}" if where else "Invalid request"
        return self.error(request, 400, "invalid_request", message, "Bad request")

    async def unexpected(self, request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if wants_html(request):
            return self.page(500, "Something went wrong", "The error was logged. Please try again.")
        return JSONResponse({"error": "server_error", "error_description": "An unexpected error occurred."}, status_code=500)

    async def answer(self, request: Request, exc: Exception) -> Response:
        """What `install`'s handlers answer for `exc`, for code that runs outside FastAPI's."""
        if isinstance(exc, SQLAlchemyError):
            return await self.database_error(request, exc)
        if isinstance(exc, StarletteHTTPException):
            return await self.http_error(request, exc)
        return await self.unexpected(request, exc)


def install(app: FastAPI, responses: ErrorResponses) -> None:
    app.add_exception_handler(SQLAlchemyError, responses.database_error)
    app.add_exception_handler(StarletteHTTPException, responses.http_error)
    app.add_exception_handler(RequestValidationError, responses.validation_error)
    app.add_exception_handler(Exception, responses.unexpected)
