"""The hospital: a SimPy discrete-event model that turns a scenario arm into agent traffic.

What happens, and where the numbers come from (docs/scenarios.md, ../shared/data/hospital-operations.md):

* **ED visits** arrive as a non-homogeneous Poisson stream (UIHC hourly shares, weekday
  factors); each visit is a process: the physician sees the patient (scribe), orders and lab
  results arrive during the ED stay (CDS).
* **Admissions** (mostly noon-midnight) take a bed (a ``simpy.Resource``; a full hospital makes
  them wait) for a log-normal length of stay (mean 4.6 d, median 3.7 d); the discharge is moved
  to the discharge-hour profile (centred on 15:00, ~15% before noon) and thinned at weekends.
  Medication reconciliation happens ~46 min after admission and ~19 min before discharge (CDS
  query + scribe).  The run starts with a steady-state census of beds x occupancy (stays drawn
  from the length-biased LOS, a uniform point of each).
* **Inpatient lab results and orders** arrive hospital-wide at per-inpatient-day rates times
  the current census (thinning against the SimPy bed count), each for a random inpatient (CDS).
* **Rounds** (07:00 + 2 h) visit every inpatient (scribe, orders); **shift handoffs** (07:00,
  19:00) document a share of them (scribe).
* **Outpatient visits** are booked on clinic-session slots (bursts at 08:00 and 13:00).
* **Prior authorization** claims queue up around the clock and are worked in business hours by
  the prior-auth agent's replicas (a ``simpy.Store``), so Monday 08:00 opens with a backlog.
* **Break-glass activations, attacks and deployment changes**: sim/events.py.

Every clinical context is one SimPy event; the requests of a context are emitted as a burst
(agents/emit.py), so the model costs one event per context, not per request.  ``arrivals:
uniform`` spreads every stream evenly over the 24 hours and the 7 days (same volume).
"""

from __future__ import annotations

import gc
import math
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import simpy

from paritybed.agents.base import AgentRuntime, World
from paritybed.agents.cds import Cds
from paritybed.agents.emit import Emitter
from paritybed.agents.prior_auth import PriorAuth
from paritybed.agents.requests import Requests
from paritybed.agents.scribe import Scribe
from paritybed.core.clock import minutes_of_day
from paritybed.core.draws import Draws
from paritybed.core.units import DAY_NS, HOUR_NS, NS_PER_MIN, ns_min
from paritybed.fhir.population import Population
from paritybed.scenarios import ARM_NAMES, ResolvedArm, Scenario
from paritybed.sim import events
from paritybed.sim.arrivals import clinic_times, nhpp, normalised, weekday_multipliers
from paritybed.sim.pools import CHAINS, Panels, Visits, build_pool

#: Independent random streams per arm (adding draws to one does not shift the others).
STREAM_MAIN, STREAM_ARRIVALS, STREAM_GAPS, STREAM_EVENTS, STREAM_PATIENTS = 1, 2, 3, 4, 5
MIN_STAY_NS = 4 * HOUR_NS

Progress = Callable[[int, int], None]


def arm_rng(arm: ResolvedArm, stream: int) -> np.random.Generator:
    """The seeded generator of one stream of one arm: (arm seed, arm, stream), nothing else."""
    return np.random.default_rng(np.random.SeedSequence([arm.seed, ARM_NAMES.index(arm.name), stream]))


class Stay:
    """One inpatient in a bed."""

    __slots__ = ("patient_id", "encounter_id", "slot", "active")

    def __init__(self, patient_id: str, encounter_id: str) -> None:
        self.patient_id = patient_id
        self.encounter_id = encounter_id
        self.slot = -1
        self.active = True


