"""Reading a multipart/form-data upload into memory, with limits, and never onto disk.

Starlette's own form parser spools files over 1 MB to a temporary file; this one keeps the one file part in a
bytearray and stops reading as soon as a limit is passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELDS = 16
MAX_FIELD_BYTES = 1024
FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the text fields around the file


class BadRequest(Exception):
    """A request that cannot be served as sent, with the HTTP status to answer (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


async def read_form(content_type: str, body: AsyncIterator[bytes], max_file_bytes: int) -> Form:
    """Parse ``body`` as multipart/form-data: text fields (at most 16, 1 KiB each) and file parts (each at most
    ``max_file_bytes``).  Raises :class:`BadRequest` (413 when over a limit, 400 or 415 when malformed)."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise BadRequest(415, "send the image as multipart/form-data with the field 'file'")
    form = Form()
    part = _Part()
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        nonlocal part
        if len(form.fields) + len(form.files) >= MAX_FIELDS:
            raise BadRequest(400, f"too many form fields (at most {MAX_FIELDS})")
        part = _Part()
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        part.is_file = b"filename" in disposition

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part.data.extend(data[start:end])
        if part.is_file and len(part.data) > max_file_bytes:
            raise BadRequest(413, f"the file is over the limit of {max_file_bytes} bytes")
        if not part.is_file and len(part.data) > MAX_FIELD_BYTES:
            raise BadRequest(400, f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if part.is_file:
            form.files[part.name] = bytes(part.data)
        else:
            form.fields[part.name] = part.data.decode("utf-8", "replace")

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > max_file_bytes + FORM_OVERHEAD:
                raise BadRequest(413, f"the request is over the limit of {max_file_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        raise BadRequest(400, f"malformed multipart body ({err})") from None
    return form
