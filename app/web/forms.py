"""Reading a urlencoded or multipart form once, with bounds, in the event loop; the sync route
then gets the parsed data."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException

MAX_FIELDS = 100
MAX_PART_SIZE = 64 * 1024


async def read_form(request: Request) -> FormData:
    try:
        form = await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_PART_SIZE)
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None
    # No parameter is text with a NUL in it (and PostgreSQL could not store one).
    if any("\x00" in key or (isinstance(value, str) and "\x00" in value) for key, value in form.multi_items()):
        raise HTTPException(status_code=400, detail="The form contains a NUL character.")
    return form


FormDep = Annotated[FormData, Depends(read_form)]
