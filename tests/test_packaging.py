"""`pip install .` gives a working `gogeta` command that serves its own pages.

The project (its git-tracked files, as they are in the working tree) is copied to a temporary
directory, so no build files land in the tree, and installed from there into a fresh
virtualenv with `pip install --no-deps`: pip builds it as for a user, fetching setuptools
from the configured index. The fresh virtualenv reaches this one's site-packages through a
`.pth` file for pip and for gogeta's dependencies, which are not downloaded again; gogeta
itself is only what the wheel installed, and the source copy is deleted before it runs. The
dependencies pip would install are checked against requirements.txt instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support import (
    ROOT,
    LoggedProcess,
    free_port,
    port_open,
    refused_port,
    request,
    wait_until,
)


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin` directory of a fresh virtualenv where the project was pip-installed."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=base,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.rmtree(source)
    return venv / "bin"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOGETA_", "PYTHON"))}
    return {**env, "PYTHONUNBUFFERED": "1"}


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=cwd, env=clean_env()
    )


def test_the_installed_command_prints_its_version_and_help(installed: Path) -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run([str(installed / "gogeta"), "-version"], installed)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"gogeta {version}\n", "")
    result = run([str(installed / "gogeta"), "-h"], installed)
    assert result.returncode == 0, result.stderr
    assert "-etcdAddress" in result.stdout
    # Its default templates are the installed ones, not a checkout's.
    assert str(installed.parent) in result.stdout, result.stdout


def test_the_installed_distribution_declares_requirements_txt(installed: Path) -> None:
    script = (
        "import importlib.metadata, json; print(json.dumps(importlib.metadata.requires('gogeta')))"
    )
    declared = json.loads(run([str(installed / "python"), "-c", script], installed).stdout)
    wanted = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert sorted(str(Requirement(r)) for r in declared) == sorted(
        str(Requirement(r)) for r in wanted
    )


def test_the_installed_command_serves_its_pages(installed: Path) -> None:
    port = free_port()
    proc = LoggedProcess()
    proc.spawn(
        [str(installed / "gogeta"), "-listenAddress", "127.0.0.1", "-port", str(port)]
        + ["-resolverType", "Dummy", "-dummyTarget", f"http://127.0.0.1:{refused_port()}/"],
        clean_env(),
        "installed-gogeta-",
    )
    assert proc.proc is not None
    try:
        wait_until(
            lambda: proc.proc is not None and (proc.proc.poll() is not None or port_open(port)),
            timeout=30,
            what="the installed gogeta to listen",
        )
        assert proc.proc.poll() is None, proc.log()
        page = request(port, "/", headers={"Accept": "text/html"})
        assert page.status == 502, page.text
        assert '<link rel="stylesheet" href="/__static__/gogeta.css">' in page.text
        css = request(port, "/__static__/gogeta.css")
        assert css.status == 200 and "text/css" in (css.header("Content-Type") or "")
    finally:
        assert proc.stop() == 0, proc.log()
