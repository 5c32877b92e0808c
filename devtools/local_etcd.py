"""The example's etcd: whether one answers, through either API, and one started here if not.

The etcd started is the virtualenv's (devtools/machine.py), on loopback only, with its data
under the run directory: with `--enable-v2` for gogeta's v2 API, without it for v3, as
etcd 3.6 and later run. A taken port is refused naming its holder (devtools/ports.py).
Rule: standard library and devtools only, nothing of gogeta imported.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from devtools.children import spawn, wait_for
from devtools.example_keys import log, v3_call
from devtools.machine import etcd_binary, free_port
from devtools.ports import check_free, http_get


def etcd_answers(host: str, port: int, api: str = "v2") -> bool:
    try:
        if api == "v3":
            v3_call(host, port, "/v3/kv/range", {"key": base64.b64encode(b"\0").decode("ascii")})
            return True
        status, _ = http_get(host, port, "/v2/keys/", {})
        return status == 200
    except (OSError, RuntimeError, ValueError):
        return False


def start_etcd(host: str, port: int, data_dir: Path, run_dir: Path, api: str = "v2") -> Any:
    if host not in ("127.0.0.1", "localhost"):
        raise RuntimeError(
            f"nothing answers at {host}:{port} and it is not a loopback address: start etcd"
            " there, or leave GOGETA_ETCD_ADDRESS unset for a local one"
        )
    fix = f"no etcd {api} API answers there; stop it, or name another etcd with --etcd-address"
    check_free(port, "etcd's", fix)
    client = f"http://127.0.0.1:{port}"
    peer = f"http://127.0.0.1:{free_port()}"
    log(f"no etcd at {client}: starting one (data in {data_dir})")
    proc = spawn(
        [
            etcd_binary(),
            *(["--enable-v2"] if api == "v2" else []),
            "--name=gogeta-example",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=gogeta-example={peer}",
            "--log-level=warn",
        ],
        run_dir / "etcd.log",
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited {proc.returncode}: see {run_dir / 'etcd.log'}")
        return etcd_answers("127.0.0.1", port, api)

    wait_for(up, 30, "etcd to answer")
    return proc
