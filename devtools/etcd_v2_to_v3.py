"""Copy gogeta's directories from etcd's v2 key space into its v3 key space.

    python devtools/etcd_v2_to_v3.py --from http://10.0.0.2:2379 [--to URL] [--dir /domains ...]

etcd 3.x keeps the two key spaces apart: a key written through `/v2/keys` is not seen
through v3. This reads each directory (default `/domains` and `/services`) with one
recursive v2 GET and puts every key under the same path through v3 (on the same etcd unless
`--to` names another). v3 has no directories: an empty one has nothing to copy (and routes
nothing in gogeta either). A key with a TTL (`status/alive`) gets a lease of the seconds it
had left, so it still expires. Keys already in v3 are overwritten; nothing is deleted.
`--dry-run` lists what would be written. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlsplit


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url if "://" in url else "http://" + url)
    port = parts.port or (443 if parts.scheme == "https" else 2379)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname or "127.0.0.1", port, timeout=30)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", port, timeout=30)


def _request(url: str, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
    conn = _connection(url)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
    finally:
        conn.close()
    try:
        return status, json.loads(data) if data else {}
    except ValueError:
        return status, data.decode("utf-8", "replace").strip()


def v2_leaves(url: str, directory: str) -> Iterator[tuple[str, str, int | None]]:
    """(key, value, seconds left or None) of every key under `directory`, through v2."""
    status, answer = _request(url, "GET", "/v2/keys" + quote(directory) + "?recursive=true")
    if status == 404 and isinstance(answer, dict) and answer.get("errorCode") == 100:
        return  # no such directory
    if status != 200 or not isinstance(answer, dict):
        raise RuntimeError(f"v2 read of {directory} at {url} answered {status}: {answer}")
    pending = [answer["node"]]
    while pending:
        node = pending.pop()
        if node.get("dir"):
            pending.extend(reversed(node.get("nodes", [])))
        else:
            ttl = node.get("ttl")
            yield node["key"], node.get("value", ""), int(ttl) if ttl else None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _v3(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = _request(url, "POST", path, json.dumps(body))
    if status != 200 or not isinstance(answer, dict):
        raise RuntimeError(f"v3 {path} at {url} answered {status}: {answer}")
    return answer


def copy(source: str, target: str, directories: Sequence[str], dry_run: bool = False) -> int:
    """Copy the keys; the number of keys copied (or that would be)."""
    count = 0
    leases: dict[int, str] = {}  # one lease per TTL left, shared by the keys that have it
    for directory in directories:
        for key, value, ttl in v2_leaves(source, directory):
            count += 1
            shown = f"{key} = {value!r}" + (f" (TTL {ttl}s)" if ttl else "")
            if dry_run:
                print(f"would put {shown}")
                continue
            put = {"key": _b64(key), "value": _b64(value)}
            if ttl:
                if ttl not in leases:
                    leases[ttl] = str(_v3(target, "/v3/lease/grant", {"TTL": ttl})["ID"])
                put["lease"] = leases[ttl]
            _v3(target, "/v3/kv/put", put)
            print(f"put {shown}")
    return count


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--from", dest="source", required=True, help="etcd serving v2")
    parser.add_argument("--to", dest="target", help="etcd to write through v3 (default: --from)")
    parser.add_argument(
        "--dir",
        dest="dirs",
        action="append",
        help="directory to copy, repeatable (default: /domains and /services)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, write nothing")
    args = parser.parse_args(argv)
    directories = args.dirs or ["/domains", "/services"]
    try:
        count = copy(args.source, args.target or args.source, directories, args.dry_run)
    except (OSError, RuntimeError) as exc:
        print(f"etcd_v2_to_v3: {exc}", file=sys.stderr)
        return 1
    print(f"{count} keys {'to copy' if args.dry_run else 'copied'} from {', '.join(directories)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
