"""A local Alibaba Cloud OpenAPI for CLB, NLB and ECS that the real SDK talks to over real HTTP.

There is no moto for Alibaba Cloud, and a fake client would test nothing of what breaks in
production: the signature, the parameter encoding (CLB takes a JSON string in the query, NLB a
form body flattened as ``Servers.1.ServerId``), the response shapes the SDK models read, the
error codes.  So this double speaks the wire format itself: it verifies each request's signature
from the documented algorithms (ACS3-HMAC-SHA256, the SDK's default, and the old RPC HMAC-SHA1
that ``Config(signature_algorithm='v2')`` selects) recomputed from what arrived, rejects a reused
nonce, answers in the JSON the SDK's models parse, and fails in Alibaba's documented error codes.

It lives in the sandbox (not only in the tests) because the benchmarks drive it too: the
sandbox is "all of it on one machine, no cloud", and this is the cloud's part.

Behind it is a small model of the resources podgate touches: CLB vServer groups of ``eni``
backends, NLB server groups (``Ip`` or ``Instance``) and listeners, and ENIs that own pod IPs.
A :class:`Script` says what the model cannot know: how long a new backend stays unchecked, which
backends fail their health checks, how long an NLB add job runs, when to throttle.

Simplifications, each chosen because podgate never depends on the difference:

- ``DescribeNetworkInterfaces`` invents one secondary ENI per queried private IP
  (:func:`eni_for`); it knows no ENI that nobody asked about.
- CLB backends are ENIs only: an ``ecs``/``eci`` ``ServerId`` is "not found", as no instance
  exists here.  Adding a backend that is already in the group changes nothing (and a repeat in
  one request counts once, as CLB documents for AddBackendServers).
- NLB removal and weight changes take effect at once (no ``Removing``/``Configuring`` phase);
  only adding is an asynchronous job (``Adding`` for ``Script.nlb_adding_polls`` list calls).
- Tags (``TagResources``, ``ListTagResources``) only on what the double models: CLB instances
  and vServer groups, NLB instances, server groups and listeners; another documented
  ``ResourceType`` is accepted as a type but none of its resources exists.
- No STS tokens, bearer tokens or RAM policy: a known AccessKey may do everything.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from aiohttp import web

CLB_VERSION, NLB_VERSION, ECS_VERSION = "2014-05-15", "2022-04-30", "2014-05-26"
CLB_BATCH = 20  # AddVServerGroupBackendServers: "You can specify at most 20 backend servers in each call."
NLB_BATCH = 200  # AddServersToServerGroup: "You can add up to 200 backend servers in each call."
ECS_IP_BATCH = 100  # DescribeNetworkInterfaces: PrivateIpAddress.N, N up to 100
CLOCK_SKEW = dt.timedelta(minutes=15)  # requests further from now are InvalidTimeStamp.Expired
V3_REQUIRED_HEADERS = (
    "host",
    "x-acs-action",
    "x-acs-content-sha256",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-version",
)
PRODUCTS = {CLB_VERSION: "Slb", NLB_VERSION: "Nlb", ECS_VERSION: "Ecs"}
log = logging.getLogger(__name__)

Params = dict[str, str]
Answer = dict[str, Any]


def eni_for(ip: str) -> str:
    """The ENI that owns a private IP here: deterministic, so tests can predict CLB ServerIds."""
    return "eni-" + hashlib.sha1(ip.encode()).hexdigest()[:18]


@dataclass
class Script:
    """What the model cannot know: health-check timing and outcome, job latency, throttling."""

    initial_polls: int = 0  # health polls a new backend is not yet checked (CLB unavailable, NLB Initial)
    new_targets_unhealthy: bool = False  # backends first added from now on fail their checks
    unhealthy: set[str] = field(default_factory=set)  # "ip:port" that fail their checks
    nlb_adding_polls: int = 1  # ListServerGroupServers polls a newly added NLB server stays "Adding"
    throttle_next: int = 0  # the next N requests (any action) get HTTP 400 Throttling.User
    throttled: int = 0  # how many were throttled
    health_polls: int = 0  # DescribeHealthStatus + GetListenerHealthStatus calls answered
    without_eni: set[str] = field(default_factory=set)  # private IPs no ENI holds (not ENI networking)
    eni_networking: bool = True  # False: no private IP is on an ENI (pods on an overlay network)
    nlb_check_interval: int = 1  # NLB server groups' HealthCheckInterval (seconds), as ListServerGroups says
    nlb_healthy_threshold: int = 2  # and their HealthyThreshold
    calls: list[str] = field(default_factory=list)  # every action in order of arrival (after auth)
    call_times: list[float] = field(default_factory=list)  # time.monotonic() of each of those calls


class ApiError(Exception):
    """One of Alibaba Cloud's documented errors: HTTP status, Code and Message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _invalid(name: str) -> ApiError:
    """The common InvalidParameter error, in its documented wording."""
    return ApiError(400, "InvalidParameter", f'The specified value of parameter "{name}" is not valid.')


