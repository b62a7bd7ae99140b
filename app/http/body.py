"""Reading a request body once, with bounds, in the event loop: a urlencoded or multipart form,
or a JSON object. The sync route then gets the parsed data.

The size of every body is capped before it gets here, by app/http/edge.py (OSTIARY_MAX_BODY,
and OSTIARY_MAX_BODY_PROTOCOL on the protocol endpoints): this module bounds only what a size
cap cannot (fields, parts, nesting, characters no database stores).
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import Depends, HTTPException, Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException

MAX_FIELDS = 100
MAX_PART_SIZE = 64 * 1024
MAX_DEPTH = 10
URLENCODED = "application/x-www-form-urlencoded"


async def read_form(request: Request) -> FormData:
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() == URLENCODED:
        fields: list[tuple[str, str | UploadFile]] = list(parse_urlencoded(await request.body()))
        form = FormData(fields)
    else:
        try:
            form = await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_PART_SIZE)
        except MultiPartException as exc:
            raise HTTPException(status_code=400, detail=exc.message) from None
    # No parameter is text with a NUL in it (and PostgreSQL could not store one).
    if any("\x00" in key or (isinstance(value, str) and "\x00" in value) for key, value in form.multi_items()):
        raise HTTPException(status_code=400, detail="The form contains a NUL character.")
    return form


def parse_urlencoded(body: bytes) -> list[tuple[str, str]]:
    """An application/x-www-form-urlencoded body (RFC 6749 Appendix B), as Starlette's streaming
    parser reads it (percent escapes are UTF-8, other bytes Latin-1; empty fields skipped), with
    the same limits and messages, in one pass over a body the edge has already capped."""
    items = []
    for field in body.split(b"&"):
        if not field:
            continue
        name, _, value = field.partition(b"=")
        if len(name) + len(value) > MAX_PART_SIZE:
            raise HTTPException(400, f"Field exceeded maximum size of {MAX_PART_SIZE // 1024}KB.")
        items.append((unquote_plus(name.decode("latin-1")), unquote_plus(value.decode("latin-1"))))
        if len(items) > MAX_FIELDS:
            raise HTTPException(400, f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")
    return items


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
