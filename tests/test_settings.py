"""Settings (docs/behaviour.md §6): the original's flags in Go syntax, `GOGETA_*`, defaults.

`settings.parse` is pure, so this file calls it directly with an explicit environment:
every default, the flag syntax, the variables, which wins, and the bad values each named.
The real command line is tests/test_settings_cli.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest

import settings
from tests.support import ROOT

NO_ENV: dict[str, str] = {}


def parse(*argv: str, **env: str) -> settings.Config:
    return settings.parse(list(argv), env)


# Every flag with its default: the original's, plus the ones this implementation adds.
DEFAULTS: list[tuple[str, Any]] = [
    ("port", 7777),
    ("tlsPort", 0),
    ("certDir", "/certs"),
    ("tlsCertFile", ""),
    ("tlsKeyFile", ""),
    ("acmeDirectory", ""),
    ("acmeEmail", ""),
    ("acmeCaFile", ""),
    ("acmeHoldSeconds", 10.0),
    ("hstsMaxAge", 0),
    ("domainDir", "/domains"),
    ("serviceDir", "/services"),
    ("etcdAddress", ("http://127.0.0.1:4001/",)),
    ("etcdApi", "v2"),
    ("etcdCaFile", ""),
    ("etcdCertFile", ""),
    ("etcdKeyFile", ""),
    ("etcdUsername", ""),
    ("etcdPassword", ""),
    ("resolverType", "IoEtcd"),
    ("templateDir", (ROOT / "templates").resolve()),
    ("lastAccessInterval", 10),
    ("forceFwSsl", False),
    ("UrlHeaderParam", ""),
    ("cpuProfile", "/tmp/gogeta.prof"),
    ("listenAddress", "0.0.0.0"),
    ("dummyTarget", "http://localhost:8080/"),
    ("connectTimeout", 5.0),
    ("readTimeout", 60.0),
    ("ejectSeconds", 5.0),
    ("maxBodySize", 0),
    ("wakeHoldSeconds", 0.0),
    ("clientTimeout", 60.0),
    ("logLevel", "INFO"),
    ("drainTimeout", 10.0),
    ("accessLog", "combined"),
    ("accessLogHealth", True),
    ("healthGraceSeconds", 30.0),
    ("trustedNetworks", (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))),
    ("noWakeUserAgents", re.compile(settings.NO_WAKE_USER_AGENTS, re.IGNORECASE)),
    (
        "trustedProxies",
        tuple(
            ipaddress.ip_network(n)
            for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12")
            + ("192.168.0.0/16", "fc00::/7")
        ),
    ),
]


def test_every_setting_has_a_tested_default() -> None:
    assert sorted(name for name, _ in DEFAULTS) == sorted(s.name for s in settings.SETTINGS)


@pytest.mark.parametrize(("name", "default"), DEFAULTS)
def test_default(name: str, default: Any) -> None:
    assert getattr(parse(), name) == default


def test_templatedir_default_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse().templateDir == (ROOT / "templates").resolve()


@pytest.mark.parametrize(
    "argv",
    [
        ["-port", "8080"],
        ["-port=8080"],
        ["--port", "8080"],
        ["--port=8080"],
    ],
)
def test_go_flag_syntax(argv: list[str]) -> None:
    assert parse(*argv).port == 8080


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),
        (["-forceFwSsl"], True),
        (["--forceFwSsl"], True),
        (["-forceFwSsl=true"], True),
        (["-forceFwSsl=1"], True),
        (["-forceFwSsl=false"], False),
        (["-forceFwSsl=0"], False),
        (["-forceFwSsl=F"], False),
    ],
)
def test_boolean_flag(argv: list[str], expected: bool) -> None:
    assert parse(*argv).forceFwSsl is expected


def test_boolean_flag_does_not_swallow_the_next_flag() -> None:
    config = parse("-forceFwSsl", "-port", "9000")
    assert config.forceFwSsl is True
    assert config.port == 9000


def test_every_flag_on_the_command_line(tmp_path: Path) -> None:
    config = parse(
        "-port=8081",
        "-listenAddress",
        "127.0.0.1",
        "-domainDir",
        "/my/domains/",
        "-serviceDir=srv",
        "-etcdAddress",
        "http://10.0.0.1:2379",
        "-resolverType",
        "dummy",
        "-templateDir",
        str(tmp_path),
        "-lastAccessInterval",
        "0",
        "-forceFwSsl",
        "-UrlHeaderParam",
        "X-Public-Url",
        "-cpuProfile",
        "/var/tmp/p.prof",
        "-dummyTarget",
        "http://127.0.0.1:9/base",
        "-connectTimeout",
        "0.5",
        "-readTimeout=2",
        "-logLevel",
        "debug",
    )
    assert config.port == 8081
    assert config.listenAddress == "127.0.0.1"
    assert config.domainDir == "/my/domains"  # one leading slash, no trailing one
    assert config.serviceDir == "/srv"
    assert config.etcdAddress == ("http://10.0.0.1:2379",)
    assert config.resolverType == "Dummy"  # choices are matched case-insensitively
    assert config.templateDir == tmp_path.resolve()
    assert config.lastAccessInterval == 0
    assert config.forceFwSsl is True
    assert config.UrlHeaderParam == "X-Public-Url"
    assert config.cpuProfile == "/var/tmp/p.prof"
    assert config.dummyTarget == "http://127.0.0.1:9/base"
    assert config.connectTimeout == 0.5
    assert config.readTimeout == 2.0
    assert config.logLevel == "DEBUG"


def test_relative_template_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pages").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse("-templateDir", "pages").templateDir == (tmp_path / "pages").resolve()


def test_comma_separated_etcd_addresses() -> None:
    config = parse("-etcdAddress", "http://10.0.0.1:2379, 10.0.0.2:2379,,https://etcd:4001/")
    assert config.etcdAddress == (
        "http://10.0.0.1:2379",
        "http://10.0.0.2:2379",  # a bare host:port is http
        "https://etcd:4001/",
    )


@pytest.mark.parametrize(
    ("variable", "value", "name", "expected"),
    [
        ("GOGETA_PORT", "9999", "port", 9999),
        ("GOGETA_ETCD_ADDRESS", "http://e:2379", "etcdAddress", ("http://e:2379",)),
        ("GOGETA_URL_HEADER_PARAM", "X-Url", "UrlHeaderParam", "X-Url"),
        ("GOGETA_FORCE_FW_SSL", "true", "forceFwSsl", True),
        ("GOGETA_DOMAIN_DIR", "/d", "domainDir", "/d"),
        ("GOGETA_SERVICE_DIR", "/s", "serviceDir", "/s"),
        ("GOGETA_RESOLVER_TYPE", "Env", "resolverType", "Env"),
        ("GOGETA_LAST_ACCESS_INTERVAL", "3", "lastAccessInterval", 3),
        ("GOGETA_CPU_PROFILE", "/x.prof", "cpuProfile", "/x.prof"),
        ("GOGETA_LISTEN_ADDRESS", "::1", "listenAddress", "::1"),
        ("GOGETA_DUMMY_TARGET", "http://t:1/", "dummyTarget", "http://t:1/"),
        ("GOGETA_CONNECT_TIMEOUT", "1.5", "connectTimeout", 1.5),
        ("GOGETA_READ_TIMEOUT", "7", "readTimeout", 7.0),
        ("GOGETA_LOG_LEVEL", "WARNING", "logLevel", "WARNING"),
        (
            "GOGETA_TRUSTED_PROXIES",
            "10.1.2.3/32",
            "trustedProxies",
            (ipaddress.ip_network("10.1.2.3/32"),),
        ),
        ("GOGETA_TRUSTED_PROXIES", "", "trustedProxies", ()),
        ("GOGETA_NO_WAKE_USER_AGENTS", "^Probe/", "noWakeUserAgents", re.compile("^Probe/", re.I)),
        ("GOGETA_NO_WAKE_USER_AGENTS", " ", "noWakeUserAgents", None),
    ],
)
def test_environment_variable(variable: str, value: str, name: str, expected: Any) -> None:
    assert getattr(parse(**{variable: value}), name) == expected


def test_every_setting_has_an_environment_variable_tested() -> None:
    names = {s.env_name for s in settings.SETTINGS}
    assert "GOGETA_TEMPLATE_DIR" in names  # tested below with a real directory
    assert len(names) == len(settings.SETTINGS)


def test_template_dir_from_environment(tmp_path: Path) -> None:
    assert parse(GOGETA_TEMPLATE_DIR=str(tmp_path)).templateDir == tmp_path.resolve()


def test_flag_beats_environment() -> None:
    config = parse(
        "-port", "1234", "-forceFwSsl=false", GOGETA_PORT="9999", GOGETA_FORCE_FW_SSL="1"
    )
    assert config.port == 1234
    assert config.forceFwSsl is False


def test_parse_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOGETA_PORT", "4321")
    assert settings.parse([]).port == 4321


def test_last_flag_wins() -> None:
    assert parse("-port", "1", "-port", "2").port == 2


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["-port", "http"], "-port"),
        (["-port", "70000"], "-port"),
        (["-port", "-1"], "-port"),
        (["-port="], "-port"),
        (["-lastAccessInterval", "-3"], "-lastAccessInterval"),
        (["-lastAccessInterval", "1.5"], "-lastAccessInterval"),
        (["-forceFwSsl=maybe"], "-forceFwSsl"),
        (["-resolverType", "Consul"], "-resolverType"),
        (["-etcdAddress", "ftp://x"], "-etcdAddress"),
        (["-etcdAddress", ","], "-etcdAddress"),
        (["-etcdAddress", "http://x:port"], "-etcdAddress"),
        (["-dummyTarget", "localhost"], None),  # a bare host is accepted as http://localhost
        (["-domainDir", "/"], "-domainDir"),
        (["-serviceDir", ""], "-serviceDir"),
        (["-templateDir", "/nonexistent/gogeta-templates"], "-templateDir"),
        (["-UrlHeaderParam", "X Url"], "-UrlHeaderParam"),
        (["-UrlHeaderParam", "X-Url:"], "-UrlHeaderParam"),
        (["-connectTimeout", "0"], "-connectTimeout"),
        (["-readTimeout", "inf"], "-readTimeout"),
        (["-readTimeout", "nan"], "-readTimeout"),
        (["-readTimeout", "soon"], "-readTimeout"),
        (["-listenAddress", "example.com"], "-listenAddress"),
        (["-logLevel", "LOUD"], "-logLevel"),
        (["-trustedProxies", "10.0.0.0/33"], "-trustedProxies"),
        (["-trustedProxies", "lb.example.com"], "-trustedProxies"),
        (["-noWakeUserAgents", "(bot"], "-noWakeUserAgents"),
    ],
)
def test_bad_value_names_the_flag(argv: list[str], names: str | None) -> None:
    if names is None:
        parse(*argv)
        return
    with pytest.raises(settings.SettingError) as caught:
        parse(*argv)
    message = str(caught.value)
    assert names in message
    assert repr(argv[-1].partition("=")[2] if "=" in argv[-1] else argv[-1]) in message


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(settings.SettingError, match="GOGETA_PORT"):
        parse(GOGETA_PORT="eighty")


def test_bad_environment_value_is_ignored_when_the_flag_overrides_it() -> None:
    assert parse("-port", "80", GOGETA_PORT="eighty").port == 80


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-nosuchflag"], "flag provided but not defined: -nosuchflag"),
        (["-nosuchflag=1"], "flag provided but not defined: -nosuchflag"),
        (["-port"], "flag needs an argument: -port"),
        (["7777"], "unexpected argument '7777'"),
        (["-"], "unexpected argument '-'"),
    ],
)
def test_bad_command_line(argv: list[str], fragment: str) -> None:
    with pytest.raises(settings.SettingError, match=fragment):
        parse(*argv)


def test_a_client_certificate_needs_its_key_and_a_password_its_user(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("not checked here")
    with pytest.raises(settings.SettingError, match="-etcdCertFile and -etcdKeyFile"):
        parse("-etcdCertFile", str(cert))
    with pytest.raises(settings.SettingError, match="-etcdPassword needs -etcdUsername"):
        parse("-etcdPassword", "s3cret")
    with pytest.raises(settings.SettingError, match="is not a readable file"):
        parse("-etcdCaFile", str(tmp_path / "missing.pem"))
    config = parse("-etcdCertFile", str(cert), "-etcdKeyFile", str(cert))
    assert config.etcdCertFile == config.etcdKeyFile == str(cert.resolve())


def test_the_typed_config_matches_the_table() -> None:
    """Each Config field is one row of SETTINGS, and holds what that row's parser returns."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(settings.Config)
    assert [f.name for f in dataclasses.fields(settings.Config)] == [
        s.name for s in settings.SETTINGS
    ]
    config = parse()
    for s in settings.SETTINGS:
        value = getattr(config, s.name)
        expected = hints[s.name]
        origin = typing.get_origin(expected) or expected
        if origin is typing.Union or origin is type(int | None):
            allowed = tuple(typing.get_origin(a) or a for a in typing.get_args(expected))
            assert isinstance(value, allowed), (s.name, value, expected)
        else:
            assert isinstance(value, origin), (s.name, value, expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