def _incomplete() -> ApiError:
    return ApiError(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.")


def _mismatch() -> ApiError:
    return ApiError(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")


def _missing(name: str) -> ApiError:
    return ApiError(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
    )


def _nlb_illegal(name: str) -> ApiError:
    """NLB's own wording for a bad parameter (``IllegalParam.%s``)."""
    return ApiError(400, f"IllegalParam.{name}", f"The param of {name} is illegal.")


def _nlb_missing(name: str) -> ApiError:
    return ApiError(400, f"MissingParam.{name}", f"The parameter of {name} is missing.")


def _int(value: Any, error: ApiError) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise error from None


def _weight(server: dict[str, Any], default: int, error: ApiError) -> int:
    """A backend's Weight (0 to 100; CLB's examples pass it as a string), or ``error``."""
    weight = _int(server.get("Weight", default), error)
    if not 0 <= weight <= 100:
        raise error
    return weight


def _percent(text: str) -> str:
    """RFC 3986 percent-encoding as both signature versions specify it (space %20, ``~`` kept)."""
    return quote(text, safe="~")


def _flat_list(params: Params, name: str) -> list[str]:
    """``Name.1``, ``Name.2``, … as the SDK flattens a list, in index order."""
    indexed = []
    for key, value in params.items():
        head, _, index = key.partition(".")
        if head == name and index.isdigit():
            indexed.append((int(index), value))
    return [value for _, value in sorted(indexed)]


def _flat_records(params: Params, name: str) -> list[dict[str, str]]:
    """``Name.1.Field``, … as the SDK flattens a list of objects, in index order."""
    records: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == name and parts[1].isdigit():
            records.setdefault(int(parts[1]), {})[parts[2]] = value
    return [records[i] for i in sorted(records)]


@dataclass
class _ClbBackend:
    server_id: str
    ip: str
    port: int
    weight: int
    description: str | None

    def as_api(self) -> Answer:
        out: Answer = {
            "ServerId": self.server_id,
            "Port": self.port,
            "Weight": self.weight,
            "Type": "eni",
            "ServerIp": self.ip,
        }
        if self.description is not None:  # "If Description is not set, it is not returned."
            out["Description"] = self.description
        return out


@dataclass
class _VServerGroup:
    group_id: str
    name: str
    load_balancer_id: str
    backends: dict[str, _ClbBackend] = field(default_factory=dict)  # "ip:port" → backend


@dataclass
class _ClbListener:
    port: int
    group_id: str
    protocol: str = "tcp"


@dataclass
class _NlbServer:
    server_id: str
    server_type: str
    ip: str
    port: int
    weight: int
    description: str | None
    adding_left: int  # ListServerGroupServers polls still "Adding"

    @property
    def status(self) -> str:
        return "Adding" if self.adding_left > 0 else "Available"


@dataclass
class _NlbGroup:
    group_id: str
    group_type: str
    load_balancer_ids: list[str]
    servers: dict[str, _NlbServer] = field(default_factory=dict)  # "ip:port" → server
    any_port: bool = False  # all-port forwarding: servers have port 0


@dataclass
class _NlbListener:
    listener_id: str
    port: int
    load_balancer_id: str
    group_id: str


class AlibabaDouble:
    """The CLB (2014-05-15), NLB (2022-04-30) and ECS (2014-05-26) OpenAPI on one local port.

    Requests are dispatched on (action, version), as Alibaba's POP gateway does; the state lives
    in this object, so it survives :meth:`stop` and :meth:`start` like a cloud outage would.
    """

    def __init__(self, region: str = "cn-hangzhou", credentials: dict[str, str] | None = None) -> None:
        self.region = region
        self.credentials = dict(credentials or {"podgate-test-ak": "podgate-test-secret"})
        self.script = Script()
        self.runner: web.AppRunner | None = None
        self._nonces: set[tuple[str, str]] = set()
        self._clb_groups: dict[str, _VServerGroup] = {}
        self._clb_listeners: dict[str, list[_ClbListener]] = {}  # load balancer → listeners
        self._nlb_groups: dict[str, _NlbGroup] = {}
        self._nlb_listeners: dict[str, _NlbListener] = {}
        self._initial_left: dict[str, int] = {}  # "ip:port" → health polls still unchecked
        self._seen: set[str] = set()  # every "ip:port" ever added
        #: (product version, ResourceType, ResourceId) → tags, as TagResources left them
        self._tags: dict[tuple[str, str, str], dict[str, str]] = {}
        self._actions: dict[tuple[str, str], Callable[[Params], Answer]] = {
            ("DescribeVServerGroupAttribute", CLB_VERSION): self._describe_vserver_group_attribute,
            ("AddVServerGroupBackendServers", CLB_VERSION): self._add_vserver_group_backend_servers,
            ("RemoveVServerGroupBackendServers", CLB_VERSION): self._remove_vserver_group_backend_servers,
            ("SetVServerGroupAttribute", CLB_VERSION): self._set_vserver_group_attribute,
            ("DescribeHealthStatus", CLB_VERSION): self._describe_health_status,
            ("DescribeVServerGroups", CLB_VERSION): self._describe_vserver_groups,
            ("ListServerGroups", NLB_VERSION): self._list_server_groups,
            ("ListListeners", NLB_VERSION): self._list_listeners,
            ("ListServerGroupServers", NLB_VERSION): self._list_server_group_servers,
            ("AddServersToServerGroup", NLB_VERSION): self._add_servers_to_server_group,
            ("RemoveServersFromServerGroup", NLB_VERSION): self._remove_servers_from_server_group,
            ("UpdateServerGroupServersAttribute", NLB_VERSION): self._update_server_group_servers_attribute,
            ("GetListenerHealthStatus", NLB_VERSION): self._get_listener_health_status,
            ("TagResources", CLB_VERSION): self._clb_tag_resources,
            ("ListTagResources", CLB_VERSION): self._clb_list_tag_resources,
            ("TagResources", NLB_VERSION): self._nlb_tag_resources,
            ("ListTagResources", NLB_VERSION): self._nlb_list_tag_resources,
            ("DescribeNetworkInterfaces", ECS_VERSION): self._describe_network_interfaces,
        }

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> str:
        """Serve on host:port; returns the endpoint as the SDK's ``Config.endpoint`` takes it."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()
        return f"{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # -- the world --------------------------------------------------------------------------------
    def add_clb(self, load_balancer_id: str, listeners: dict[int, str]) -> None:
        """A CLB instance whose listeners (port → vServer group id) forward to new, empty groups."""
        for port, group_id in listeners.items():
            self._clb_groups.setdefault(
                group_id, _VServerGroup(group_id, f"podgate-{group_id}", load_balancer_id)
            )
            self._clb_listeners.setdefault(load_balancer_id, []).append(_ClbListener(port, group_id))

    def add_nlb(
        self,
        load_balancer_id: str,
        listeners: dict[str, tuple[int, str]],
        server_group_type: str = "Ip",
        any_port: bool = False,
    ) -> None:
        """An NLB instance whose listeners (id → (port, server group id)) use new, empty groups."""
        for listener_id, (port, group_id) in listeners.items():
            group = self._nlb_groups.setdefault(
                group_id, _NlbGroup(group_id, server_group_type, [], any_port=any_port)
            )
            if load_balancer_id not in group.load_balancer_ids:
                group.load_balancer_ids.append(load_balancer_id)
            self._nlb_listeners[listener_id] = _NlbListener(listener_id, port, load_balancer_id, group_id)

    def clb_backends(self, group_id: str) -> dict[str, int]:
        """The vServer group's backends: "ip:port" → weight."""
        return {key: b.weight for key, b in self._clb_groups[group_id].backends.items()}

    def clb_server_ids(self, group_id: str) -> dict[str, str]:
        """The vServer group's backends: "ip:port" → ServerId (the ENI)."""
        return {key: b.server_id for key, b in self._clb_groups[group_id].backends.items()}

    def nlb_servers(self, group_id: str) -> dict[str, tuple[str, int]]:
        """The server group's servers: "ip:port" → (status, weight); reading polls nothing."""
        return {key: (s.status, s.weight) for key, s in self._nlb_groups[group_id].servers.items()}

    # -- HTTP, authentication ---------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        params: Params = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        if request.content_type == "application/x-www-form-urlencoded" and body:
            params.update(parse_qsl(body.decode(), keep_blank_values=True))
        action = request.headers.get("x-acs-action") or params.get("Action", "")
        version = request.headers.get("x-acs-version") or params.get("Version", "")
        request_id = str(uuid.uuid4()).upper()
        try:
            self._authenticate(request, body, params)
            self.script.calls.append(action)
            self.script.call_times.append(time.monotonic())
            if self.script.throttle_next > 0:
                self.script.throttle_next -= 1
                self.script.throttled += 1
                raise ApiError(400, "Throttling.User", "Request was denied due to user flow control.")
            handler = self._actions.get((action, version))
            if handler is None:
                raise ApiError(
                    404,
                    "InvalidAction.NotFound",
                    "Specified api is not found, please check your url and method.",
                )
            self._check_region(params, required=version != NLB_VERSION)
            try:
                answer = {"RequestId": request_id, **handler(params)}
            except ApiError:
                raise
            except Exception:  # a bug here: say so in the API's own terms, with the traceback in the log
                log.exception("alibaba double: %s %s failed", action, version)
                raise ApiError(
                    500,
                    "InternalError",
                    "The request processing has failed due to some unknown error, exception or failure.",
                ) from None
            return self._json(200, answer, request_id)
        except ApiError as e:
            product = PRODUCTS.get(version, "")
            error = {
                "RequestId": request_id,
                "HostId": request.headers.get("host", ""),
                "Code": e.code,
                "Message": e.message,
                "Recommend": f"https://api.aliyun.com/troubleshoot?q={e.code}&product={product}"
                f"&requestId={request_id}",
            }
            return self._json(e.status, error, request_id)

    @staticmethod
    def _json(status: int, answer: Answer, request_id: str) -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps(answer).encode(),
            headers={"Content-Type": "application/json;charset=utf-8", "x-acs-request-id": request_id},
        )

    def _authenticate(self, request: web.Request, body: bytes, params: Params) -> None:
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("ACS3-"):
            self._verify_v3(request, body, authorization)
        elif "Signature" in params:
            self._verify_v2(request, params)
        else:
            raise _incomplete()

    def _secret(self, access_key_id: str) -> str:
        if access_key_id not in self.credentials:
            raise ApiError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        return self.credentials[access_key_id]

    @staticmethod
    def _check_time(stamp: str) -> None:
        try:
            when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            raise ApiError(
                400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted."
            ) from None
        if abs(dt.datetime.now(dt.UTC) - when) > CLOCK_SKEW:
            raise ApiError(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")

    def _use_nonce(self, access_key_id: str, nonce: str) -> None:
        if not nonce:
            raise _incomplete()
        if (access_key_id, nonce) in self._nonces:
            raise ApiError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        self._nonces.add((access_key_id, nonce))

    def _verify_v3(self, request: web.Request, body: bytes, authorization: str) -> None:
        """ACS3-HMAC-SHA256 (the V3 signature), recomputed from the request as it arrived."""
        algorithm, _, rest = authorization.partition(" ")
        if algorithm != "ACS3-HMAC-SHA256":
            raise ApiError(400, "InvalidSignatureMethod", "Specified signature method is not valid.")
        fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
        access_key_id, signed, signature = (
            fields.get(k, "") for k in ("Credential", "SignedHeaders", "Signature")
        )
        if not (access_key_id and signed and signature):
            raise _incomplete()
        secret = self._secret(access_key_id)
        signed_headers = signed.split(";")
        unsigned = [
            h
            for h in {
                *V3_REQUIRED_HEADERS,
                *(k.lower() for k in request.headers if k.lower().startswith("x-acs-")),
            }
            if h not in signed_headers
        ]
        if unsigned or signed_headers != sorted(signed_headers):
            raise _incomplete()
        payload_hash = hashlib.sha256(body).hexdigest()
        if request.headers.get("x-acs-content-sha256") != payload_hash:
            raise _mismatch()
        raw_path, _, raw_query = request.raw_path.partition("?")
        query = sorted((_percent(k), _percent(v)) for k, v in parse_qsl(raw_query, keep_blank_values=True))
        canonical_headers = "".join(
            f"{name}:{','.join(sorted(v.strip() for v in request.headers.getall(name, [])))}\n"
            for name in signed_headers
        )
        canonical_request = "\n".join(
            [
                request.method.upper(),
                raw_path or "/",
                "&".join(f"{k}={v}" for k, v in query),
                canonical_headers,
                signed,
                payload_hash,
            ]
        )
        string_to_sign = f"{algorithm}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise _mismatch()
        self._check_time(request.headers.get("x-acs-date", ""))
        self._use_nonce(access_key_id, request.headers.get("x-acs-signature-nonce", ""))

    def _verify_v2(self, request: web.Request, params: Params) -> None:
        """The RPC signature (HMAC-SHA1 over every query and form parameter but Signature)."""
        missing = [
            p
            for p in ("AccessKeyId", "SignatureMethod", "SignatureVersion", "SignatureNonce", "Timestamp")
            if not params.get(p)
        ]
        if missing:
            raise _missing(missing[0])
        if params["SignatureMethod"] != "HMAC-SHA1":
            raise ApiError(400, "InvalidSignatureMethod", "Specified signature method is not valid.")
        secret = self._secret(params["AccessKeyId"])
        canonical = "&".join(
            f"{k}={v}"
            for k, v in sorted((_percent(k), _percent(v)) for k, v in params.items() if k != "Signature")
        )
        string_to_sign = f"{request.method.upper()}&{_percent('/')}&{_percent(canonical)}"
        digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), params["Signature"]):
            raise _mismatch()
        self._check_time(params["Timestamp"])
        self._use_nonce(params["AccessKeyId"], params["SignatureNonce"])

    def _check_region(self, params: Params, required: bool) -> None:
        region = params.get("RegionId")
        if region is None:
            if required:
                raise _missing("RegionId")
            return
        if region != self.region:
            raise ApiError(
                404, "InvalidRegionId.NotFound", "The specified RegionId does not exist in our records."
            )

    # -- health -----------------------------------------------------------------------------------
    def _added(self, key: str) -> None:
        """A backend joined a group: its checks start over; a never-seen one may be scripted to fail."""
        if key not in self._seen:
            self._seen.add(key)
            if self.script.new_targets_unhealthy:
                self.script.unhealthy.add(key)
        self._initial_left[key] = self.script.initial_polls

    def _health(self, keys: list[str]) -> dict[str, str]:
        """One health poll over these backends: "initial", "unhealthy" or "healthy" each."""
        self.script.health_polls += 1
        out = {}
        for key in dict.fromkeys(keys):
            left = self._initial_left.get(key, 0)
            if left > 0:
                self._initial_left[key] = left - 1
                out[key] = "initial"
            else:
                out[key] = "unhealthy" if key in self.script.unhealthy else "healthy"
        return out

    # -- CLB --------------------------------------------------------------------------------------
    def _clb_group(self, params: Params) -> _VServerGroup:
        group_id = params.get("VServerGroupId")
        if not group_id:
            raise _missing("VServerGroupId")
        if group_id not in self._clb_groups:
            raise ApiError(400, "InvalidParameter", "The specified VServerGroupId does not exist.")
        return self._clb_groups[group_id]

    @staticmethod
    def _clb_servers(params: Params) -> list[dict[str, Any]]:
        raw = params.get("BackendServers")
        if raw is None:
            raise _missing("BackendServers")
        try:
            servers = json.loads(raw)
        except ValueError:
            raise _invalid("BackendServers") from None
        if not isinstance(servers, list) or not all(isinstance(s, dict) for s in servers):
            raise _invalid("BackendServers")
        if len(servers) > CLB_BATCH:
            raise _invalid("BackendServers")
        return servers

    @staticmethod
    def _clb_key(server: dict[str, Any]) -> tuple[str, str, int]:
        """(ServerId, ServerIp, Port) of an ``eni`` backend as a request names it, checked."""
        kind = str(server.get("Type") or "ecs")
        if kind not in ("ecs", "eni", "eci"):
            raise ApiError(400, "BackendServer.InvalidType", "The specified Type is invalid.")
        server_id = str(server.get("ServerId") or "")
        if not server_id:
            raise _invalid("ServerId")
        if kind != "eni":  # the double has no ECS instances or container groups
            raise ApiError(400, "InvalidServerId.NotExist", "The specified ServerId is not exist.")
        ip = str(server.get("ServerIp") or "")
        if not ip:
            raise _invalid("ServerIp")
        if server_id != eni_for(ip):
            raise ApiError(
                404, "ResourceNotFound.vServers", f"The specified enis {server_id} does not exist."
            )
        port = _int(server.get("Port"), _invalid("Port"))
        if not 1 <= port <= 65535:
            raise _invalid("Port")
        return server_id, ip, port

    @staticmethod
    def _clb_listed(group: _VServerGroup) -> Answer:
        return {
            "VServerGroupId": group.group_id,
            "BackendServers": {"BackendServer": [b.as_api() for b in group.backends.values()]},
        }

    def _describe_vserver_group_attribute(self, params: Params) -> Answer:
        group = self._clb_group(params)
        return {
            "VServerGroupName": group.name,
            "LoadBalancerId": group.load_balancer_id,
            **self._clb_listed(group),
        }

    def _add_vserver_group_backend_servers(self, params: Params) -> Answer:
        group = self._clb_group(params)
        new: dict[str, _ClbBackend] = {}
        for server in self._clb_servers(params):
            server_id, ip, port = self._clb_key(server)
            weight = _weight(server, 100, _invalid("Weight"))
            key = f"{ip}:{port}"
            if key not in group.backends and key not in new:
                description = server.get("Description")
                new[key] = _ClbBackend(
                    server_id, ip, port, weight, None if description is None else str(description)
                )
        for key, backend in new.items():  # all or nothing: only once every server checked out
            group.backends[key] = backend
            self._added(key)
        return self._clb_listed(group)

    def _remove_vserver_group_backend_servers(self, params: Params) -> Answer:
        group = self._clb_group(params)
        keys = [f"{ip}:{port}" for _, ip, port in map(self._clb_key, self._clb_servers(params))]
        for key in keys:
            group.backends.pop(key, None)
        return self._clb_listed(group)

    def _set_vserver_group_attribute(self, params: Params) -> Answer:
        group = self._clb_group(params)
        changes = []
        for server in self._clb_servers(params) if "BackendServers" in params else []:
            _, ip, port = self._clb_key(server)
            key = f"{ip}:{port}"
            if key not in group.backends:
                raise _invalid("BackendServers")
            changes.append(
                (group.backends[key], _weight(server, group.backends[key].weight, _invalid("Weight")))
            )
        for backend, weight in changes:
            backend.weight = weight
        if params.get("VServerGroupName"):
            group.name = params["VServerGroupName"]
        return {"VServerGroupName": group.name, **self._clb_listed(group)}

    def _clb_load_balancer(self, params: Params) -> str:
        load_balancer_id = params.get("LoadBalancerId")
        if not load_balancer_id:
            raise _missing("LoadBalancerId")
        if load_balancer_id not in self._clb_listeners:
            raise ApiError(
                404, "InvalidLoadBalancerId.NotFound", "The specified LoadBalancerId does not exist."
            )
        return load_balancer_id

    def _describe_health_status(self, params: Params) -> Answer:
        load_balancer_id = self._clb_load_balancer(params)
        port = params.get("ListenerPort")
        listeners = [
            listener
            for listener in self._clb_listeners[load_balancer_id]
            if port is None or str(listener.port) == port
        ]
        rows = [
            (listener, b)
            for listener in listeners
            for b in self._clb_groups[listener.group_id].backends.values()
        ]
        health = self._health([f"{b.ip}:{b.port}" for _, b in rows])
        words = {"initial": "unavailable", "unhealthy": "abnormal", "healthy": "normal"}
        return {
            "BackendServers": {
                "BackendServer": [
                    {
                        "ListenerPort": listener.port,
                        "ServerId": b.server_id,
                        "ServerIp": b.ip,
                        "Port": b.port,
                        "Protocol": listener.protocol,
                        "ServerHealthStatus": words[health[f"{b.ip}:{b.port}"]],
                    }
                    for listener, b in rows
                ]
            }
        }

    def _describe_vserver_groups(self, params: Params) -> Answer:
        load_balancer_id = self._clb_load_balancer(params)
        with_listeners = params.get("IncludeListener", "false").lower() == "true"
        groups = [g for g in self._clb_groups.values() if g.load_balancer_id == load_balancer_id]
        out = []
        for g in groups:
            item: Answer = {
                "VServerGroupId": g.group_id,
                "VServerGroupName": g.name,
                "ServerCount": len(g.backends),
            }
            if with_listeners:
                ports = [x for x in self._clb_listeners[load_balancer_id] if x.group_id == g.group_id]
                item["AssociatedObjects"] = {
                    "Listeners": {"Listener": [{"Port": x.port, "Protocol": x.protocol} for x in ports]}
                }
            out.append(item)
        return {"VServerGroups": {"VServerGroup": out}}

    # -- NLB --------------------------------------------------------------------------------------
    def _nlb_group(self, params: Params) -> _NlbGroup:
        group_id = params.get("ServerGroupId")
        if not group_id:
            raise _nlb_missing("ServerGroupId")
        if group_id not in self._nlb_groups:
            raise ApiError(
                404, "ResourceNotFound.serverGroup", "The specified resource of serverGroup is not found."
            )
        return self._nlb_groups[group_id]

    @staticmethod
    def _page(params: Params, items: list[Answer]) -> tuple[list[Answer], Answer]:
        """One page of a NextToken/MaxResults list (1 to 100 a page, 20 by default)."""
        size = _int(params.get("MaxResults", 20), _nlb_illegal("MaxResults"))
        if not 1 <= size <= 100:
            raise _nlb_illegal("MaxResults")
        token = params.get("NextToken") or ""
        start = 0
        if token:
            try:
                start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:"))
            except ValueError:
                raise _nlb_illegal("NextToken") from None
            if start < 0:
                raise _nlb_illegal("NextToken")
        page = items[start : start + size]
        meta: Answer = {"TotalCount": len(items), "MaxResults": size}
        if start + size < len(items):
            meta["NextToken"] = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode()
        return page, meta

    def _list_server_groups(self, params: Params) -> Answer:
        wanted = _flat_list(params, "ServerGroupIds")
        groups = [g for g in self._nlb_groups.values() if not wanted or g.group_id in wanted]
        items: list[Answer] = [
            {
                "ServerGroupId": g.group_id,
                "ServerGroupName": f"podgate-{g.group_id}",
                "ServerGroupType": g.group_type,
                "ServerGroupStatus": "Available",
                "RelatedLoadBalancerIds": list(g.load_balancer_ids),
                "Protocol": "TCP",
                "AddressIPVersion": "ipv4",
                "Scheduler": "Wrr",
                "ServerCount": len(g.servers),
                "RegionId": self.region,
                "VpcId": "vpc-podgatedouble",
                "AnyPortEnabled": g.any_port,
                "Tags": [
                    {"Key": k, "Value": v}
                    for k, v in sorted(self._tags.get((NLB_VERSION, "servergroup", g.group_id), {}).items())
                ],
                "HealthCheck": {
                    "HealthCheckEnabled": True,
                    "HealthCheckType": "TCP",
                    "HealthCheckInterval": self.script.nlb_check_interval,
                    "HealthyThreshold": self.script.nlb_healthy_threshold,
                },
            }
            for g in groups
        ]
        page, meta = self._page(params, items)
        return {"ServerGroups": page, **meta}

    def _list_listeners(self, params: Params) -> Answer:
        lbs, ids = _flat_list(params, "LoadBalancerIds"), _flat_list(params, "ListenerIds")
        items: list[Answer] = [
            {
                "ListenerId": x.listener_id,
                "ListenerPort": x.port,
                "ListenerProtocol": "TCP",
                "LoadBalancerId": x.load_balancer_id,
                "ServerGroupId": x.group_id,
                "ListenerStatus": "Running",
                "RegionId": self.region,
            }
            for x in self._nlb_listeners.values()
            if (not lbs or x.load_balancer_id in lbs) and (not ids or x.listener_id in ids)
        ]
        page, meta = self._page(params, items)
        return {"Listeners": page, **meta}

    def _list_server_group_servers(self, params: Params) -> Answer:
        group = self._nlb_group(params)
        ids, ips = _flat_list(params, "ServerIds"), _flat_list(params, "ServerIps")
        servers = [
            s for s in group.servers.values() if (not ids or s.server_id in ids) and (not ips or s.ip in ips)
        ]
        items: list[Answer] = [
            {
                "ServerGroupId": group.group_id,
                "ServerId": s.server_id,
                "ServerIp": s.ip,
                "ServerType": s.server_type,
                "Port": s.port,
                "Weight": s.weight,
                "Status": s.status,
                "ZoneId": f"{self.region}-a",
                **({} if s.description is None else {"Description": s.description}),
            }
            for s in servers
        ]
        page, meta = self._page(params, items)
        for item in page:  # the add job advances as it is watched
            server = group.servers[f"{item['ServerIp']}:{item['Port']}"]
            server.adding_left = max(0, server.adding_left - 1)
        return {"Servers": page, **meta}

    def _nlb_servers(self, params: Params, group: _NlbGroup) -> list[tuple[str, dict[str, str]]]:
        """The request's ``Servers.N.*``, checked against the group's type, keyed "ip:port"."""
        servers = _flat_records(params, "Servers")
        if not servers:
            raise _nlb_missing("Servers")
        if len(servers) > NLB_BATCH:
            raise _nlb_illegal("Servers")
        out = []
        for server in servers:
            server_id, kind = server.get("ServerId", ""), server.get("ServerType", "")
            if not server_id:
                raise _nlb_missing("ServerId")
            if not kind:
                raise _nlb_missing("ServerType")
            if (kind == "Ip") != (group.group_type == "Ip"):
                raise ApiError(
                    400,
                    "Mismatch.ServerType",
                    f"The ServerType is mismatched for {kind} and {group.group_type}.",
                )
            if kind == "Ip":
                ip = server.get("ServerIp") or server_id
                if ip != server_id:
                    raise _nlb_illegal("IP")
            elif kind == "Eni":
                ip = server.get("ServerIp", "")
                if not ip:
                    raise ApiError(400, "MissingParam.IP", "The param of IP is missing.")
                if server_id != eni_for(ip):
                    raise ApiError(404, "ResourceNotFound.Eni", "The specified resource Eni is not found.")
            elif kind in ("Ecs", "Eci"):  # the double has no ECS instances or container groups
                raise ApiError(
                    404, f"ResourceNotFound.{kind}", f"The specified resource of {kind} is not found."
                )
            else:
                raise _nlb_illegal("ServerType")
            port = _int(server.get("Port", 0), _nlb_illegal("Port"))
            if not 0 <= port <= 65535:
                raise _nlb_illegal("Port")
            out.append((f"{ip}:{port}", server))
        if len({key for key, _ in out}) < len(out):
            raise ApiError(400, "DuplicatedParam.Server", "The param of Server is duplicated.")
        return out

    @staticmethod
    def _job(group: _NlbGroup) -> Answer:
        return {"ServerGroupId": group.group_id, "JobId": str(uuid.uuid4())}

    def _add_servers_to_server_group(self, params: Params) -> Answer:
        group = self._nlb_group(params)
        new = []
        for key, server in self._nlb_servers(params, group):
            weight = _weight(server, 100, _nlb_illegal("Weight"))
            if key not in group.servers:
                ip, _, port = key.rpartition(":")
                server_id, kind, description = (
                    server["ServerId"],
                    server["ServerType"],
                    server.get("Description"),
                )
                new.append(
                    (
                        key,
                        _NlbServer(
                            server_id, kind, ip, int(port), weight, description, self.script.nlb_adding_polls
                        ),
                    )
                )
        for key, server_state in new:
            group.servers[key] = server_state
            self._added(key)
        return self._job(group)

    def _remove_servers_from_server_group(self, params: Params) -> Answer:
        group = self._nlb_group(params)
        keys = [key for key, _ in self._nlb_servers(params, group)]
        self._require_members(group, keys)
        for key in keys:
            del group.servers[key]
        return self._job(group)

    def _update_server_group_servers_attribute(self, params: Params) -> Answer:
        group = self._nlb_group(params)
        servers = self._nlb_servers(params, group)
        self._require_members(group, [key for key, _ in servers])
        changes = [
            (group.servers[key], _weight(s, group.servers[key].weight, _nlb_illegal("Weight")), s)
            for key, s in servers
        ]
        for server_state, weight, server in changes:
            server_state.weight = weight
            if "Description" in server:
                server_state.description = server["Description"]
        return self._job(group)

    @staticmethod
    def _require_members(group: _NlbGroup, keys: list[str]) -> None:
        if any(key not in group.servers for key in keys):
            raise ApiError(
                404, "ResourceNotFound.BackendServer", "The specified resource of BackendServer is not found."
            )

    def _get_listener_health_status(self, params: Params) -> Answer:
        listener_id = params.get("ListenerId")
        if not listener_id:
            raise _nlb_missing("ListenerId")
        if listener_id not in self._nlb_listeners:
            raise ApiError(
                404, "ResourceNotFound.listener", "The specified resource of listener is not found."
            )
        listener = self._nlb_listeners[listener_id]
        group = self._nlb_groups[listener.group_id]
        servers = list(group.servers.values())
        health = self._health([f"{s.ip}:{s.port}" for s in servers])
        not_normal = []
        for s in servers:
            state = health[f"{s.ip}:{s.port}"]
            if s.status == "Adding" or state == "initial":
                not_normal.append(
                    {"ServerId": s.server_id, "ServerIp": s.ip, "Port": s.port, "Status": "Initial"}
                )
            elif state == "unhealthy":
                not_normal.append(
                    {
                        "ServerId": s.server_id,
                        "ServerIp": s.ip,
                        "Port": s.port,
                        "Status": "Unhealthy",
                        "Reason": {"ReasonCode": "CONNECT_FAILED"},
                    }
                )
        # Paged over the non-normal servers (MaxResults 1 to 100, 20 by default), as the API
        # pages them: a client that reads only the first page misses unhealthy servers.
        page, meta = self._page(params, not_normal)
        return {
            "ListenerHealthStatus": [
                {
                    "ListenerId": listener.listener_id,
                    "ListenerPort": listener.port,
                    "ListenerProtocol": "TCP",
                    "ServerGroupInfos": [
                        {
                            "ServerGroupId": group.group_id,
                            "HeathCheckEnabled": True,
                            "NonNormalServers": page,
                        }
                    ],
                }
            ],
            **meta,
        }

    # -- tags (CLB and NLB) -----------------------------------------------------------------------
    def tag(self, group_id: str, tags: dict[str, str]) -> None:
        """Tag a CLB vServer group or NLB server group as an administrator would (TagResources)."""
        kind = "vservergroup" if group_id in self._clb_groups else "servergroup"
        version = CLB_VERSION if kind == "vservergroup" else NLB_VERSION
        self._tags.setdefault((version, kind, group_id), {}).update(tags)

    def add_backend(self, group_id: str, ip: str, port: int, description: str | None = None) -> None:
        """A backend someone else put in a group (an administrator, another tool): an NLB ``Ip``
        server or a CLB ``eni`` backend, at full weight."""
        key = f"{ip}:{port}"
        if group_id in self._clb_groups:
            self._clb_groups[group_id].backends[key] = _ClbBackend(eni_for(ip), ip, port, 100, description)
        else:
            server = _NlbServer(ip, "Ip", ip, port, 100, description, 0)
            self._nlb_groups[group_id].servers[key] = server
        self._added(key)

    def tags_of(self, group_id: str) -> dict[str, str]:
        """A CLB vServer group's or NLB server group's tags; reading calls nothing."""
        kind = "vservergroup" if group_id in self._clb_groups else "servergroup"
        version = CLB_VERSION if kind == "vservergroup" else NLB_VERSION
        return dict(self._tags.get((version, kind, group_id), {}))

    def _tagged(self, version: str, kind: str, resource_id: str) -> bool:
        """Whether a resource of this kind exists here (only what the double models can be tagged)."""
        if version == CLB_VERSION:
            return {
                "instance": resource_id in self._clb_listeners,
                "vservergroup": resource_id in self._clb_groups,
            }.get(kind, False)
        return {
            "loadbalancer": any(resource_id in g.load_balancer_ids for g in self._nlb_groups.values()),
            "servergroup": resource_id in self._nlb_groups,
            "listener": resource_id in self._nlb_listeners,
        }.get(kind, False)

    def _tag_request(
        self,
        params: Params,
        version: str,
        kinds: tuple[str, ...],
        max_ids: int,
        error: Callable[[str], ApiError],
    ) -> tuple[str, list[str], list[dict[str, str]]]:
        """ResourceType, ResourceId.N and Tag.N.Key/Value of a tag call, checked as documented:
        20 tags at most, keys 1 to 64 characters (128 for a value), never ``aliyun``/``acs:``."""
        kind = params.get("ResourceType", "")
        if not kind:
            raise _missing("ResourceType") if version == CLB_VERSION else _nlb_missing("ResourceType")
        if kind not in kinds:
            raise error("ResourceType")
        ids = _flat_list(params, "ResourceId")
        if len(ids) > max_ids:
            raise error("ResourceId")
        tags = _flat_records(params, "Tag")
        if len(tags) > 20:
            raise error("Tag")
        for tag in tags:
            key, value = tag.get("Key", ""), tag.get("Value", "")
            if not 1 <= len(key) <= 64 or len(value) > 128:
                raise error("Tag.Key" if not 1 <= len(key) <= 64 else "Tag.Value")
            if key.startswith(("aliyun", "acs:")) or "http://" in key or "https://" in key:
                raise error("Tag.Key")
        return kind, ids, tags

    def _tag(
        self, version: str, params: Params, kinds: tuple[str, ...], error: Callable[[str], ApiError]
    ) -> None:
        kind, ids, tags = self._tag_request(
            params, version, kinds, 20 if version == CLB_VERSION else 50, error
        )
        if not ids:
            raise _missing("ResourceId") if version == CLB_VERSION else _nlb_missing("ResourceId")
        if not tags:
            raise _missing("Tag") if version == CLB_VERSION else _nlb_missing("Tag")
        # tagging checks the resources exist; listing does not (an unknown id has no rows)
        for resource_id in ids:
            if not self._tagged(version, kind, resource_id):
                raise ApiError(
                    404, "ResourceNotFound", f"The specified resource {resource_id} of {kind} is not found."
                )
        for resource_id in ids:
            have = self._tags.setdefault((version, kind, resource_id), {})
            merged = {**have, **{t["Key"]: t.get("Value", "") for t in tags}}
            if len(merged) > 20:  # "You can add at most 20 tags to each instance."
                raise ApiError(400, "QuotaExceeded.TagNum", "The number of tags exceeds the limit.")
            have.update(merged)

    def _tag_rows(
        self, version: str, params: Params, kinds: tuple[str, ...], error: Callable[[str], ApiError]
    ) -> list[Answer]:
        """ListTagResources' rows: one per (resource, tag) of the resources asked for by id and/or
        carrying every Tag.N asked for (a Tag.N without Value: any value of that key)."""
        kind, ids, tags = self._tag_request(
            params, version, kinds, 20 if version == CLB_VERSION else 50, error
        )
        if not ids and not tags:
            raise _missing("ResourceId") if version == CLB_VERSION else _nlb_missing("ResourceId")
        rows: list[Answer] = []
        for (v, k, resource_id), have in self._tags.items():
            if v != version or k != kind or (ids and resource_id not in ids):
                continue
            if any(t["Key"] not in have or ("Value" in t and have[t["Key"]] != t["Value"]) for t in tags):
                continue
            rows += [
                {"ResourceId": resource_id, "ResourceType": kind, "TagKey": key, "TagValue": value}
                for key, value in sorted(have.items())
            ]
        return rows

    CLB_TAGGABLE = ("instance", "certificate", "acl", "listener", "vservergroup", "masterslaveservergroup")
    NLB_TAGGABLE = ("loadbalancer", "securitypolicy", "servergroup", "listener")

    def _clb_tag_resources(self, params: Params) -> Answer:
        self._tag(CLB_VERSION, params, self.CLB_TAGGABLE, _invalid)
        return {}

    def _clb_list_tag_resources(self, params: Params) -> Answer:
        """CLB pages by NextToken alone (no page size), 50 rows a page, rows under ``TagResource``."""
        rows = self._tag_rows(CLB_VERSION, params, self.CLB_TAGGABLE, _invalid)
        page, meta = self._page({**params, "MaxResults": "50"}, rows)
        return {
            "TagResources": {"TagResource": page},
            **({"NextToken": meta["NextToken"]} if "NextToken" in meta else {}),
        }

    def _nlb_tag_resources(self, params: Params) -> Answer:
        self._tag(NLB_VERSION, params, self.NLB_TAGGABLE, _nlb_illegal)
        return {}

    def _nlb_list_tag_resources(self, params: Params) -> Answer:
        rows = self._tag_rows(NLB_VERSION, params, self.NLB_TAGGABLE, _nlb_illegal)
        page, meta = self._page(params, rows)
        return {"TagResources": page, **meta}

    # -- ECS --------------------------------------------------------------------------------------
    def _describe_network_interfaces(self, params: Params) -> Answer:
        ips = list(dict.fromkeys(_flat_list(params, "PrivateIpAddress")))
        if len(ips) > ECS_IP_BATCH:
            raise _invalid("PrivateIpAddress")
        sets = [
            {
                "NetworkInterfaceId": eni_for(ip),
                "PrivateIpAddress": ip,
                "Type": "Secondary",
                "Status": "InUse",
                "ZoneId": f"{self.region}-a",
                "VpcId": "vpc-podgatedouble",
                "PrivateIpSets": {"PrivateIpSet": [{"PrivateIpAddress": ip, "Primary": True}]},
            }
            for ip in ips
            if ip not in self.script.without_eni and self.script.eni_networking
        ]
        return {
            "TotalCount": len(sets),
            "PageNumber": 1,
            "PageSize": max(len(sets), 10),
            "NetworkInterfaceSets": {"NetworkInterfaceSet": sets},
        }
