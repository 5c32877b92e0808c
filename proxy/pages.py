"""Status pages: jinja2 templates loaded once at start, rendered per answer.

`templateDir` holds `layout.html` plus one body per page (SPEC §3): the routing statuses
(`notfound`, `starting`, `passivated`, `stopped`, `error`) and the proxy's own
(`bad_request`, `bad_gateway`, `gateway_timeout`, `internal_error`). An operator replaces any
of them by pointing `-templateDir` at a copy.
"""

from __future__ import annotations

import http
from dataclasses import dataclass
from pathlib import Path

import jinja2

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

# Pages a browser should reload by itself: the application is on its way (SPEC §3).
REFRESHING = frozenset({"starting", "passivated"})
REFRESH_SECONDS = 5


class TemplateError(Exception):
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

    def render(self, name: str, code: int, hostname: str = "") -> Page:
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
