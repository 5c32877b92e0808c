"""Settings on the real command line (docs/behaviour.md §6): `gogeta.py` run as a user runs it.

`-h` and `-version`, exit code 2 with one line naming a bad flag or variable, an unknown
`GOGETA_*` variable named with the closest known one, and the etcd password never shown.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

import settings
from tests.support import ROOT, EtcdServer, Start, wait_until


def run_gogeta(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GOGETA_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "gogeta.py"), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**clean, **env},
    )


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help_lists_every_flag_and_exits_0(flag: str) -> None:
    result = run_gogeta(flag)
    assert result.returncode == 0, result.stderr
    for s in settings.SETTINGS:
        assert f"-{s.name}" in result.stdout
        assert s.env_name in result.stdout


def test_bad_value_exits_2_with_one_line_naming_the_flag() -> None:
    result = run_gogeta("-port", "eighty")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "-port" in result.stderr
    assert "'eighty'" in result.stderr
    assert result.stdout == ""


def test_unknown_flag_exits_2() -> None:
    result = run_gogeta("-frobnicate", "yes")
    assert result.returncode == 2
    assert result.stderr.strip() == "gogeta: flag provided but not defined: -frobnicate"


def test_bad_environment_variable_exits_2_naming_it() -> None:
    result = run_gogeta(GOGETA_PORT="eighty")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "GOGETA_PORT" in result.stderr


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@pytest.mark.parametrize("flag", ["-version", "--version"])
def test_version_prints_the_project_version_and_exits_0(flag: str) -> None:
    result = run_gogeta(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"gogeta {project_version()}\n"
    assert result.stderr == ""


def test_help_lists_version() -> None:
    assert "-version" in run_gogeta("-h").stdout


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("GOGETA_PROT", "GOGETA_PORT"),
        ("GOGETA_ETCD_ADRESS", "GOGETA_ETCD_ADDRESS"),
        ("GOGETA_WORKER", "GOGETA_WORKERS"),
        ("GOGETA_FROBNICATE", None),
    ],
)
def test_unknown_variable_is_named_with_the_closest_known_one(
    variable: str, suggestion: str | None
) -> None:
    (warning,) = settings.unknown_variable_warnings({variable: "1", "GOGETA_PORT": "1"})
    assert variable in warning
    if suggestion is None:
        assert "did you mean" not in warning
    else:
        assert f"did you mean {suggestion}?" in warning


def test_known_and_image_variables_are_not_warned_about() -> None:
    env = {s.env_name: s.default for s in settings.SETTINGS}
    env.update(GOGETA_WORKERS="2", PATH="/bin", GOGETAWAY="1")
    assert settings.unknown_variable_warnings(env) == []


def test_gogeta_warns_once_at_start_about_an_unknown_variable(gogeta: Any) -> None:
    proc = gogeta("-resolverType", "Dummy", env={"GOGETA_PROT": "8000", "GOGETA_WORKERS": "2"})
    lines = wait_until(
        lambda: [line for line in proc.log().splitlines() if "GOGETA_" in line],
        what="the warning",
    )
    assert proc.get("/__gogeta/health").status == 200
    (line,) = [line for line in proc.log().splitlines() if "GOGETA_" in line]
    assert lines == [line]
    assert " WARNING " in line and "GOGETA_PROT" in line and "GOGETA_PORT" in line


def test_the_etcd_password_is_never_shown(gogeta: Start, etcd: EtcdServer) -> None:
    from resolvers.source import EtcdAccess

    assert "hunter2" not in repr(EtcdAccess(("http://e:2379",), username="u", password="hunter2"))
    env = {"GOGETA_ETCD_USERNAME": "gogeta", "GOGETA_ETCD_PASSWORD": "hunter2"}
    proxy = gogeta("-etcdAddress", etcd.url, "-logLevel", "DEBUG", env=env)
    routes = proxy.get("/__gogeta/routes")
    assert routes.status == 200
    assert "hunter2" not in routes.text
    assert "hunter2" not in proxy.log()
