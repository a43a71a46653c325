"""What the three mock agents share: the arm's world (emitter, request builder, random draws,
clock, population), replica assignment, omitted types, egress rows and deployment changes.

An agent turns one clinical context (an encounter to document, a CDS query, a claim) into a
burst of requests recorded in the emitter; it never makes a SimPy event per request.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

from paritybed.agents.emit import ALLOW, Emitter
from paritybed.agents.requests import Requests
from paritybed.core.clock import Clock
from paritybed.core.draws import Draws
from paritybed.core.units import HOUR_NS
from paritybed.fhir.population import Population
from paritybed.scenarios import ResolvedArm, Scenario


#: What the EHR side asks for when it opens a launch context: a shift and its handover.  The
#: policy's ``context.max_duration_s`` caps it; the work itself closes the context long before.
CONTEXT_REQUEST_NS = 12 * HOUR_NS


@dataclass
class World:
    """Everything an arm's agents and event processes share."""

    scenario: Scenario
    arm: ResolvedArm
    population: Population
    em: Emitter
    req: Requests
    draws: Draws
    clock: Clock
    start: dt.datetime

    def __post_init__(self) -> None:
        self._registry = {e.address: e for e in self.scenario.baa_registry.endpoints}
        self._names = {e.name: e.address for e in self.scenario.baa_registry.endpoints}
        # [from, to) of the active BAA covering each address (enforcer.registry semantics).
        self._windows = {a: e.window_ns(self.start) for a, e in self._registry.items() if e.status == "active"}

    def covered_throughout(self, address: str) -> bool:
        """An active BAA covers the address for the whole arm."""
        w = self._windows.get(address)
        return w is not None and w[0] <= 0 and self.arm.duration_ns + 10**13 <= w[1]

    def address_of(self, endpoint: str) -> str:
        return self._names[endpoint]

    def egress_tag(self, address: str, t_ns: int, label: str = "") -> int:
        """Ground truth of a connect: allowed clinical work if an active BAA covers the address
        at t (an endpoint outside the registry, or without an active BAA, must be denied)."""
        w = self._windows.get(address)
        if w is not None and w[0] <= t_ns < w[1]:
            return ALLOW if not label else self.em.tag("allow", label)
        return self.em.tag("deny", label)


