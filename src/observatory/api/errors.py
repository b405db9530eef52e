"""The error responses every API route can give, for the OpenAPI document."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}


def _error(description: str) -> dict[str, Any]:
    # A literal schema rather than a model: routes get these after they are built.
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The request body is not valid JSON"),
    401: _error("Missing, unknown, revoked or expired API key"),
    403: _error("The key's role does not allow this"),
    404: _error("No such object in the key's project"),
    409: _error("The object already exists"),
    429: _error("Rate limit exceeded; retry after Retry-After seconds"),
    503: _error("The database is unavailable; retry after Retry-After seconds"),
}
