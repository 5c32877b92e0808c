"""`/__static__/{file}`: the status pages' assets, from `templateDir/__static__/` only.

A file is served when its real path (symlinks resolved) lies inside the static folder and
is a regular file; `..`, encoded dots, absolute paths and symlinks that lead out are all
"not found" (docs/behaviour.md §2.3).
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from pathlib import Path

PREFIX = "/__static__/"
BLOCK = 64 * 1024


class StaticFiles:
    def __init__(self, template_dir: Path) -> None:
        self.root = os.path.realpath(template_dir / "__static__")

    def find(self, path_info: str) -> str | None:
        """The real path of the asset named by a decoded request path, or None."""
        relative = path_info[len(PREFIX) :]
        if not relative or "\x00" in relative or relative.startswith("/"):
            return None
        parts = relative.split("/")
        if any(p in ("", ".", "..") for p in parts):
            return None
        candidate = os.path.realpath(os.path.join(self.root, *parts))
        if not candidate.startswith(self.root + os.sep) or not os.path.isfile(candidate):
            return None
        return candidate

    @staticmethod
    def headers_of(path: str) -> list[tuple[str, str]]:
        content_type, _ = mimetypes.guess_type(path)
        if content_type is None:
            content_type = "application/octet-stream"
        elif content_type.startswith("text/") or content_type.endswith(("javascript", "svg+xml")):
            content_type += "; charset=utf-8"
        return [
            ("Content-Type", content_type),
            ("Content-Length", str(os.path.getsize(path))),
            ("Cache-Control", "public, max-age=3600"),
            ("X-Content-Type-Options", "nosniff"),
        ]

    @staticmethod
    def blocks_of(path: str) -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                yield block
