"""The Kubernetes seam: what podgate asks of the API server, as one Protocol.

Callers name a :class:`Resource` (group, version, plural, namespaced) instead of a generated
method, send and get plain JSON dicts, and catch typed errors instead of HTTP statuses.  Two
implementations: :class:`podgate.kube.client.ApiKube` over kubernetes_asyncio's ApiClient, and
:class:`podgate.kube.fake.FakeKube`, in memory, for table tests of the reconcilers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol, TypedDict

#: a JSON object as the API server sends it; the typed bodies are in ``podgate.model.types``
Obj = dict[str, Any]
WatchEventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
#: a strategic-merge or merge patch (an object), or a JSON patch (a list of operations)
PatchBody = Mapping[str, Any] | list[Any]


@dataclass(frozen=True)
class Resource:
    """One API resource, enough to build its URL: ``group`` is "" for the core API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The URL path; without a namespace, a namespaced resource's path spans all of them."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
EVENTS = Resource("", "v1", "events", "Event")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
SECRETS = Resource("", "v1", "secrets", "Secret")
MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
)
VALIDATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    False,
)


class PatchType(StrEnum):
    """How the API server merges a PATCH body; the value is its Content-Type."""

    #: lists merge by their key (conditions by ``type``, finalizers item by item): other
    #: writers' items are never dropped
    STRATEGIC = "application/strategic-merge-patch+json"
    #: RFC 7386: a list is replaced whole, ``null`` deletes a key
    MERGE = "application/merge-patch+json"
    #: RFC 6902 operations
    JSON = "application/json-patch+json"


class ListPage(TypedDict):
    """One page of a list: its items, the list's resourceVersion, the token of the next page."""

    items: list[Obj]
    resourceVersion: str
    #: "" on the last page
    continue_: str


class WatchEvent(TypedDict):
    type: WatchEventType
    object: Obj


#: seconds every API request may take before the client gives up on it (client-go's default
#: timeout for a request is none, but its leader election and informers each bound theirs)
REQUEST_TIMEOUT = 30.0
#: seconds a client waits for a watch beyond its ``timeoutSeconds`` before calling it dead: a
#: half-open connection otherwise leaves a cache stale for ever
WATCH_GRACE = 10.0


class KubeError(Exception):
    """A non-2xx answer: its HTTP status and the server's own message (from its Status body)."""

    status: int = 0

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message, self.reason = message, reason

    def __str__(self) -> str:
        head = f"{self.status} {self.reason}" if self.reason else str(self.status)
        return f"{head}: {self.message}"


class NotFound(KubeError):
    status = 404


class Conflict(KubeError):
    """409: a stale resourceVersion or UID precondition, or the object already exists."""

    status = 409


class Gone(KubeError):
    """410: a watch's resourceVersion (or a list's continue token) fell out of etcd's window;
    only a fresh list recovers."""

    status = 410


class Invalid(KubeError):
    """422: the server refused the body (validation, an immutable field)."""

    status = 422


_BY_STATUS: dict[int, type[KubeError]] = {404: NotFound, 409: Conflict, 410: Gone, 422: Invalid}


def error_for(status: int, reason: str = "", body: bytes | str | Mapping[str, Any] = b"") -> KubeError:
    """The typed error of a failed answer, with the message of the server's Status body."""
    message = ""
    status_body: Any = body
    if isinstance(body, bytes | str):
        try:
            status_body = json.loads(body) if body else {}
        except ValueError:
            status_body = {}
            message = body.decode(errors="replace") if isinstance(body, bytes) else body
    if isinstance(status_body, Mapping):
        message = str(status_body.get("message") or message)
        reason = str(status_body.get("reason") or reason)
    return _BY_STATUS.get(status, KubeError)(message or reason, status, reason)


class Kube(Protocol):
    """The API server as podgate uses it.  ``namespace`` is None for cluster-scoped resources
    (and, in :meth:`list` and :meth:`watch`, for all namespaces)."""

    async def version(self) -> Obj:
        """The server's ``/version`` (``major``, ``minor``, ``gitVersion`` …): features such as
        the lifecycle ``sleep`` action are chosen by it."""
        ...

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj: ...

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> ListPage: ...

    def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version``, bookmarks included, until the server closes the
        watch; :class:`Gone` when that version is too old."""
        ...

    async def create(
        self, resource: Resource, body: Mapping[str, Any], namespace: str | None = None
    ) -> Obj: ...

    async def replace(
        self, resource: Resource, name: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> Obj:
        """PUT: fails with :class:`Conflict` when ``body``'s resourceVersion is not the current one."""
        ...

    async def patch(
        self,
        resource: Resource,
        name: str,
        body: PatchBody,
        namespace: str | None = None,
        *,
        patch_type: PatchType,
        subresource: str | None = None,
    ) -> Obj: ...

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> None:
        """Delete, only if the object still has ``uid`` when one is given."""
        ...


async def list_all(
    kube: Kube,
    resource: Resource,
    namespace: str | None = None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    page_size: int = 500,
) -> ListPage:
    """Every page of a list, as one: the pages' items and the last page's resourceVersion
    (client-go's pager; a page of 500 keeps each answer small at thousands of pods)."""
    page = await kube.list(
        resource, namespace, label_selector=label_selector, field_selector=field_selector, limit=page_size
    )
    items = list(page["items"])
    while page["continue_"]:
        page = await kube.list(
            resource,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=page_size,
            continue_=page["continue_"],
        )
        items += page["items"]
    return {**page, "items": items}