class AgentRuntime:
    """One fleet agent in one arm (the scenario's ``agents:`` entry, with its replicas)."""

    agent_class = ""

    def __init__(self, spec, world: World) -> None:  # spec: ScribeAgent | CdsAgent | PriorAuthAgent
        self.spec = spec
        self.w = world
        self.em = world.em
        self.req = world.req
        self.d = world.draws
        self.name: str = spec.name
        self.replicas: int = spec.replicas
        self.omitted = frozenset(t for a, t in world.arm.omit if a == spec.name)
        self._rr = 0
        self._endpoints = [(e, world.address_of(e)) for e in spec.egress]
        self._egress_cache: dict[int, tuple[tuple[int, str], ...]] = {}
        # When every endpoint is covered for the whole run, a unit's connects are always plain
        # clinical work: cache them per call count as a tuple to append to the read burst.
        self._always_covered = all(world.covered_throughout(a) for _, a in self._endpoints)
        self._tails: dict[int, tuple[int, ...]] = {}
        # Launch contexts: the EHR side opens one per piece of work (docs/enforcement.md)
        self.launches: bool = spec.launch_contexts
        self._open_req = self.em.request(kind="context_open")
        self._close_req = self.em.request(kind="context_close")
        self._launch_n = 0
        self.last_launch: dict[int, str] = {}  # replica -> the launch context it was given last
        # Deployment changes (a hotfix adding an endpoint): (from ns, request index, share, label)
        self.changes = [
            (world.clock.at_day(c.at.day, c.at.time), self.req.egress(c.add_egress.name, c.add_egress.address, 1),
             c.add_egress.share, c.add_egress.address, f"hotfix:{c.name}")
            for c in world.arm.changes if c.agent == spec.name
        ]

    def replica(self) -> int:
        """Round-robin over the replicas (a load balancer in front of the agent)."""
        r = self._rr
        self._rr = (r + 1) % self.replicas
        return r

    def keep(self, reqs: Sequence[int]) -> tuple[int, ...]:
        """`reqs` without the types this arm omits for the agent (a staging gap)."""
        if not self.omitted:
            return tuple(reqs)
        return tuple(i for i in reqs if self.em.request_type(i) not in self.omitted)

    def context(self, replica: int, context_id: str, kind: str, patient_id: str, workflow: str) -> int:
        return self.em.context(self.name, self.agent_class, replica, context_id, kind, patient_id, workflow)

    def launch(self, t_ns: int, replica: int, context_id: str, kind: str, patient_id: str, workflow: str,
               encounter_id: str = "") -> int:
        """The clinical context of one piece of work starting at ``t_ns``.  The EHR side opens a
        launch context for it on the replica (a ``context_open`` row: id, patient, encounter,
        requested duration), and every request of the work presents it (``X-Launch-Context``);
        ``finish`` closes it.  An agent whose EHR integration gives it no launch contexts
        (``launch_contexts: false``) gets the bare clinical context."""
        em = self.em
        if not self.launches:
            return em.context(self.name, self.agent_class, replica, context_id, kind, patient_id, workflow)
        self._launch_n += 1
        lc = f"{self.name}-lc{self._launch_n:07d}"
        opened = em.context(self.name, self.agent_class, replica, context_id, kind, patient_id, workflow,
                            duration_ns=CONTEXT_REQUEST_NS, launch_context=lc, encounter_id=encounter_id)
        em.burst(t_ns, opened, (self._open_req,))
        self.last_launch[replica] = lc
        return em.context(self.name, self.agent_class, replica, context_id, kind, patient_id, workflow,
                          launch_context=lc, encounter_id=encounter_id)

    def finish(self, t_ns: int, ctx: int) -> None:
        """The work of ``ctx`` ended at ``t_ns`` (note signed, recommendation filed, claim
        decided): the EHR side closes its launch context, after the work's last request."""
        if self.launches:
            self.em.tail(t_ns, ctx, ctx, self._close_req)

    def egress_requests(self, calls: int) -> tuple[tuple[int, str], ...]:
        """(request index, address) of one connect per endpoint the agent calls."""
        got = self._egress_cache.get(calls)
        if got is None:
            got = self._egress_cache[calls] = tuple(
                (self.req.egress(name, address, calls), address) for name, address in self._endpoints)
        return got

    def burst_with_egress(self, t_ns: int, ctx: int, reqs: tuple[int, ...], calls: int) -> None:
        """A read burst followed by the agent's connects (its ``egress:`` list, each carrying
        `calls` HTTP calls), then the connects a deployment change added (a share of the units
        of work).  A connect the BAA registry does not cover becomes a burst of its own, tagged
        with its expected outcome."""
        if self._always_covered and not self.changes:
            tail_t = self._tails.get(calls)
            if tail_t is None:
                tail_t = self._tails[calls] = tuple(r for r, _ in self.egress_requests(calls))
            self.em.burst(t_ns, ctx, reqs + tail_t)
            return
        tail: list[int] = []
        t_egress = t_ns + len(reqs) * 10_000_000
        for req, address in self.egress_requests(calls):
            tag = self.w.egress_tag(address, t_egress)
            if tag == ALLOW:
                tail.append(req)
            else:
                self.em.burst(t_egress, ctx, (req,), tag)
        self.em.burst(t_ns, ctx, reqs + tuple(tail) if tail else reqs)
        for since, req, share, address, label in self.changes:
            if t_ns >= since and self.d.chance(share):
                self.em.burst(t_egress + 1_000_000, ctx, (req,), self.w.egress_tag(address, t_ns, label))

    # -- break-glass: the agent's ordinary requests for a patient it reaches under a lane
    def lane_normal(self, patient_id: str, encounter_id: str | None) -> tuple[int, ...]:
        raise NotImplementedError
