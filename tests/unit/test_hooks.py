"""The node agent calls a preStop httpGet hook as the kubelet of its release does
(podgate_sandbox.hooks), and podgate's drain listener answers each form: the token in the path
from every kubelet, in a header only from kubelets 1.25+ (a 1.20 kubelet drops the header, which
is why podgate puts it there only where the API server admits no such kubelet)."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from podgate.app.drain_server import DrainServer
from podgate.model import gates
from podgate_sandbox.hooks import HookCall, failed_hook_message, http_hook_call
from tests.unit.test_drain import draining_pod, world_with
from tests.unit.world import NS

CONTAINER = {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}
PATH_FORM = gates.drain_hook("http://10.96.0.12:8081", "shop", "tok")["httpGet"]
HEADER_FORM = gates.drain_hook("https://10.96.0.12:8081", "shop", "tok", token_header=True)["httpGet"]


def test_a_kubelet_before_1_25_calls_plain_http_with_a_double_slash_and_no_headers() -> None:
    assert http_hook_call(PATH_FORM, "10.1.0.5", CONTAINER, "v1.20.2") == HookCall(
        "http://10.96.0.12:8081//drain/shop/tok", {"User-Agent": "Go-http-client/1.1"}
    )
    call = http_hook_call(HEADER_FORM, "10.1.0.5", CONTAINER, "v1.24.0")
    assert call.url == "http://10.96.0.12:8081//drain/shop"  # scheme HTTPS ignored
    assert gates.DRAIN_TOKEN_HEADER not in call.headers


def test_a_kubelet_of_1_25_on_sends_the_scheme_and_headers_as_its_probes_do() -> None:
    call = http_hook_call(HEADER_FORM, "10.1.0.5", CONTAINER, "v1.37.2")
    assert call == HookCall(
        "https://10.96.0.12:8081/drain/shop",
        {gates.DRAIN_TOKEN_HEADER: "tok", "User-Agent": "kube-lifecycle/1.37", "Accept": "*/*"},
    )
    # no host: the pod's own address; a named port from the container
    own = http_hook_call({"port": "http", "path": "x"}, "10.1.0.5", CONTAINER, "v1.30.0")
    assert own.url == "http://10.1.0.5:8080/x"


def test_the_kubelets_failed_hook_event_quotes_the_path_so_a_header_token_stays_out() -> None:
    pod = {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"}}
    for version, action in (("v1.20.2", PATH_FORM), ("v1.37.2", HEADER_FORM)):
        call = http_hook_call(action, "10.1.0.5", CONTAINER, version)
        message = failed_hook_message(version, action, "app", pod, call.url, "connection refused")
        assert f'lifecycle hook ({action["path"]}) for Container "app" in Pod "web-1_shop(u1)"' in message
        assert ("tok" in message) is (action is PATH_FORM), message


async def test_each_kubelets_call_reaches_the_drain_listener_as_it_would_in_a_cluster() -> None:
    _, endpoint, seen = await world_with(
        draining_pod("p1", ip="10.0.0.1", token="tok-p1"), draining_pod("p2", ip="10.0.0.2", token="tok-p2")
    )
    async with TestServer(DrainServer("127.0.0.1", 0, endpoint).app()) as server:
        url = f"http://{server.host}:{server.port}"

        async def status(action: dict[str, object], version: str) -> int:
            call = http_hook_call(action, "10.1.0.5", CONTAINER, version)
            async with (
                aiohttp.ClientSession() as session,
                session.get(call.url, headers=call.headers, skip_auto_headers=("User-Agent",)) as r,
            ):
                return r.status

        assert await status(gates.drain_hook(url, NS, "tok-p1")["httpGet"], "v1.20.2") == 200
        header_form = gates.drain_hook(url, NS, "tok-p2", token_header=True)["httpGet"]
        assert await status(header_form, "v1.20.2") == 404  # the header dropped: no pod named
        assert await status(header_form, "v1.27.0") == 200
    assert seen == ["drained", "unknown_pod", "drained"]
