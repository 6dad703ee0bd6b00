"""Controller configuration: flags, environment, config file; invalid settings named at start."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest

from podgate.cli import controller_cmd, declared, logs
from podgate.cli.controller_cmd import SETTINGS, controller_settings
from podgate.cli.main import build_parser, main
from podgate.controller.settings import (
    AlibabaSettings,
    AwsSettings,
    ControllerSettings,
    HAProxySettings,
    SettingsError,
)
from podgate_sandbox.controlplane import CLUSTER_NAME, Sandbox


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own environment only: no PODGATE_* or cloud variables from the developer's shell."""
    for name in os.environ:
        if name.startswith("PODGATE_") or any(s.ambient_env == name for s in SETTINGS):
            monkeypatch.delenv(name)


def parse(argv: list[str], environ: dict[str, str] | None = None) -> ControllerSettings:
    return controller_settings(argv, environ or {})


def values(argv: list[str], environ: dict[str, str] | None = None) -> declared.Values:
    parser = argparse.ArgumentParser()
    controller_cmd.add_arguments(parser)
    return declared.resolve(SETTINGS, parser.parse_args(argv), environ or {})


HAPROXY = ["--haproxy-runtime-socket", "/s"]
ALI = ["--alibaba-provider", "ali", "--default-provider", "ali", "--cluster-name", "c"]


def test_a_representative_command_line_gives_the_settings_it_always_did() -> None:
    s = parse(
        [
            "--kubeconfig",
            "/state/controller.kubeconfig",
            "--haproxy-runtime-socket",
            "/run/haproxy-a.sock",
            "--haproxy-runtime-socket",
            "haproxy-b.internal:9999",
            "--haproxy-master-socket",
            "/run/master.sock",
            "--haproxy-config",
            "/state/haproxy.cfg",
            "--haproxy-base-config",
            "/state/base.cfg",
            "--lb-cidr",
            "127.200.0.0/16",
            "--cluster-name",
            "prod-eu",
            "--aws-provider",
            "aws",
            "--aws-region",
            "us-east-1",
            "--aws-rate",
            "5",
            "--alibaba-provider",
            "ali",
            "--alibaba-region",
            "cn-hangzhou",
            "--alibaba-poll-period",
            "2.5",
            "--alibaba-nlb-endpoint",
            "http://127.0.0.1:8100",
            "--webhook-bind",
            "127.0.0.1",
            "--webhook-port",
            "9444",
            "--webhook-cert-dir",
            "/state/webhook-certs",
            "--webhook-url",
            "https://127.0.0.1:9444/mutate-pods",
            "--webhook-config-name",
            "podgate-sandbox",
            "--health-bind",
            "127.0.0.1",
            "--health-port",
            "8081",
            "--leader-elect",
            "--lease-duration",
            "6",
            "--adopt-gate-prefix",
            "service.readiness.alibabacloud.com/",
            "--remove-gate-prefix",
            "target-health.elbv2.k8s.aws/",
            "--no-inject",
            "--continuous",
            "--workers",
            "8",
            "--poll-period",
            "0.2",
            "--prestop-delay",
            "5",
            "--default-provider",
            "haproxy",
        ]
    )
    assert dataclasses.replace(s, identity="test") == ControllerSettings(
        kubeconfig="/state/controller.kubeconfig",
        cluster_name="prod-eu",
        default_provider="haproxy",
        haproxy=(
            HAProxySettings(
                name="haproxy",
                runtime_sockets=("/run/haproxy-a.sock", "haproxy-b.internal:9999"),
                master_socket="/run/master.sock",
                config_path=Path("/state/haproxy.cfg"),
                base_config_path=Path("/state/base.cfg"),
            ),
        ),
        aws=(AwsSettings(name="aws", region="us-east-1", rate=5.0, poll_period=1.0),),
        alibaba=(
            AlibabaSettings(
                name="ali",
                region="cn-hangzhou",
                rate=10.0,
                poll_period=2.5,
                nlb_endpoint="http://127.0.0.1:8100",
            ),
        ),
        lb_cidr="127.200.0.0/16",
        continuous=True,
        workers=8,
        poll_period=0.2,
        webhook_port=9444,
        webhook_bind="127.0.0.1",
        health_bind="127.0.0.1",
        webhook_url="https://127.0.0.1:9444/mutate-pods",
        webhook_cert_dir=Path("/state/webhook-certs"),
        webhook_config_name="podgate-sandbox",
        inject=False,
        remove_gate_prefixes=("target-health.elbv2.k8s.aws/",),
        adopt_gate_prefixes=("service.readiness.alibabacloud.com/",),
        prestop_delay=5.0,
        leader_elect=True,
        leader_election_namespace="kube-system",
        leader_election_name="podgate-controller",
        identity="test",
        lease_duration=6.0,
    )
    assert s.identity.endswith(f"-{os.getpid()}")


