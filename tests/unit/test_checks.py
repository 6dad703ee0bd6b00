"""Check gates, pure parts: spec parsing, label selectors, query templating, comparisons, verdicts,
thresholds (the probe state machine, shared)."""

from __future__ import annotations

from typing import Any

import pytest

from podgate.model import checks as chk
from podgate.model.probes import ProbeState, observe


def obj(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "warm", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec},
    }


def test_parse_http_with_defaults() -> None:
    s = chk.parse_check(obj(httpGet={"port": "http"}))
    assert s.check == chk.HttpCheck("http", "/", "HTTP", (), None)
    assert (s.period, s.timeout, s.success_threshold, s.failure_threshold, s.mode) == (10, 1, 1, 3, "startup")
    assert s.gate == "check.podgate.dev/warm"


def test_parse_prometheus_and_modes() -> None:
    s = chk.parse_check(
        obj(
            prometheus={"url": "http://127.0.0.1:9090/", "query": "up", "value": 1, "operator": ">="},
            mode="continuous",
            periodSeconds=5,
        )
    )
    assert s.check == chk.PrometheusCheck("http://127.0.0.1:9090", "up", ">=", 1.0)
    assert (s.mode, s.period) == ("continuous", 5.0)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({}, "exactly one of httpGet, tcpSocket, prometheus \\(has none\\)"),
        ({"tcpSocket": {"port": 1}, "httpGet": {"port": 1}}, "has httpGet, tcpSocket"),
        ({"httpGet": {"port": 1, "bodyRegex": "("}}, "bodyRegex does not compile"),
        ({"prometheus": {"url": "http://x", "query": "q", "operator": "~"}}, "operator '~'"),
    ],
)
def test_unusable_specs(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(chk.CheckSpecError, match=error):
        chk.parse_check(obj(**spec))


@pytest.mark.parametrize(
    ("selector", "labels", "want"),
    [
        ({"matchLabels": {"app": "web"}}, {"app": "web"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "api"}, False),
        ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["fe", "be"]}]}, {"t": "be"}, True),
        ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["fe"]}]}, {"t": "fe"}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]},
            {"app": "web"},
            True,
        ),
        # no selector matches a pod without labels, as no Service does (gates.MATCH_CONDITIONS)
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]}, {}, False),
        ({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {}, False),
        ({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}, {"canary": ""}, True),
        ({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {"canary": "1"}, False),
        ({}, {"app": "web"}, False),  # an empty selector selects nothing
    ],
)
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], want: bool) -> None:
    assert chk.label_selector_matches(selector, labels) is want


def test_query_templating() -> None:
    pod = {
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "q": 'a"b'}},
        "status": {"podIP": "127.100.0.9"},
    }
    q = 'x{pod="{{pod}}", ns="{{ namespace }}", ip="{{ip}}", app="{{labels.app}}", q="{{labels.q}}"}'
    assert chk.render_query(q, pod) == 'x{pod="web-1", ns="shop", ip="127.100.0.9", app="web", q="a\\"b"}'
    with pytest.raises(chk.CheckSpecError, match=r"labels\.missing"):
        chk.render_query("{{labels.missing}}", pod)


@pytest.mark.parametrize(
    ("value", "op", "threshold", "want"),
    [
        (1, ">", 0.5, True),
        (0.5, ">", 0.5, False),
        (0.5, ">=", 0.5, True),
        (0.1, "<", 0.5, True),
        (3, "==", 3, True),
        (3, "!=", 3, False),
        (float("nan"), "!=", 3, False),
    ],
)
def test_compare(value: float, op: str, threshold: float, want: bool) -> None:
    assert chk.compare(value, op, threshold) is want


@pytest.mark.parametrize(
    ("check", "status", "body", "ok", "words"),
    [
        (chk.HttpCheck(80), 204, "", True, "returned 204"),
        (chk.HttpCheck(80), 503, "", False, "returned 503, expected 2xx or 3xx"),
        (chk.HttpCheck(80, expected_statuses=(200,)), 204, "", False, "returned 204, expected 200"),
        (chk.HttpCheck(80, body_regex="warm(ed)?"), 200, "cache warmed", True, "returned 200"),
        (chk.HttpCheck(80, body_regex="^ready$"), 200, "starting", False, "body does not match /^ready$/"),
    ],
)
def test_http_verdict(check: chk.HttpCheck, status: int, body: str, ok: bool, words: str) -> None:
    got_ok, got_words = chk.http_verdict(check, status, body)
    assert got_ok is ok and words in got_words


def test_thresholds_and_conditions() -> None:
    spec = chk.parse_check(obj(tcpSocket={"port": 80}, successThreshold=2, failureThreshold=2))
    state = ProbeState()
    verdicts = []
    for result in (True, True, False, False):
        state = observe(state, spec, result)
        verdicts.append(chk.condition_for(spec.gate, state.ready, True, "saw it")["reason"])
    assert verdicts == ["CheckFailing", "CheckPassed", "CheckPassed", "CheckFailing"]
    assert chk.condition_for(spec.gate, False, False, "waiting")["reason"] == "CheckPending"
