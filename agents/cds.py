"""Clinical decision support: evaluates every lab result and every order.

One query = one context: it reads the trigger (the resulted Observation, for a result), the
patient's medication list (drug-drug and drug-lab interactions), the problems (Condition) and
the recent laboratory Observations, paged; in rare complex cases (``complex_case_share``) also the
DiagnosticReports.  It then embeds the case through its external embedding service: dozens of
HTTP calls over one connection, recorded as ONE egress row (a TCP connect is what the kernel's
connect4 hook sees) with ``egress_calls`` = the number of calls.  A share of the queries ends
with a draft for the clinician to approve: a ServiceRequest (a follow-up test after a result)
or a MedicationRequest (after an order), both with status ``draft``.
"""

from __future__ import annotations

from paritybed.agents.base import AgentRuntime, World
from paritybed.core.units import NS_PER_S

EMBED_NS = 2 * NS_PER_S  # the embedding calls take ~2 s before the draft is written


class Cds(AgentRuntime):
    agent_class = "cds"

    def __init__(self, spec, world: World) -> None:
        super().__init__(spec, world)
        s = spec.settings
        self.complex_share = s.complex_case_share
        self.calls_lo = s.embedding_calls_min
        self.calls_hi = max(s.embedding_calls_max, s.embedding_calls_min)
        self.draft_share = s.draft_share
        self.page_size = s.page_size
        self.max_pages = s.max_pages
        self._n = 0
        self._base: dict[str, tuple[int, ...]] = {}
        self._meds: dict[str, tuple[int, ...]] = {}
        self._complex: dict[str, tuple[int, ...]] = {}
        self._obs_reads: dict[str, list[tuple[int, ...]]] = {}
        self._drafts: dict[str, tuple[int, ...]] = {}
        self._common: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ request sets
    def base(self, pid: str) -> tuple[int, ...]:
        got = self._base.get(pid)
        if got is None:
            pop, req, ps, mp = self.w.population, self.req, self.page_size, self.max_pages
            out = req.by_patient("Condition", pid, pop.count(pid, "Condition"), ps, mp)
            out += req.by_patient("Observation", pid, pop.count(pid, "Observation", "laboratory"), ps, mp,
                                  extra=[("category", "laboratory")])
            got = self._base[pid] = self.keep(out)
        return got

    def meds(self, pid: str) -> tuple[int, ...]:
        got = self._meds.get(pid)
        if got is None:
            pop = self.w.population
            got = self._meds[pid] = self.keep(
                self.req.by_patient("MedicationRequest", pid, pop.count(pid, "MedicationRequest"), self.page_size, self.max_pages))
        return got

    def complex(self, pid: str) -> tuple[int, ...]:
        got = self._complex.get(pid)
        if got is None:
            pop = self.w.population
            out = self.req.by_patient("DiagnosticReport", pid, pop.count(pid, "DiagnosticReport"), self.page_size, self.max_pages)
            ids = pop.ids(pid, "DiagnosticReport")
            if ids:
                out += (self.req.read_scoped("DiagnosticReport", ids[-1], pid),)
            got = self._complex[pid] = self.keep(out)
        return got

    def result_read(self, pid: str) -> tuple[int, ...]:
        """Read of the resulted Observation (one of the patient's real Observation ids), scoped to
        its patient (``Observation?_id=X&patient=P``: the launch context binds the request)."""
        reads = self._obs_reads.get(pid)
        if reads is None:
            reads = self._obs_reads[pid] = [self.keep((self.req.read_scoped("Observation", i, pid),))
                                            for i in self.w.population.ids(pid, "Observation")]
        if not reads:
            return ()
        return reads[self.d.below(len(reads))]

    def draft(self, kind: str) -> tuple[int, ...]:
        got = self._drafts.get(kind)
        if got is None:
            got = self._drafts[kind] = self.keep((self.req.create(kind),))
        return got

    def lane_normal(self, patient_id: str, encounter_id: str | None) -> tuple[int, ...]:
        return self.base(patient_id)

    # ------------------------------------------------------------------ behaviour
    def query(self, t_ns: int, patient_id: str, workflow: str, trigger: str) -> None:
        """One CDS query on a lab result (trigger 'result') or an order ('order').  The hot path
        of the simulation (most requests are CDS reads): per-patient request tuples are cached."""
        self._n += 1
        r = self._rr
        self._rr = (r + 1) % self.replicas
        em, u = self.em, self.d.u
        ctx = self.launch(t_ns, r, f"{self.name}-q{self._n:07d}", "query", patient_id, workflow)
        common = self._common.get(patient_id)
        if common is None:
            # A result is checked against the current medications too (drug-lab interactions).
            common = self._common[patient_id] = self.meds(patient_id) + self.base(patient_id)
        reads = self.result_read(patient_id) + common if trigger == "result" else common
        if u() < self.complex_share:
            reads = reads + self.complex(patient_id)
        self.burst_with_egress(t_ns, ctx, reads, self.calls_lo + int(u() * (self.calls_hi - self.calls_lo + 1)))
        if u() < self.draft_share:
            em.burst(t_ns + EMBED_NS, ctx, self.draft("ServiceRequest" if trigger == "result" else "MedicationRequest"))
        self.finish(t_ns + EMBED_NS, ctx)  # the recommendation is filed once the case is embedded