def test_defaults() -> None:
    s = parse(HAPROXY)
    assert (s.workers, s.poll_period, s.webhook_port, s.webhook_bind, s.inject, s.continuous) == (
        4,
        0.1,
        9443,
        "0.0.0.0",
        True,
        False,
    )
    assert (s.webhook_cert_dir, s.leader_election_namespace, s.lease_duration) == (
        Path("/tmp/podgate-webhook-certs"),
        "kube-system",
        15.0,
    )
    process = values([])
    assert (process["health_port"], process["health_bind"], process["verbose"], process["log_format"]) == (
        8081,
        "0.0.0.0",
        False,
        "text",
    )


@pytest.mark.parametrize("replica", [0, 1])
def test_the_sandboxs_command_line(replica: int, tmp_path: Path) -> None:
    """What podgate_sandbox.controlplane passes (with a cloud provider, as the e2e tests swap in)."""
    argv = Sandbox(tmp_path).controller_argv(replica, "--alibaba-provider", "alibaba", "--alibaba-region")
    env = {"PODGATE_CLUSTER_NAME": CLUSTER_NAME}  # what controller_replaced adds to the environment
    s = parse([*argv[argv.index("controller") + 1 :], "cn-hangzhou", "--alibaba-rate", "50"], env)
    assert (s.haproxy[0].name, s.lb_cidr, s.leader_elect, s.lease_duration) == (
        "haproxy",
        "127.200.0.0/16",
        True,
        6.0,
    )
    assert s.adopt_gate_prefixes == ("service.readiness.alibabacloud.com/",)
    # each replica's drain listener on a port of its own, beside its health port
    assert (s.health_port, s.drain_port) == (8081 + 100 * replica, 8082 + 100 * replica)
    assert s.alibaba == (AlibabaSettings("alibaba", "cn-hangzhou", rate=50.0),)
    # podgate's own classes for both providers, and Alibaba's classes on the sandbox's HAProxy
    assert s.classes() == {
        "podgate.dev/haproxy": "haproxy",
        "podgate.dev/alibaba": "alibaba",
        "alibabacloud.com/nlb": "haproxy",
        "alibabacloud.com/clb": "haproxy",
    }
    assert (s.webhook_config_name, s.webhook_url is not None) == (
        ("podgate-sandbox", True) if replica == 0 else ("podgate", False)
    )


