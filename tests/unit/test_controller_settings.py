"""Controller configuration: flags, config file, environment; invalid settings named at start."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from podgate.cli import controller_cmd
from podgate.cli.main import _subparser, build_parser
from podgate.controller.settings import SettingsError


def parse(argv: list[str]) -> controller_cmd.ControllerSettings:
    parser = build_parser()
    controller_cmd.apply_config_file(_subparser(parser, "controller"), argv)
    return controller_cmd.settings_from(parser.parse_args(["controller", *argv]))


def test_config_file_with_flags_winning(tmp_path: Path) -> None:
    cfg = tmp_path / "podgate.yaml"
    cfg.write_text(
        "haproxy-runtime-socket: /run/haproxy.sock\nworkers: 8\ncontinuous: true\npoll-period: 0.2\n"
    )
    s = parse(["--config", str(cfg), "--workers", "2"])
    assert s.haproxy[0].runtime_sockets == ("/run/haproxy.sock",)
    assert s.workers == 2  # the flag
    assert s.continuous is True and s.poll_period == 0.2  # the file


ALI = ["--alibaba-provider", "ali", "--default-provider", "ali"]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--haproxy-runtime-socket", "/s", "--default-provider", "f5"], "--default-provider='f5'"),
        (["--haproxy-runtime-socket", "/s", "--haproxy-master-socket", "/m"], "go together"),
        (
            ["--haproxy-runtime-socket", "/s", "--haproxy-master-socket", "/m", "--haproxy-config", "/c"],
            "--lb-cidr is required",
        ),
        (["--haproxy-runtime-socket", "/s", "--poll-period", "30"], "--poll-period"),
        (["--haproxy-runtime-socket", "/s", "--prestop-delay", "-1"], "--prestop-delay"),
        ([], "no load balancer configured"),
        (["--aws-provider", "aws"], "--default-provider='haproxy' is not a configured provider"),
        (ALI, "--alibaba-region is required"),
        (
            [*ALI, "--alibaba-region", "cn-hangzhou", "--alibaba-nlb-endpoint", "ftp://x"],
            "--alibaba-nlb-endpoint='ftp://x' is not http",
        ),
        (
            ["--alibaba-provider", "haproxy", "--haproxy-runtime-socket", "/s", "--alibaba-region", "r"],
            "provider names must be unique",
        ),
    ],
)
def test_invalid_settings_name_the_setting(argv: list[str], error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        parse(argv)


def test_alibaba_settings() -> None:
    s = parse(
        [
            *ALI,
            "--alibaba-region",
            "cn-beijing",
            "--alibaba-clb-endpoint",
            "http://127.0.0.1:1",
            "--alibaba-rate",
            "3",
        ]
    )
    (a,) = s.alibaba
    assert (a.name, a.region, a.rate, a.poll_period, a.clb_endpoint, a.nlb_endpoint) == (
        "ali",
        "cn-beijing",
        3.0,
        1.0,
        "http://127.0.0.1:1",
        None,
    )


def test_cloud_poll_periods() -> None:
    s = parse([*ALI, "--alibaba-region", "r", "--alibaba-poll-period", "2.5", "--aws-provider", "aws"])
    assert (s.alibaba[0].poll_period, s.aws[0].poll_period) == (2.5, 1.0)
    with pytest.raises(SettingsError, match="--aws-poll-period must be between"):
        parse([*ALI, "--alibaba-region", "r", "--aws-provider", "aws", "--aws-poll-period", "0"])


def test_bad_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("frobnicate: 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'frobnicate'"):
        parse(["--config", str(cfg)])
    cfg.write_text("workers: lots\n")
    with pytest.raises(SettingsError, match="setting 'workers': invalid value 'lots'"):
        parse(["--config", str(cfg)])


def test_json_log_lines() -> None:
    record = logging.LogRecord("podgate.x", logging.WARNING, __file__, 1, "gate %s stuck", ("web",), None)
    line = json.loads(controller_cmd.JsonFormatter().format(record))
    assert (
        line["level"] == "WARNING" and line["logger"] == "podgate.x" and line["message"] == "gate web stuck"
    )
    assert line["time"].endswith("Z")


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["controller", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--kubeconfig",
        "--haproxy-runtime-socket",
        "--lb-cidr",
        "--continuous",
        "--poll-period",
        "--webhook-url",
        "--no-inject",
        "--prestop-delay",
        "--log-format",
        "--config",
    ):
        assert flag in out