class Hospital:
    """One arm of a scenario as a SimPy model; `run` returns the arm's trace table."""

    def __init__(self, scenario: Scenario, arm: ResolvedArm, population: Population,
                 progress: Progress | None = None) -> None:
        self.sc, self.arm, self.pop = scenario, arm, population
        self.env = simpy.Environment()
        self.clock = scenario.start.clock(arm.duration_ns)
        em = Emitter(arm.name, arm_rng(arm, STREAM_GAPS), scenario.policy.fhir_base)
        self.w = World(scenario, arm, population, em, Requests(em, scenario.policy.fhir_base),
                       Draws(arm_rng(arm, STREAM_MAIN)), self.clock, scenario.start.datetime())
        self.d = self.w.draws
        self.rng = arm_rng(arm, STREAM_ARRIVALS)
        self.events_rng = arm_rng(arm, STREAM_EVENTS)
        self.uniform = arm.arrivals == "uniform"
        self.vf = arm.volume_factor
        self.progress = progress
        kinds = {"ambient_scribe": Scribe, "cds": Cds, "prior_auth": PriorAuth}
        self.agents: dict[str, AgentRuntime] = {
            a.name: kinds[a.agent_class](scenario.agent_in(a.name, arm.agent_settings), self.w) for a in scenario.agents}
        self.scribes = [a for a in self.agents.values() if isinstance(a, Scribe)]
        self.cds = [a for a in self.agents.values() if isinstance(a, Cds)]
        self.prior_auth = [a for a in self.agents.values() if isinstance(a, PriorAuth)]
        self.pools = {n: build_pool(population, n) for n in CHAINS}
        patients_rng = arm_rng(arm, STREAM_PATIENTS)
        self.visits = Visits(self.pools, patients_rng)
        claims = [c for c in population.claims if c.coverage_id] or list(population.claims)
        self.claims = [claims[i] for i in patients_rng.permutation(len(claims)).tolist()]
        self.panels = Panels(population)
        h = scenario.hospital
        self.beds = simpy.Resource(self.env, capacity=h.beds)
        self.inpatients: list[Stay] = []
        sigma = math.sqrt(2 * math.log(h.length_of_stay_days / h.length_of_stay_median_days))
        self.los = (math.log(h.length_of_stay_median_days), sigma)
        self._discharge_cdf = np.cumsum(normalised(scenario.workflows.discharges.hourly))
        self._discharge_weekday = weekday_multipliers(h.weekday_factors.discharges)
        self.stats: dict[str, int] = {"ed_visits": 0, "admissions": 0, "discharges": 0, "outpatient_visits": 0,
                                      "initial_census": 0, "peak_census": 0, "lab_results": 0, "orders": 0,
                                      "rounds_visits": 0, "handoff_notes": 0, "claims_submitted": 0, "claims_worked": 0,
                                      "boarded_admissions": 0, "patients_seen": 0, "reused_patients": 0, "claims_reused": 0}

    # ------------------------------------------------------------------ run
    def run(self) -> pa.Table:
        env, sc, wf = self.env, self.sc, self.sc.workflows
        ro = wf.results_and_orders
        env.process(self._initial_census())
        env.process(self._ed())
        env.process(self._admissions())
        env.process(self._outpatient())
        beds = sc.hospital.beds
        env.process(self._inpatient_stream(ro.lab_results_per_inpatient_day, ro.lab_result_profile.hourly, "result", "lab_result", "lab_results", beds))
        env.process(self._inpatient_stream(ro.orders_per_inpatient_day, ro.order_profile.hourly, "order", "order", "orders", beds))
        env.process(self._rounds())
        for hhmm in wf.shift_handoffs.times:
            env.process(self._handoff(minutes_of_day(hhmm)))
        for agent in self.prior_auth:
            store = simpy.Store(env)
            env.process(self._claims(store))
            for r in range(agent.replicas):
                env.process(self._pa_worker(agent, store, r))
        events.start(self)
        if self.progress is not None:
            env.process(self._ticker())
        env.run(until=self.arm.duration_ns)
        self.stats["patients_seen"] = len(self.visits.seen)
        self.stats["reused_patients"] = self.visits.reused
        return self.w.em.build()

    def _ticker(self) -> Iterator[simpy.Event]:
        step = HOUR_NS
        while True:
            yield self.env.timeout(step)
            self.progress(min(self.env.now, self.arm.duration_ns), self.arm.duration_ns)

    def _at_times(self, times: np.ndarray) -> Iterator[simpy.Event]:
        """Yield a timeout to each of the sorted times in turn."""
        env = self.env
        for t in times.tolist():
            yield env.timeout(t - env.now)

    # ------------------------------------------------------------------ inpatients
    def _add(self, stay: Stay) -> None:
        stay.slot = len(self.inpatients)
        self.inpatients.append(stay)
        self.stats["peak_census"] = max(self.stats["peak_census"], len(self.inpatients))

    def _remove(self, stay: Stay) -> None:
        last = self.inpatients.pop()
        if last is not stay:
            self.inpatients[stay.slot] = last
            last.slot = stay.slot
        stay.active = False

    def _los_ns(self, biased: bool = False) -> int:
        mu, s = self.los
        if biased:  # the length-biased log-normal: what a snapshot of the wards sees
            mu += s * s
        return max(MIN_STAY_NS, int(math.exp(mu + s * self.d.z()) * DAY_NS))

    def _discharge_at(self, earliest: int, target: int) -> int:
        """Move a discharge to the published hour profile (centred on 15:00) and thin weekends."""
        if self.uniform:
            return max(earliest, target)
        shares, wf = self._discharge_cdf, self._discharge_weekday
        m = self.clock.minute_of_day(target)
        midnight = target - int(m * NS_PER_MIN)
        u = self.d.u()
        hour = min(int(np.searchsorted(shares, u, side="right")), 23)
        t = midnight + hour * HOUR_NS + int(self.d.u() * HOUR_NS)
        for _ in range(14):
            if t >= earliest and self.d.u() * wf.max() <= wf[self.clock.weekday(t)]:
                break
            t += DAY_NS
        return t

    def _initial_census(self) -> Iterator[simpy.Event]:
        """The wards at t=0: beds x occupancy patients part-way through their stays."""
        h = self.sc.hospital
        n = min(h.beds, int(round(h.beds * h.occupancy)))
        self.stats["initial_census"] = n
        for _ in range(n):
            enc = self.visits.take("inpatient", self.d)
            los = self._los_ns(biased=True)
            remaining = max(HOUR_NS, int(los * (1 - self.d.u())))
            self.env.process(self._stay(enc.patient_id, enc.id, remaining, fresh=False))
        yield self.env.timeout(0)

    def _admissions(self) -> Iterator[simpy.Event]:
        wf, h = self.sc.workflows, self.sc.hospital
        times = nhpp(self.rng, self.clock, h.admissions_per_day * self.vf, wf.admissions.hourly,
                     h.weekday_factors.admissions, self.uniform)
        for _ in self._at_times(times):
            yield _
            enc = self.visits.take("inpatient", self.d)
            self.stats["admissions"] += 1
            self.env.process(self._stay(enc.patient_id, enc.id, self._los_ns(), fresh=True))

    def _stay(self, pid: str, eid: str, los_ns: int, fresh: bool) -> Iterator[simpy.Event]:
        env, d, mr = self.env, self.d, self.sc.workflows.med_rec
        arrived = env.now
        with self.beds.request() as bed:
            yield bed
            if env.now > arrived:
                self.stats["boarded_admissions"] += 1
            stay = Stay(pid, eid)
            self._add(stay)
            admit = env.now
            discharge = self._discharge_at(admit + (MIN_STAY_NS if fresh else 0), admit + los_ns)
            plan: list[tuple[int, int, str]] = []  # (time, order, what)
            if fresh:
                plan.append((admit + ns_min(10 + 50 * d.u()), 0, "admission_note"))
                if mr.at_admission:
                    plan.append((admit + ns_min(mr.admission_delay_min), 1, "med_rec_admission"))
            if mr.at_discharge:
                plan.append((max(admit, discharge - ns_min(mr.discharge_lead_min)), 2, "med_rec_discharge"))
            plan.sort()
            for t, _, what in plan:
                if t > env.now:
                    yield env.timeout(t - env.now)
                if what == "admission_note":
                    self._scribe_note(env.now, pid, eid, "admission")
                else:
                    for c in self.cds:
                        c.query(env.now, pid, what, "order")
                    self._scribe_note(env.now, pid, eid, what, kind="med_rec")
            if discharge > env.now:
                yield env.timeout(discharge - env.now)
            self._scribe_note(env.now, pid, eid, "discharge")
            self.stats["discharges"] += 1
            self._remove(stay)

    def _scribe_note(self, t: int, pid: str, eid: str, workflow: str, kind: str = "note", share: float | None = None) -> None:
        for s in self.scribes:
            if self.d.chance(s.usage if share is None else share):
                s.document(t, pid, eid, workflow, kind)

    def _inpatient_stream(self, per_day: float, hourly: list[float], trigger: str, workflow: str, stat: str,
                          beds: int) -> Iterator[simpy.Event]:
        """Results/orders at a per-inpatient-day rate x the current census: candidates at the
        full-hospital rate, each kept with probability census/beds (exact thinning)."""
        times = nhpp(self.rng, self.clock, per_day * beds * self.vf, hourly, None, self.uniform)
        d, env, inpatients, cds = self.d, self.env, self.inpatients, self.cds
        for t in times.tolist():
            yield env.timeout(t - env.now)
            n = len(inpatients)
            if n == 0 or d.u() * beds >= n:
                continue
            stay = inpatients[d.below(n)]
            for c in cds:
                c.query(t, stay.patient_id, workflow, trigger)
            self.stats[stat] += 1

    def _rounds(self) -> Iterator[simpy.Event]:
        """Every morning each inpatient is seen once during the rounds window (uniform: once at
        a random time of the day)."""
        r = self.sc.workflows.rounds
        start, window = (0, DAY_NS) if self.uniform else (minutes_of_day(r.start), ns_min(r.duration_min))
        d = self.d
        for day_t in self.clock.daily(start):
            yield self.env.timeout(day_t - self.env.now)
            visits = sorted(((day_t + int(d.u() * window), i) for i in range(len(self.inpatients))))
            stays = list(self.inpatients)
            for t, i in visits:
                if t >= self.arm.duration_ns:
                    break
                yield self.env.timeout(t - self.env.now)
                stay = stays[i]
                if not stay.active:
                    continue
                self.stats["rounds_visits"] += 1
                self._scribe_note(t, stay.patient_id, stay.encounter_id, "rounds", share=r.scribe_share)
                for _ in range(d.poisson(r.orders_per_patient)):
                    for c in self.cds:
                        c.query(t + int(d.u() * 30 * NS_PER_MIN), stay.patient_id, "rounds", "order")

    def _handoff(self, minute: int) -> Iterator[simpy.Event]:
        """At a shift change the oncoming team hears about a share of the inpatients (scribe)."""
        hs = self.sc.workflows.shift_handoffs
        window = DAY_NS if self.uniform else ns_min(hs.window_min)
        d = self.d
        for day_t in self.clock.daily(0 if self.uniform else minute):
            yield self.env.timeout(day_t - self.env.now)
            chosen = [s for s in self.inpatients if d.chance(hs.scribe_share)]
            visits = sorted(((day_t + int(d.u() * window), i) for i in range(len(chosen))))
            for t, i in visits:
                if t >= self.arm.duration_ns:
                    break
                yield self.env.timeout(t - self.env.now)
                stay = chosen[i]
                if stay.active:
                    self.stats["handoff_notes"] += 1
                    for s in self.scribes:
                        s.document(t, stay.patient_id, stay.encounter_id, "handoff", "handoff")

    # ------------------------------------------------------------------ ED and clinics
    def _ed(self) -> Iterator[simpy.Event]:
        wf, h = self.sc.workflows, self.sc.hospital
        times = nhpp(self.rng, self.clock, h.ed_visits_per_day * self.vf, wf.ed_arrivals.hourly,
                     h.weekday_factors.ed, self.uniform)
        for _ in self._at_times(times):
            yield _
            self.stats["ed_visits"] += 1
            enc = self.visits.take("ed", self.d)
            self.env.process(self._visit(enc.patient_id, enc.id, "ed_visit"))

    def _outpatient(self) -> Iterator[simpy.Event]:
        h = self.sc.hospital
        times = clinic_times(self.rng, self.clock, h.outpatient_visits_per_day * self.vf, h.clinic_sessions,
                             h.weekday_factors.outpatient, h.clinic_slot_min, self.uniform)
        for _ in self._at_times(times):
            yield _
            self.stats["outpatient_visits"] += 1
            enc = self.visits.take("outpatient", self.d)
            self.env.process(self._visit(enc.patient_id, enc.id, "outpatient"))

    def _visit(self, pid: str, eid: str, workflow: str) -> Iterator[simpy.Event]:
        """One ED or clinic visit: the clinician sees the patient (scribe), places orders during
        the visit and gets results back after the lab's turnaround (CDS on each)."""
        env, d, ro, h = self.env, self.d, self.sc.workflows.results_and_orders, self.sc.hospital
        t0 = env.now
        if workflow == "ed_visit":
            length = min(24 * HOUR_NS, max(30 * NS_PER_MIN, d.exp_ns(h.ed_stay_hours * HOUR_NS)))
            seen, n_orders, n_results = int(d.u() * 0.25 * length), d.poisson(ro.ed_orders_per_visit), d.poisson(ro.ed_lab_results_per_visit)
        else:
            length = 30 * NS_PER_MIN
            seen, n_orders, n_results = int(d.u() * 10 * NS_PER_MIN), d.poisson(ro.outpatient_orders_per_visit), d.poisson(ro.outpatient_lab_results_per_visit)
        turnaround = ro.lab_turnaround_min * NS_PER_MIN
        plan = [(seen, 0, "")]
        plan += [(seen + int(d.u() * (length - seen)), 1, "order") for _ in range(n_orders)]
        plan += [(seen + int(d.u() * (length - seen)) + d.exp_ns(turnaround), 2, "result") for _ in range(n_results)]
        plan.sort()
        for off, _, what in plan:
            t = t0 + off
            if t >= self.arm.duration_ns:
                break
            if t > env.now:
                yield env.timeout(t - env.now)
            if not what:
                self._scribe_note(t, pid, eid, workflow)
                continue
            self.stats["orders" if what == "order" else "lab_results"] += 1
            for c in self.cds:
                c.query(t, pid, "order" if what == "order" else "lab_result", what)

    # ------------------------------------------------------------------ prior authorization
    def _claims(self, store: simpy.Store) -> Iterator[simpy.Event]:
        """Claims needing prior authorization, submitted around the clock as orders are placed."""
        wf, h = self.sc.workflows, self.sc.hospital
        claims = self.claims  # in a seeded random order: each claim once, then again (counted)
        if not claims:
            return
        times = nhpp(self.rng, self.clock, wf.prior_auth.claims_per_day * self.vf, wf.results_and_orders.order_profile.hourly,
                     h.weekday_factors.outpatient, self.uniform)
        for k, _ in enumerate(self._at_times(times)):
            yield _
            self.stats["claims_submitted"] += 1
            if k >= len(claims):
                self.stats["claims_reused"] += 1
            store.put(claims[k % len(claims)])

    def _pa_worker(self, agent: PriorAuth, store: simpy.Store, replica: int) -> Iterator[simpy.Event]:
        env = self.env
        while True:
            claim = yield store.get()
            opens = self._business_open(env.now)
            if opens > env.now:
                yield env.timeout(opens - env.now)
            if env.now >= self.arm.duration_ns:
                return
            self.stats["claims_worked"] += 1
            yield env.timeout(agent.work(env.now, claim, replica))

    def _business_open(self, t: int) -> int:
        """The first instant >= t inside the prior-auth business hours (uniform: t itself)."""
        q = self.sc.workflows.prior_auth
        if self.uniform:
            return t
        lo, hi = minutes_of_day(q.business_hours.start), minutes_of_day(q.business_hours.end)
        for _ in range(9):
            m = self.clock.minute_of_day(t)
            weekend = q.weekdays_only and self.clock.weekday(t) >= 5
            if not weekend and lo <= m < hi:
                return t
            t = self.clock.next_at(t + 1, lo) if (weekend or m >= hi) else self.clock.next_at(t, lo)
        return t


def simulate(scenario: Scenario, arm: ResolvedArm, population: Population,
             progress: Progress | None = None) -> tuple[pa.Table, dict[str, int]]:
    """Run one arm: (trace table, hospital counters such as visits, census and claims).

    The cyclic garbage collector is paused for the run: the model allocates hundreds of
    thousands of short-lived tuples and no lasting cycles, and collecting would cost ~20%."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        h = Hospital(scenario, arm, population, progress)
        table = h.run()
    finally:
        if enabled:
            gc.enable()
    return table, dict(h.stats)