def test_the_deployment_overlays_environment() -> None:
    """deploy/overlays/{aws,alibaba} configure the controller by environment only."""
    args = ["--leader-elect", "--webhook-service=podgate-system/podgate", "--webhook-cert-dir=/certs"]
    aws = parse(
        args,
        {
            "PODGATE_AWS_PROVIDER": "aws",
            "PODGATE_CLUSTER_NAME": "my-cluster",
            "PODGATE_DEFAULT_PROVIDER": "aws",
            "AWS_REGION": "us-east-1",
            "PODGATE_REMOVE_GATE_PREFIXES": "target-health.elbv2.k8s.aws/",
            "POD_NAMESPACE": "podgate-system",
        },
    )
    assert (aws.haproxy, aws.aws, aws.remove_gate_prefixes) == (
        (),
        (AwsSettings("aws", "us-east-1"),),
        ("target-health.elbv2.k8s.aws/",),
    )
    assert aws.cluster_name == "my-cluster"
    assert (aws.webhook_service, aws.leader_election_namespace) == (
        "podgate-system/podgate",
        "podgate-system",
    )
    alibaba = parse(
        args,
        {
            "PODGATE_ALIBABA_PROVIDER": "alibaba",
            "PODGATE_CLUSTER_NAME": "my-cluster",
            "PODGATE_DEFAULT_PROVIDER": "alibaba",
            "PODGATE_ALIBABA_REGION": "cn-hangzhou",
            "PODGATE_ADOPT_GATE_PREFIXES": "service.readiness.alibabacloud.com/",
        },
    )
    assert (alibaba.alibaba, alibaba.adopt_gate_prefixes) == (
        (AlibabaSettings("alibaba", "cn-hangzhou"),),
        ("service.readiness.alibabacloud.com/",),
    )
    base = parse(args, {"PODGATE_HAPROXY_RUNTIME_SOCKETS": "haproxy-a:9999,haproxy-b:9999"})
    assert base.haproxy[0].runtime_sockets == ("haproxy-a:9999", "haproxy-b:9999")


def test_config_file_with_flags_winning(tmp_path: Path) -> None:
    cfg = tmp_path / "podgate.yaml"
    cfg.write_text(
        "haproxy-runtime-socket: /run/haproxy.sock\nworkers: 8\ncontinuous: true\npoll_period: 0.2\n"
        "adopt-gate-prefix: [a.example/, b.example/]\nno-inject: true\n"
    )
    s = parse(["--config", str(cfg), "--workers", "2"])
    assert s.haproxy[0].runtime_sockets == ("/run/haproxy.sock",)
    assert s.workers == 2  # the flag
    assert s.continuous is True and s.poll_period == 0.2  # the file
    assert s.adopt_gate_prefixes == ("a.example/", "b.example/") and s.inject is False
    assert parse([], {"PODGATE_CONFIG": str(cfg)}).workers == 8


def test_precedence_flag_then_variable_then_file_then_ambient_variable_then_default(tmp_path: Path) -> None:
    cfg = tmp_path / "podgate.yaml"
    cfg.write_text("workers: 6\naws-region: eu-west-1\nremove-gate-prefix: file.example/\n")
    argv = ["--config", str(cfg), "--aws-provider", "aws", "--default-provider", "aws", "--cluster-name", "c"]
    env = {"PODGATE_WORKERS": "7", "AWS_REGION": "us-east-1", "PODGATE_REMOVE_GATE_PREFIXES": "env.example/"}
    assert parse(argv).workers == 6
    s = parse(argv, env)
    assert (s.workers, s.aws[0].region, s.remove_gate_prefixes) == (7, "eu-west-1", ("env.example/",))
    s = parse([*argv, "--workers", "9", "--remove-gate-prefix", "flag.example/"], env)
    assert (s.workers, s.remove_gate_prefixes) == (9, ("flag.example/",))
    aws = ["--aws-provider", "aws", "--default-provider", "aws", "--cluster-name", "c"]
    assert parse(aws, env).aws[0].region == "us-east-1"
    s = parse(argv, {**env, "PODGATE_AWS_REGION": "ap-south-1", "PODGATE_WORKERS": ""})
    assert (s.aws[0].region, s.workers) == ("ap-south-1", 6)  # an empty variable is as if unset


def test_switches_from_the_environment() -> None:
    env = {"PODGATE_INJECT": "false", "PODGATE_LEADER_ELECT": "true", "PODGATE_LOG_LEVEL": "DEBUG"}
    s = parse(HAPROXY, env)
    assert (s.inject, s.leader_elect, s.continuous) == (False, True, False)
    assert values([], env)["verbose"] is True
    assert values([], {"PODGATE_LOG_LEVEL": "INFO"})["verbose"] is False


