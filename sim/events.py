"""Break-glass activations and injected attacks: their own SimPy processes in the hospital.

**Break-glass.**  Each class of the scenario (code_blue, rapid_response, ed_triage) activates as
a Poisson process at its ``per_day`` rate (flat by hour unless ``hourly`` is given: in-hospital
arrests are about flat by hour, JAMA 2008).  An activation picks an on-call clinician (a real
Practitioner of the population) and a patient outside that clinician's usual panel; for every
agent the class names it writes a ``lane_open`` row (claim id, identity ``<Practitioner id>|
<role>``, requested duration), then that agent's requests under the lane during ``active_min``:
the lane's extra pairs mixed with the agent's ordinary ones, all presenting the claim.  With
probability ``late_access_share`` the agent makes one more lane access *after* the lane expired
(expected deny, label ``lane-expiry-probe``).  Arm modes: ``as_production`` (the Poisson
process), ``drill`` (exactly ``drill_per_class`` activations per class spread over the run, the
first with a post-expiry probe: what a good staging arm does), ``off``.

**Attacks** (production arm by default): from ``at``, ``repeats`` bursts of ``count`` requests
(or connects) spread over ``over_min``: ``egress`` connects to an address outside the BAA
registry, ``bulk_read`` sweeps a type across the population, ``out_of_scope`` reads a type the
agent was not provisioned for.  All expected deny, label ``attack:<name>``.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import simpy

from paritybed.agents.base import AgentRuntime, World
from paritybed.core.clock import Clock
from paritybed.core.draws import Draws
from paritybed.core.units import NS_PER_MIN, NS_PER_S, ns_min
from paritybed.fhir.population import Population
from paritybed.scenarios import ResolvedArm, Scenario
from paritybed.scenarios.events import Attack, BreakGlassClass
from paritybed.sim.arrivals import nhpp
from paritybed.sim.pools import Panels

LANE_CHUNK = 4  # requests per burst under a lane
ATTACK_CHUNK = 10  # requests per burst of an attack


class Ward(Protocol):
    """What these processes use of the hospital model (sim/hospital.py ``Hospital``)."""

    sc: Scenario
    arm: ResolvedArm
    env: simpy.Environment
    clock: Clock
    events_rng: np.random.Generator
    vf: float  # the arm's volume factor
    w: World
    d: Draws
    panels: Panels
    agents: dict[str, AgentRuntime]
    pop: Population


def start(h: Ward) -> None:
    """Start the break-glass and attack processes of the hospital's arm."""
    arm = h.arm
    if arm.break_glass != "off":
        for k, cls in enumerate(h.sc.break_glass):
            times, probes = _activation_times(h, k, cls)
            h.env.process(_activations(h, cls, times, probes))
    if arm.attacks:
        for a in h.sc.attacks:
            h.env.process(_attack(h, a))


def _activation_times(h: Ward, k: int, cls: BreakGlassClass) -> tuple[np.ndarray, list[bool]]:
    """Activation times and whether each forces a post-expiry probe."""
    if h.arm.break_glass == "drill":
        n = h.arm.drill_per_class
        # Spread the drills over the run, leaving room for the lane and its probe at the end,
        # and offset the classes so their drills do not coincide.
        room = max(1, h.arm.duration_ns - ns_min(cls.duration_min + 45))
        t = np.array([int(room * (i + 0.5) / n) + (k * 37 * NS_PER_MIN) % room for i in range(n)], dtype=np.int64) % room
        t.sort()
        return t, [i == 0 for i in range(n)]
    times = nhpp(h.events_rng, h.clock, cls.per_day * h.vf, cls.hourly, None, False)
    return times, [False] * len(times)


def _activations(h: Ward, cls: BreakGlassClass, times: np.ndarray, probes: list[bool]) -> Iterator[simpy.Event]:
    env = h.env
    for k, (t, forced) in enumerate(zip(times.tolist(), probes)):
        yield env.timeout(t - env.now)
        activate(h, cls, k, forced)


