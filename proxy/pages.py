"""Status pages: jinja2 templates loaded once at start, rendered per answer.

`templateDir` holds `layout.html` and one body per page (docs/behaviour.md §3.2): the statuses
(`notfound`, `starting`, `passivated`, `stopped`, `error`) and the proxy's own
(`bad_request`, `bad_gateway`, `gateway_timeout`, `internal_error`). An operator replaces any
of them by pointing `-templateDir` at a copy.
"""

from __future__ import annotations

import http
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from errors import ConfigError

PAGES = (
    "notfound",
    "starting",
    "passivated",
    "stopped",
    "error",
    "bad_request",
    "bad_gateway",
    "gateway_timeout",
    "internal_error",
)

# Pages a browser should reload by itself: the application is on its way (docs/behaviour.md §3.2).
REFRESHING = frozenset({"starting", "passivated"})
REFRESH_SECONDS = 5


class TemplateError(ConfigError):
    """A template directory that lacks a page or holds one that does not compile."""


@dataclass(frozen=True, slots=True)
class Page:
    status: str
    headers: list[tuple[str, str]]
    body: bytes


# The answer when even the internal_error template fails to render: plain, but still a page.
_FALLBACK_BODY = (
    b"<!doctype html><title>500 Internal Server Error</title>"
    b"<h1>An error occurred serving your request</h1>\n"
)
FALLBACK_PAGE = Page(
    "500 Internal Server Error",
    [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(_FALLBACK_BODY))),
        ("Cache-Control", "no-store"),
    ],
    _FALLBACK_BODY,
)


class StatusPages:
    def __init__(self, template_dir: Path) -> None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(template_dir)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates: dict[str, jinja2.Template] = {}
        for name in PAGES:
            try:
                self._templates[name] = env.get_template(f"{name}.html")
            except jinja2.TemplateNotFound as exc:
                raise TemplateError(f"{template_dir}: missing template {exc.name}") from exc
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"{exc.filename}:{exc.lineno}: {exc.message}") from exc

    def render(self, name: str, code: int, hostname: str = "", as_json: bool = False) -> Page:
        if as_json:
            return self.render_json(name, code, hostname)
        refresh = REFRESH_SECONDS if name in REFRESHING else 0
        body = self._templates[name].render(
            code=code,
            reason=http.HTTPStatus(code).phrase,
            hostname=hostname,
            refresh=refresh,
        )
        data = body.encode("utf-8")
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ]
        if code == 503:
            headers.append(("Retry-After", str(REFRESH_SECONDS)))
        return Page(f"{code} {http.HTTPStatus(code).phrase}", headers, data)

    @staticmethod
    def render_json(name: str, code: int, hostname: str = "") -> Page:
        """The same answer for API clients: a small JSON object instead of a page."""
        reason = http.HTTPStatus(code).phrase
        document: dict[str, object] = {"status": name, "code": code, "message": reason}
        if hostname:
            document["host"] = hostname
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        if code == 503:
            document["retry_after"] = REFRESH_SECONDS
            headers.append(("Retry-After", str(REFRESH_SECONDS)))
        data = json.dumps(document).encode("utf-8")
        headers.insert(1, ("Content-Length", str(len(data))))
        return Page(f"{code} {reason}", headers, data)


def wants_json(environ: dict[str, Any]) -> bool:
    """An API client: an XHR, or an Accept header that does not ask for HTML."""
    if environ.get("HTTP_X_REQUESTED_WITH", "").lower() == "xmlhttprequest":
        return True
    accept = environ.get("HTTP_ACCEPT")
    return accept is not None and "text/html" not in accept.lower()