#: a bad value of every setting, as text a flag or variable would carry
BAD_VALUES: dict[str, str] = {
    "--kubeconfig": " ",
    "--default-provider": "F5!",
    "--haproxy-name": "Ha Proxy",
    "--haproxy-runtime-socket": "nowhere",
    "--haproxy-master-socket": "haproxy:http",
    "--haproxy-config": " ",
    "--haproxy-base-config": " ",
    "--cluster-name": "my cluster",
    "--aws-provider": "AWS",
    "--aws-region": "useast",
    "--aws-rate": "0",
    "--aws-poll-period": "61",
    "--alibaba-provider": "ali baba",
    "--alibaba-region": "hangzhou",
    "--alibaba-rate": "-1",
    "--alibaba-poll-period": "0",
    "--alibaba-clb-endpoint": "ftp://x",
    "--alibaba-nlb-endpoint": "ftp://x",
    "--alibaba-ecs-endpoint": "ftp://x",
    "--lb-cidr": "10.0.0.0/8",
    "--continuous": "yes",
    "--readiness-timeout": "10 minutes",
    "--on-timeout": "ignore",
    "--workers": "abc",
    "--max-eviction-refusal": "forever",
    "--poll-period": "30",
    "--webhook-port": "70000",
    "--admission": "fork",
    "--webhook-bind": "any where",
    "--webhook-url": "127.0.0.1:9443",
    "--webhook-service": "podgate",
    "--webhook-config-name": "Podgate",
    "--webhook-cert-dir": " ",
    "--webhook-cert-file": " ",
    "--webhook-key-file": " ",
    "--no-inject": "no",
    "--adopt-gate-prefix": "/x",
    "--remove-gate-prefix": " x",
    "--prestop": "sleep forever",
    "--prestop-delay": "-1",
    "--drain-url": "http://127.0.0.1:9447/drain",
    "--health-port": "0",
    "--health-bind": "a b",
    "--drain-port": "http",
    "--drain-bind": "a b",
    "--verbose": "TRACE",
    "--leader-elect": "1",
    "--leader-election-namespace": "Kube_System",
    "--leader-election-id": "-lease",
    "--lease-duration": "2",
    "--log-format": "xml",
    "--load-balancer-class": "podgate.dev/haproxy",
    "--migration-labels": "maybe",
    "--prometheus-allow": "http://169.254.169.254",
    "--haproxy-ha-policy": "some",
    "--namespace": "Podgate_System",
    "--webhook-cert-secret": "-certs",
    "--webhook-cert-validity": "5",
    "--webhook-ca-validity": "1e12",
    "--webhook-cert-renew-at": "1",
    "--webhook-cert-check-period": "0",
}


def test_every_setting_has_a_bad_value_in_the_table() -> None:
    assert sorted(BAD_VALUES) == sorted(s.flag for s in SETTINGS)


