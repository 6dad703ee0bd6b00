"""The readiness probe state machine (kubelet prober worker) and probe spec parsing."""

from __future__ import annotations

import pytest

from podgate.model.probes import ProbeSpec, ProbeSpecError, ProbeState, observe, parse_probe, resolve_port


def run(spec: ProbeSpec, results: str) -> str:
    """Feed results ('s'uccess / 'f'ailure); return readiness after each as 'R' / '.'."""
    state, out = ProbeState(), ""
    for r in results:
        state = observe(state, spec, r == "s")
        out += "R" if state.ready else "."
    return out


@pytest.mark.parametrize(
    ("success", "failure", "results", "want"),
    [
        (1, 3, "s", "R"),
        (1, 3, "f", "."),  # starts not ready, stays so
        (1, 3, "sff", "RRR"),  # two failures are under the threshold
        (1, 3, "sfff", "RRR."),
        (1, 3, "sffsfff", "RRRRRR."),  # a success resets the failure run
        (3, 1, "sss", "..R"),
        (3, 1, "ssfsss", ".....R"),
        (3, 1, "sssf", "..R."),
        (2, 2, "ssffss", ".RR..R"),
    ],
)
def test_thresholds(success: int, failure: int, results: str, want: str) -> None:
    spec = ProbeSpec("tcpSocket", 80, success_threshold=success, failure_threshold=failure)
    assert run(spec, results) == want


def test_defaults_follow_the_api() -> None:
    spec = parse_probe({"httpGet": {"port": 8080}})
    assert (spec.kind, spec.port, spec.path, spec.scheme) == ("httpGet", 8080, "/", "HTTP")
    assert (spec.initial_delay, spec.period, spec.timeout) == (0, 10, 1)
    assert (spec.success_threshold, spec.failure_threshold) == (1, 3)


def test_all_fields() -> None:
    spec = parse_probe(
        {
            "tcpSocket": {"port": "http"},
            "initialDelaySeconds": 2,
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "successThreshold": 2,
            "failureThreshold": 5,
        }
    )
    assert spec == ProbeSpec(
        "tcpSocket", "http", initial_delay=2, period=1, timeout=3, success_threshold=2, failure_threshold=5
    )


@pytest.mark.parametrize(
    ("probe", "error"),
    [
        ({}, "none of httpGet, tcpSocket, exec"),
        ({"httpGet": {"port": 80, "scheme": "FTP"}}, "scheme 'FTP'"),
        ({"tcpSocket": {"port": 80}, "periodSeconds": -1}, "must be positive"),
    ],
)
def test_bad_probes_are_explained(probe: dict[str, object], error: str) -> None:
    with pytest.raises(ProbeSpecError, match=error):
        parse_probe(probe)


def test_ports_by_number_and_name() -> None:
    container = {"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}
    assert resolve_port(80, container) == 80
    assert resolve_port("9090", container) == 9090
    assert resolve_port("http", container) == 8080
    with pytest.raises(ProbeSpecError, match="no port named 'metrics'"):
        resolve_port("metrics", container)
    with pytest.raises(ProbeSpecError, match="out of range"):
        resolve_port(70000, container)
