"""A scripted front for moto's ELBv2 server: the real SDK over real HTTP, with the health states
moto does not model.

moto (5.x, server mode) reports every registered IP target ``healthy`` at once and removes a
deregistered one at once: no ``initial``, ``unhealthy`` or ``draining`` and no throttling.  This
proxy forwards every request to moto unchanged and rewrites only what the script says:
``DescribeTargetHealth`` answers (a target ``initial`` for its first N polls, or ``unhealthy``)
and throttling errors in ELB's own XML error format.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

NS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"


@dataclass
class Script:
    initial_polls: dict[str, int] = field(default_factory=dict)  # "ip:port" → polls still initial
    default_initial_polls: int = 0  # for targets the script has not seen yet
    new_targets_unhealthy: bool = False  # targets first seen from now on fail their checks
    seen: set[str] = field(default_factory=set)
    unhealthy: set[str] = field(default_factory=set)
    throttle_next: int = 0
    throttled: int = 0
    polls: int = 0
    #: when (monotonic) each request not throttled came in: how soon a client asked again
    answered: list[float] = field(default_factory=list)


class ElbDouble:
    def __init__(self, moto_url: str) -> None:
        self.moto_url, self.script = moto_url, Script()
        self.runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        action = (parse_qs(body.decode()).get("Action") or [""])[0]
        if self.script.throttle_next > 0:
            self.script.throttle_next -= 1
            self.script.throttled += 1
            xml = (
                f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>Throttling</Code>'
                "<Message>Rate exceeded</Message></Error><RequestId>double</RequestId></ErrorResponse>"
            )
            return web.Response(status=400, text=xml, content_type="text/xml")
        self.script.answered.append(time.monotonic())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession() as s,
            s.request(request.method, self.moto_url + request.path_qs, data=body, headers=headers) as resp,
        ):
            text = await resp.text()
            status = resp.status
        if action == "DescribeTargetHealth" and status == 200:
            text = self._rewrite(text)
        return web.Response(status=status, text=text, content_type="text/xml")

    def _rewrite(self, text: str) -> str:
        self.script.polls += 1
        ET.register_namespace("", NS)
        root = ET.fromstring(text)
        for member in root.iter(f"{{{NS}}}member"):
            target, health = member.find(f"{{{NS}}}Target"), member.find(f"{{{NS}}}TargetHealth")
            if target is None or health is None:
                continue
            key = f"{target.findtext(f'{{{NS}}}Id')}:{target.findtext(f'{{{NS}}}Port')}"
            if key not in self.script.seen:
                self.script.seen.add(key)
                if self.script.new_targets_unhealthy:
                    self.script.unhealthy.add(key)
            remaining = self.script.initial_polls.setdefault(key, self.script.default_initial_polls)
            if remaining > 0:
                self.script.initial_polls[key] = remaining - 1
                self._set(health, "initial", "Elb.InitialHealthChecking", "Initial health checks in progress")
            elif key in self.script.unhealthy:
                self._set(
                    health,
                    "unhealthy",
                    "Target.ResponseCodeMismatch",
                    "Health checks failed with these codes: [503]",
                )
        return ET.tostring(root, encoding="unicode")

    @staticmethod
    def _set(health: ET.Element, state: str, reason: str, description: str) -> None:
        for child in list(health):
            health.remove(child)
        for tag, value in (("State", state), ("Reason", reason), ("Description", description)):
            ET.SubElement(health, f"{{{NS}}}{tag}").text = value
