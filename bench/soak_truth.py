"""What gogeta's table should be, computed from etcd alone, and where gogeta's differs.

Rule: written again from docs/behaviour.md §3.1, independent of gogeta's code, so that a
bug there is not copied here; it reads etcd and gogeta's `/__gogeta/routes`, and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import etcd

from bench.soak_churn import EtcdV2

Truth = tuple[dict[str, Any], dict[str, Any]]  # (domains, services) as gogeta should see them


def computed_status(status: dict[str, str] | None) -> str:
    """docs/behaviour.md §3.1, written again here from the table, independent of gogeta's code."""
    if status is None:
        return "started"
    current, expected, alive = (status.get(k) for k in ("current", "expected", "alive"))
    if current == "stopped":
        return {"passivated": "passivated", "stopped": "stopped"}.get(expected or "", "error")
    if current == "starting":
        return "starting" if expected == "started" else "error"
    if current == "started":
        return "started" if expected == "started" and alive else "error"
    if current == "stopping":
        return "stopped" if expected == "stopped" else "error"
    return "error"


def etcd_truth(client: EtcdV2) -> Truth:
    """(domains, services) as gogeta should see them, read from etcd now."""
    domains: dict[str, Any] = {}
    services: dict[str, Any] = {}
    with contextlib.suppress(etcd.EtcdKeyNotFound):
        for node in client.read("/domains", recursive=True).leaves:
            parts = node.key.split("/")[2:]
            if len(parts) == 2 and not node.dir:
                domains.setdefault(parts[0], {})[parts[1]] = node.value
    raw: dict[str, dict[str, dict[str, Any]]] = {}
    with contextlib.suppress(etcd.EtcdKeyNotFound):
        for node in client.read("/services", recursive=True).get_subtree(leaves_only=False):
            parts = node.key.split("/")[2:]
            if len(parts) < 2:
                if len(parts) == 1 and parts[0]:
                    raw.setdefault(parts[0], {})
                continue
            inst = raw.setdefault(parts[0], {}).setdefault(parts[1], {})
            if len(parts) == 3 and parts[2] == "location" and not node.dir:
                inst["location"] = json.loads(node.value)
            elif len(parts) >= 3 and parts[2] == "status":
                status = inst.setdefault("status", {})
                if len(parts) == 4 and not node.dir:
                    status[parts[3]] = node.value
            elif len(parts) == 3:
                inst.setdefault("other", []).append(parts[2])
    for name, instances in raw.items():
        services[name] = {
            index: {
                "status": computed_status(inst.get("status")),
                "location": inst.get("location"),
                "keys": sorted(inst.get("other", [])),
            }
            for index, inst in instances.items()
        }
    return {h: (d.get("type"), d.get("value")) for h, d in domains.items()}, services


def table_differences(truth: Truth, routes: Any) -> list[str]:
    """Where gogeta's `/__gogeta/routes` differs from etcd."""
    domains, services = truth
    diffs = []
    seen_domains = {
        h: (d["type"], d["value"]) for h, d in routes["domains"].items() if d["type"] and d["value"]
    }
    routable_domains = {h: d for h, d in domains.items() if d[0] and d[1]}
    if seen_domains != routable_domains:
        diffs.append(f"domains: gogeta {seen_domains} etcd {routable_domains}")
    seen = {
        name: {i["index"]: (i["status"], i["location"]) for i in instances}
        for name, instances in routes["services"].items()
    }
    want = {
        name: {index: (i["status"], i["location"]) for index, i in instances.items()}
        for name, instances in services.items()
    }
    for name in sorted(set(seen) | set(want)):
        if seen.get(name) != want.get(name):
            diffs.append(f"service {name}: gogeta {seen.get(name)} etcd {want.get(name)}")
    return diffs
