"""Reading a request body once, with bounds, in the event loop: a urlencoded or multipart form,
or a JSON object. The sync route then gets the parsed data.

The size of every body is capped before it gets here, by app/http/edge.py (OSTIARY_MAX_BODY,
and OSTIARY_MAX_BODY_PROTOCOL on the protocol endpoints): this module bounds only what a size
cap cannot (fields, parts, nesting, characters no database stores).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException

MAX_FIELDS = 100
MAX_PART_SIZE = 64 * 1024
MAX_DEPTH = 10


async def read_form(request: Request) -> FormData:
    try:
        form = await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_PART_SIZE)
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None
    # No parameter is text with a NUL in it (and PostgreSQL could not store one).
    if any("\x00" in key or (isinstance(value, str) and "\x00" in value) for key, value in form.multi_items()):
        raise HTTPException(status_code=400, detail="The form contains a NUL character.")
    return form


def form_params(form: FormData) -> list[tuple[str, str]]:
    """The form's text fields in order, repeated ones included (RFC 6749 §3.1 refuses those)."""
    return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]


def _problem(value: object, level: int = 0) -> str | None:
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
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        problem = (_problem(key, level + 1) if isinstance(key, str) else None) or _problem(item, level + 1)
        if problem:
            return problem
    return None


async def read_json(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(400, "The request body must be application/json.")
    body = await request.body()
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


FormDep = Annotated[FormData, Depends(read_form)]
JsonDep = Annotated[dict[str, Any], Depends(read_json)]
