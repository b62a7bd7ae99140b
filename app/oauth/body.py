"""Reading a JSON request body with bounds (size, depth) into a dict, or an RFC 6749 error."""

from __future__ import annotations

import json

from fastapi import HTTPException, Request

MAX_BODY = 64 * 1024
MAX_DEPTH = 10


class BodyError(HTTPException):
    pass


def _depth(value, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


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
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HTTPException(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    if _depth(data) > MAX_DEPTH:
        raise HTTPException(400, "The request body is nested too deeply.")
    return data
