"""Response headers that keep every page (and every API answer) out of other sites' reach.

A Content-Security-Policy with no inline script and no other origin but the map's tile server
(when one is configured), ``frame-ancestors 'none'`` (no page can be framed: no clickjacking),
no MIME sniffing, no referrer to other sites, and pages never cached (they carry names and the CSRF token).
A route may set its own policy first (the API documentation pages do); it is then left alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BASE_POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "media-src": "'self'",
    "manifest-src": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "object-src": "'none'",
}


def tile_origin(tile_url: str | None) -> str | None:
    """The scheme and host of a tile URL template (``https://host/{z}/{x}/{y}.png``), for ``img-src``."""
    if not tile_url:
        return None
    parts = urlsplit(tile_url.replace("{s}", "a"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    host = parts.netloc
    if "{s}" in tile_url:  # Leaflet's subdomains: allow the parent domain's subdomains
        host = "*." + host.split(".", 1)[1] if "." in host else host
    return f"{parts.scheme}://{host}"


def content_security_policy(tile_url: str | None = None, **overrides: str) -> str:
    policy = dict(BASE_POLICY)
    origin = tile_origin(tile_url)
    if origin:
        policy["img-src"] += f" {origin}"
    policy.update(overrides)
    return "; ".join(f"{k} {v}" for k, v in policy.items())


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response that has not set them itself."""

    def __init__(self, app: ASGIApp, tile_url: str | None = None) -> None:
        self.app = app
        self.csp = content_security_policy(tile_url).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                wanted = [
                    (b"content-security-policy", self.csp),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
                ]
                for name, value in wanted:
                    if name not in present:
                        headers.append((name, value))
                content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
                if content_type.startswith(b"text/html") and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
