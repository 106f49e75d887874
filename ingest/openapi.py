"""The OpenAPI document at ``/openapi.json`` says what the service answers (tests/test_openapi_conformance.py).

Routes declare their own refusals (``responses=error_responses(...)``, ``storage.api_schema``). What
follows from a route's shape is added here, in one place, to every operation it applies to:

- an operation behind a bearer token may answer 401 (no valid token) and 403 (role or access);
- an operation with a path parameter may answer 404 (no such thing, or not one the caller may see);
- an operation that takes a body may answer 400 (a rule the schema cannot say: an unknown staff
  number, a window that ends before it starts, a duplicate id);
- a 422 is the one error envelope with the validation errors in ``detail`` (``ingest.errors``), not
  FastAPI's own ``HTTPValidationError``, which the service never sends.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from storage.api_schema import MEANINGS, ErrorEnvelope

ENVELOPE_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _refusal(code: int) -> dict[str, Any]:
    return {
        "description": MEANINGS.get(code, "Refused"),
        "content": {"application/json": {"schema": ENVELOPE_REF}},
    }


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Add to FastAPI's document the answers that follow from each operation's shape (see above)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorEnvelope"] = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                responses.setdefault("401", _refusal(401))
                responses.setdefault("403", _refusal(403))
            if "{" in path:
                responses.setdefault("404", _refusal(404))
            if "requestBody" in operation:  # a body may break a rule the schema cannot say
                responses.setdefault("400", _refusal(400))
            if "422" in responses:
                responses["422"] = _refusal(422)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc


class DocumentedAPI(FastAPI):
    """The application, whose ``/openapi.json`` is FastAPI's document :func:`complete`-d."""

    _documented: tuple[dict[str, Any], dict[str, Any]] | None = None

    def openapi(self) -> dict[str, Any]:
        raw = super().openapi()  # FastAPI caches it until the routes change
        if self._documented is None or self._documented[0] is not raw:
            self._documented = (raw, complete(copy.deepcopy(raw)))
        return self._documented[1]