def _lane_requests(agent: AgentRuntime, cls: BreakGlassClass, pid: str, declared: set[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(all lane-pair requests, those outside the agent's declared scope) for a patient."""
    pop, req = agent.w.population, agent.req
    allr, extra = [], []
    for entry in cls.lane:
        ids = pop.ids(pid, entry.type)
        for inter in entry.interactions:
            kept = agent.keep((req.interaction(entry.type, inter, pid, ids),))
            allr += kept
            if (entry.type, inter) not in declared:
                extra += kept
    return allr, extra


def activate(h: Ward, cls: BreakGlassClass, k: int, force_probe: bool = False) -> None:
    """One activation of a break-glass class at the current simulated time (module doc)."""
    em, d, t = h.w.em, h.d, h.env.now
    clinician = h.panels.clinicians[d.below(len(h.panels.clinicians))] if h.panels.clinicians else "unknown"
    pid = h.panels.outside(clinician, d)
    eid = h.panels.latest_encounter(pid)
    claim = f"bg-{h.arm.name}-{cls.name}-{k:04d}"
    identity = f"{clinician}|{cls.identity_role()}"
    duration, active = ns_min(cls.duration_min), ns_min(cls.active_min)
    open_req = em.request(kind="lane_open")
    probe_tag = em.tag("deny", "lane-expiry-probe")
    probe = force_probe or d.chance(cls.late_access_share)
    for name in cls.agents:
        agent = h.agents[name]
        r = agent.replica()
        em.burst(t, em.context(name, agent.agent_class, r, claim, "lane", pid, "break_glass", lane=cls.name,
                               claim_id=claim, identity=identity, duration_ns=duration), (open_req,))
        ctx = em.context(name, agent.agent_class, r, claim, "lane", pid, "break_glass", lane=cls.name, claim_id=claim)
        declared = {(s.type, i) for s in agent.spec.scope for i in s.interactions}
        lane, extra = _lane_requests(agent, cls, pid, declared)
        normal = list(agent.lane_normal(pid, eid))
        mix = _interleave(lane, normal)
        if mix:
            rows = [mix[i % len(mix)] for i in range(cls.requests)]
            chunks = [rows[i:i + LANE_CHUNK] for i in range(0, len(rows), LANE_CHUNK)]
            # Work starts a moment after the activation and ends well inside active_min.
            span = max(1, int(active * 0.9) - NS_PER_S)
            starts = sorted(NS_PER_S + int(d.u() * span) for _ in chunks)
            for off, chunk in zip(starts, chunks):
                em.burst(t + off, ctx, tuple(chunk))
        target = extra or lane
        if probe and target:
            late = t + duration + ns_min(1 + 29 * d.u())
            if late < h.arm.duration_ns:
                em.burst(late, ctx, (target[d.below(len(target))],), probe_tag)


def _interleave(a: list[int], b: list[int]) -> list[int]:
    out = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            out.append(a[i])
        if i < len(b):
            out.append(b[i])
    return out


def _attack(h: Ward, a: Attack) -> Iterator[simpy.Event]:
    env, em = h.env, h.w.em
    agent = h.agents[a.agent]
    t0 = h.clock.at_day(a.at.day, a.at.time)
    every = ns_min(a.repeat_every_min) if a.repeat_every_min else 0
    tag = em.tag("deny", f"attack:{a.name}")
    patients = h.panels.patients
    for rep in range(a.repeats):
        t = t0 + rep * every
        if t >= h.arm.duration_ns or (rep and not every):
            return
        yield env.timeout(t - env.now)
        # A compromised replica presents the launch context it was given last (the strongest
        # claim it holds): only that context's patient is in context for it.
        ctx = em.context(agent.name, agent.agent_class, a.replica, f"attack:{a.name}:{rep}", "attack", "", "attack",
                         launch_context=agent.last_launch.get(a.replica, ""))
        reqs = _attack_requests(h, agent, a, patients, rep)
        chunks = [reqs[i:i + ATTACK_CHUNK] for i in range(0, len(reqs), ATTACK_CHUNK)]
        span = ns_min(a.over_min)
        for i, chunk in enumerate(chunks):
            em.burst(t + span * i // max(1, len(chunks)), ctx, tuple(chunk), tag)


def _attack_requests(h: Ward, agent: AgentRuntime, a: Attack, patients: list[str], rep: int) -> list[int]:
    req, pop, d = agent.req, h.pop, h.d
    if a.kind == "egress":
        return [req.egress(a.endpoint or "unregistered", a.address or "", 1)] * a.count
    out = []
    for i in range(a.count):
        if a.kind == "bulk_read":  # a sweep: every patient in turn, as fast as it goes
            pid = patients[(rep * a.count + i) % len(patients)]
        else:
            pid = patients[d.below(len(patients))]
        out.append(req.interaction(a.type or "Patient", a.interaction, pid, pop.ids(pid, a.type or "Patient")))
    return out
