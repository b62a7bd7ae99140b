"""Reading a JSON request body with bounds (size, depth) into a dict, or an RFC 6749 error."""

from __future__ import annotations

import json

from fastapi import HTTPException, Request

MAX_BODY = 64 * 1024
MAX_DEPTH = 10


class BodyError(HTTPException):
    pass


def _problem(value, level: int = 0) -> str | None:
    """Why a parsed JSON value may not be stored, or None: nested too deeply, or a string (key
    or value) that is not storable text (NUL, a lone surrogate escape such as "\\ud800")."""
    if level > MAX_DEPTH:
        return "The request body is nested too deeply."
    if isinstance(value, str):
        if "\x00" in value:
            return "The request body contains a NUL character."
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "The request body contains an invalid Unicode escape."
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        problem = (_problem(key, level + 1) if isinstance(key, str) else None) or _problem(item, level + 1)
        if problem:
            return problem
    return None


async def read_json(request: Request) -> dict:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(400, "The request body must be application/json.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"The request body exceeds {MAX_BODY} bytes.")
    try:
        data = json.loads(body)
    except RecursionError:
        raise HTTPException(400, "The request body is nested too deeply.") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, a number too long to convert
        raise HTTPException(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    problem = _problem(data)
    if problem:
        raise HTTPException(400, problem)
    return data
