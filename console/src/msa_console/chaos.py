"""The console's chaos buttons, the same faults as `msa chaos`: HTTP faults and crashes through each instance's
admin API (with the admin token the console holds), the broker link through the fault proxy (Toxiproxy in
compose). Each action answers what it did, in words a learner reads beside the button."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import httpx
from fastapi import HTTPException
from pydantic import BaseModel, Field, model_validator

from msa_faultproxy.client import FaultProxyClient, FaultProxyError

from .collector import Collector

BROKER_LINK = "rabbitmq"  # the fault proxy's name for the link between the services and RabbitMQ


class Target(BaseModel):
    """One instance (`catalog-2`) or every instance of a service (`catalog`)."""

    instance: str | None = Field(None, min_length=1, max_length=100)
    service: str | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one(self) -> Target:
        if (self.instance is None) == (self.service is None):
            raise ValueError("name exactly one of `instance` or `service`")
        return self


class Crash(BaseModel):
    instance: str = Field(min_length=1, max_length=100)


class Latency(Target):
    ms: int = Field(ge=1, le=30_000)
    probability: float = Field(1.0, ge=0, le=1)


class Errors(Target):
    status: int = Field(500, ge=500, le=599)
    probability: float = Field(1.0, ge=0, le=1)


class Broker(BaseModel):
    action: Literal["cut", "restore"]


class Chaos:
    def __init__(self, collector: Collector, http: httpx.AsyncClient, admin_token: Callable[[], str],
                 faultproxy_url: str) -> None:
        self.collector, self.http, self.admin_token, self.faultproxy_url = collector, http, admin_token, faultproxy_url

    async def _instances(self, target: Target | Crash) -> list[dict[str, Any]]:
        snapshot = await self.collector.current()
        wanted_service = getattr(target, "service", None)
        found = [i for s in snapshot.get("services", []) for i in s["instances"]
                 if (i["id"] == target.instance) or (s["name"] == wanted_service)]
        if not found:
            name = target.instance or wanted_service
            raise HTTPException(404, f"no registered instance or service {name!r}")
        return found

    async def _admin(self, method: str, instance: dict[str, Any], path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token()}"}
        try:
            r = await self.http.request(method, instance["url"] + path, headers=headers, timeout=3, **kwargs)
        except httpx.HTTPError as exc:
            raise HTTPException(502, f"{instance['id']} is not answering ({type(exc).__name__})") from None
        if r.status_code >= 400 and r.status_code != 404:
            raise HTTPException(502, f"{instance['id']} refused: {r.status_code} {r.text[:200]}")
        return r

    async def crash(self, body: Crash) -> list[str]:
        (instance,) = await self._instances(body)
        await self._admin("POST", instance, "/admin/crash")
        self.collector.watch_closely(instance["id"])
        return [f"{instance['id']}: crashing; its supervisor restarts it (watch it go critical and come back)"]

    async def fault(self, target: Target, fault: dict[str, Any], what: str) -> list[str]:
        did = []
        for instance in await self._instances(target):
            r = await self._admin("POST", instance, "/admin/faults", json={**fault, "instance": instance["id"]})
            if r.status_code == 404:
                did.append(f"{instance['id']}: has no fault API")
                continue
            did.append(f"{instance['id']}: {what} (fault {r.json()['id']})")
        self.collector.look_again()
        return did

    async def latency(self, body: Latency) -> list[str]:
        return await self.fault(body, {"kind": "latency", "latency_ms": body.ms, "probability": body.probability},
                                f"+{body.ms} ms on every request" + _share(body.probability))

    async def errors(self, body: Errors) -> list[str]:
        return await self.fault(body, {"kind": "error", "status": body.status, "probability": body.probability},
                                f"answers {body.status}" + _share(body.probability))

    async def broker(self, body: Broker) -> list[str]:
        try:
            async with FaultProxyClient(self.faultproxy_url) as proxy:
                if body.action == "cut":
                    await proxy.disable(BROKER_LINK)
                    did = ["broker link cut: services lose RabbitMQ; orders still land in their outboxes"]
                else:
                    await proxy.enable(BROKER_LINK)
                    did = ["broker link restored: the outboxes drain"]
        except (FaultProxyError, httpx.HTTPError) as exc:
            raise HTTPException(502, f"the fault proxy at {self.faultproxy_url} refused: {exc}") from None
        self.collector.look_again()
        return did

    async def broker_link(self) -> dict[str, Any]:
        """For the snapshot: `up`, `cut` or `unknown`, and the toxics on the link."""
        try:
            async with FaultProxyClient(self.faultproxy_url, timeout=1) as proxy:
                link = await proxy.proxy(BROKER_LINK)
        except (FaultProxyError, httpx.HTTPError, TypeError):
            return {"link": "unknown", "toxics": []}
        return {"link": "up" if link.get("enabled") else "cut",
                "toxics": [f"{t['type']} {t.get('attributes', {})} ({t.get('stream', '')})"
                           for t in link.get("toxics", [])]}

    async def heal(self) -> list[str]:
        did = []
        snapshot = await self.collector.current()
        for instance in (i for s in snapshot.get("services", []) for i in s["instances"]):
            try:
                r = await self._admin("DELETE", instance, "/admin/faults")
            except HTTPException as exc:
                did.append(str(exc.detail))
                continue
            if r.status_code == 200 and r.json().get("healed"):
                did.append(f"{instance['id']}: {r.json()['healed']} fault(s) removed")
        try:
            async with FaultProxyClient(self.faultproxy_url) as proxy:
                await proxy.reset()
            did.append("broker link restored, its toxics removed")
        except (FaultProxyError, httpx.HTTPError) as exc:
            did.append(f"the fault proxy did not answer: {exc}")
        self.collector.look_again()
        return did or ["nothing to heal"]


def _share(probability: float) -> str:
    return "" if probability >= 1 else f" ({probability:.0%} of requests)"
