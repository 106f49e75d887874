"""The console's files: our own (``console/static``) and third-party ones from installed packages.

Nothing is fetched from the internet and no third-party file is copied into this repository:
Leaflet comes from the ``django-js-lib-leaflet`` wheel (Leaflet's release files and nothing else;
the package is never imported), Swagger UI and ReDoc from the ``fastapi-offline`` wheel. Each
prefix maps to one directory and only files inside it, with known extensions, are served.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

OWN = Path(__file__).resolve().parent / "static"
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".map": "application/json",
}


def _package_dir(package: str, *inside: str) -> Path | None:
    """A directory inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*inside)
    return path if path.is_dir() else None


@cache
def roots() -> dict[str, Path]:
    found = {"console": OWN}
    leaflet = _package_dir("js_lib_leaflet", "static", "js_lib_leaflet")
    if leaflet is not None:
        found["leaflet"] = leaflet
    docs = _package_dir("fastapi_offline", "static")
    if docs is not None:
        found["apidocs"] = docs
    return found


def resolve(prefix: str, name: str) -> Path | None:
    """The file ``name`` under the prefix's directory, or None (unknown prefix, type or path trick)."""
    root = roots().get(prefix)
    if root is None or not name or "\\" in name or "\x00" in name:
        return None
    candidate = (root / name).resolve()
    if (
        candidate.suffix not in TYPES
        or not candidate.is_file()
        or not candidate.is_relative_to(root.resolve())
    ):
        return None
    return candidate


@cache
def version(prefix: str, name: str) -> str:
    """A short digest of a file, put in its URL so that a new release is never served from cache."""
    path = resolve(prefix, name)
    if path is None:
        return "0"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def url(prefix: str, name: str) -> str:
    return f"/static/{prefix}/{name}?v={version(prefix, name)}"