def run_controller(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``podgate controller ARGV…``, which must refuse to start: its one line of stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(["controller", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


#: every setting from every source, except a switch's flag, which takes no value to be bad
SOURCES = [
    pytest.param(setting, source, id=f"{setting.flag}-{source}")
    for setting in SETTINGS
    for source in ("flag", "env", "config")
    if not (source == "flag" and setting.flag_sets is not None)
]


@pytest.mark.parametrize(("setting", "source"), SOURCES)
def test_a_bad_value_from_anywhere_is_one_line_naming_the_setting(
    setting: declared.Setting,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = BAD_VALUES[setting.flag]
    if source == "flag":
        argv = [f"{setting.flag}={bad}"]
    elif source == "env":
        monkeypatch.setenv(setting.env_name, bad)
        argv = []
    else:
        cfg = tmp_path / "podgate.yaml"
        cfg.write_text(f"{setting.key}: {json.dumps('maybe' if setting.flag_sets is not None else bad)}\n")
        argv = ["--config", str(cfg)]
    err = run_controller(argv, capsys)
    assert err.startswith("podgate controller: invalid configuration: ")
    assert setting.flag in err and setting.env_name in err
    accepts = declared.BOOLEAN.accepts if source == "config" and setting.flag_sets is not None else None
    assert f"expected {accepts or setting.kind.accepts}" in err


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("frobnicate: 1\n", "unknown setting 'frobnicate'"),
        (
            "workers: lots\n",
            "'lots' from .* \\(workers\\) is not accepted; expected an integer of at least 1",
        ),
        ("workers: [1, 2]\n", "--workers / PODGATE_WORKERS: \\[1, 2\\] from .* is not accepted"),
        ("haproxy-runtime-socket: {a: 1}\n", "--haproxy-runtime-socket / PODGATE_HAPROXY_RUNTIME_SOCKETS"),
        ("- workers\n", "expected a mapping of setting: value"),
        ("workers: [\n", "--config / PODGATE_CONFIG: .*podgate.yaml: while parsing"),
    ],
)
def test_bad_config_file(
    tmp_path: Path, content: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "podgate.yaml"
    cfg.write_text(content)
    with pytest.raises(SettingsError, match=error):
        parse(["--config", str(cfg)])
    run_controller(["--config", str(cfg)], capsys)  # one line, even for YAML's own message


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_controller(["--config", str(tmp_path / "absent.yaml")], capsys)
    assert "--config / PODGATE_CONFIG" in err and "absent.yaml" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--help"],
        ["gate", "--help"],
        ["gate", "set", "--help"],
        ["sandbox", "--help"],  # the podgate-sandbox plug-in, installed for the tests
        ["controller", "--help"],
    ],
)
def test_other_commands_never_read_controller_settings(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PODGATE_WORKERS", "abc")
    monkeypatch.setenv("PODGATE_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([*HAPROXY, "--default-provider", "f5"], "--default-provider='f5' is not a configured provider"),
        ([*HAPROXY, "--haproxy-master-socket", "/m"], "go together"),
        ([*HAPROXY, "--haproxy-master-socket", "/m", "--haproxy-config", "/c"], "--lb-cidr is required"),
        ([], "no load balancer configured"),
        (
            ["--aws-provider", "aws", "--default-provider", "haproxy", "--cluster-name", "c"],
            "--default-provider='haproxy' is not a configured provider; configured: aws",
        ),
        (
            ["--aws-provider", "aws"],
            "--cluster-name is required with --aws-provider or --alibaba-provider: a group is bound "
            "only when its podgate.dev/cluster tag names this cluster",
        ),
        ([*ALI[:-2], "--alibaba-region", "cn-r"], "--cluster-name is required"),
        (
            [*HAPROXY, "--load-balancer-class", "example.com/edge=edge"],
            "--load-balancer-class='example.com/edge=edge': 'edge' is not a configured provider",
        ),
        (ALI, "--alibaba-region is required"),
        (
            ["--alibaba-provider", "haproxy", *HAPROXY, "--alibaba-region", "cn-r"],
            "provider names must be unique",
        ),
        ([*HAPROXY, "--webhook-cert-file", "/c"], "--webhook-cert-file and --webhook-key-file go together"),
        (
            [*HAPROXY, "--webhook-url", "https://h/m", "--webhook-service", "ns/svc"],
            "--webhook-url and --webhook-service are alternatives",
        ),
        (
            [*HAPROXY, "--webhook-cert-validity", "600", "--webhook-ca-validity", "300"],
            "--webhook-ca-validity must be at least --webhook-cert-validity",
        ),
        (
            [*HAPROXY, "--webhook-cert-validity", "60", "--webhook-cert-renew-at", "0.9"],
            "must leave 12 --webhook-cert-check-period",
        ),
        ([*HAPROXY, "--drain-port", "8081"], "--drain-port and --health-port must differ"),
        ([*HAPROXY, "--drain-port", "9443"], "--drain-port and --webhook-port must differ"),
    ],
)
def test_settings_that_do_not_fit_together(argv: list[str], error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        parse(argv)


def test_settings_that_do_not_fit_together_name_their_variables_too() -> None:
    with pytest.raises(SettingsError) as error:
        parse([*HAPROXY, "--haproxy-master-socket", "/m"])
    assert str(error.value) == (
        "--haproxy-master-socket and --haproxy-config go together (provisioning mode) "
        "[PODGATE_HAPROXY_MASTER_SOCKET, PODGATE_HAPROXY_CONFIG]"
    )


def test_accepted_forms() -> None:
    s = parse(
        [
            "--haproxy-runtime-socket",
            "unix@/run/h.sock",
            "--haproxy-runtime-socket",
            "ipv4@10.0.0.1:9999",
            "--alibaba-provider",
            "ali",
            "--alibaba-region",
            "cn-beijing",
            "--cluster-name",
            "prod_eu.1",
            "--alibaba-clb-endpoint",
            "slb.internal:8080",
            "--webhook-bind",
            "::",
            "--prestop-delay",
            "0",
        ]
    )
    assert s.haproxy[0].runtime_sockets == ("unix@/run/h.sock", "ipv4@10.0.0.1:9999")
    assert (s.alibaba[0].clb_endpoint, s.webhook_bind, s.prestop_delay) == ("slb.internal:8080", "::", 0.0)


def test_json_log_lines() -> None:
    record = logging.LogRecord("podgate.x", logging.WARNING, __file__, 1, "gate %s stuck", ("web",), None)
    line = json.loads(logs.JsonFormatter().format(record))
    assert (
        line["level"] == "WARNING" and line["logger"] == "podgate.x" and line["message"] == "gate web stuck"
    )
    assert line["time"].endswith("Z")


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["controller", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for s in SETTINGS:
        assert s.flag in out and s.env_name in out.replace("- ", "-")
    assert "--config" in out and "PODGATE_CONFIG" in out


@pytest.mark.parametrize(
    ("argv", "environ", "want"),
    [
        ([], {}, (None, "closed")),
        (["--readiness-timeout", "10m", "--on-timeout", "open"], {}, (600.0, "open")),
        ([], {"PODGATE_READINESS_TIMEOUT": "1h30m", "PODGATE_ON_TIMEOUT": "closed"}, (5400.0, "closed")),
    ],
    ids=["default-waits-for-ever", "flags", "environment"],
)
def test_the_global_readiness_timeout(
    argv: list[str], environ: dict[str, str], want: tuple[object, str]
) -> None:
    s = parse(["--haproxy-runtime-socket", "/run/haproxy.sock", *argv], environ)
    assert (s.readiness_timeout, s.on_timeout) == want


def test_the_prestop_hook_is_drain_unless_set_and_the_older_delay_is_an_alias() -> None:
    from podgate.model.gates import DRAIN, NO_PRESTOP, PreStop

    assert parse(HAPROXY).prestop_default() == DRAIN
    assert parse([*HAPROXY, "--prestop", "sleep 15"]).prestop_default() == PreStop("sleep", 15)
    assert parse([*HAPROXY, "--prestop", "none"]).prestop_default() == NO_PRESTOP
    assert parse([*HAPROXY, "--prestop-delay", "5"]).prestop_default() == PreStop("sleep", 5)
    assert parse([*HAPROXY, "--prestop-delay", "0"]).prestop_default() == NO_PRESTOP
    with pytest.raises(SettingsError, match="--prestop and --prestop-delay"):
        parse([*HAPROXY, "--prestop", "drain", "--prestop-delay", "5"])
    assert parse([*HAPROXY, "--drain-url", "http://10.96.0.12:8081"]).drain_url == "http://10.96.0.12:8081"


def test_each_setting_has_one_default() -> None:
    """The flag's default and the settings' own default agree, for every setting that has a
    field: a test or a library user building ``ControllerSettings()`` gets what the command gets."""
    groups = {
        "": ControllerSettings(),
        "haproxy": HAProxySettings(name="haproxy", runtime_sockets=()),
        "aws": AwsSettings(name="aws", region=None),
        "alibaba": AlibabaSettings(name="ali", region=None),
    }
    checked = 0
    for s in SETTINGS:
        if s.target is None or s.default is None:
            continue
        group, _, name = s.target.rpartition(".")
        if name in ("name",) or not hasattr(groups[group], name):
            continue
        default = getattr(groups[group], name)
        wanted = tuple(s.default) if isinstance(default, tuple) else s.default
        assert default == wanted, f"{s.flag}: flag default {s.default!r}, settings default {default!r}"
        checked += 1
    assert checked > 30
