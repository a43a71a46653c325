"""Prior authorization: works a queue of claims through business hours, claim by claim.

For each claim (a real Synthea Claim of the population) it reads the Coverage it is billed
under, the Claim itself, the patient's Conditions, the encounter's Procedures, the Encounter and
the encounter's Observations (the clinical justification), sends the request to the payer's
endpoint and records the decision as a ClaimResponse.
"""

from __future__ import annotations

from paritybed.agents.base import AgentRuntime, World
from paritybed.core.units import NS_PER_S
from paritybed.fhir.population import ClaimInfo


class PriorAuth(AgentRuntime):
    agent_class = "prior_auth"

    def __init__(self, spec, world: World) -> None:
        super().__init__(spec, world)
        s = spec.settings
        self.page_size = s.page_size
        self.max_pages = s.max_pages
        self.payer_calls = s.payer_calls
        self.seconds_per_claim = s.seconds_per_claim
        self._reads: dict[str, tuple[int, ...]] = {}
        self._write: tuple[int, ...] | None = None

    def reads(self, claim: ClaimInfo) -> tuple[int, ...]:
        got = self._reads.get(claim.id)
        if got is not None:
            return got
        pop, req, ps, mp = self.w.population, self.req, self.page_size, self.max_pages
        pid = claim.patient_id
        out: list[int] = []
        coverage = claim.coverage_id or next(iter(pop.coverage_of(pid)), None)
        if coverage:
            out.append(req.read_scoped("Coverage", coverage, pid))
        out.append(req.read_scoped("Claim", claim.id, pid))
        out += req.by_patient("Condition", pid, pop.count(pid, "Condition"), ps, mp)
        eid = claim.encounter_id
        if eid:
            counts = pop.encounter_resource_counts(eid)
            out += req.pages("Procedure", [("encounter", eid)], counts.get("Procedure", 0), ps, mp, pid)
            out.append(req.read("Encounter", eid, pid))
            out += req.pages("Observation", [("encounter", eid)], counts.get("Observation", 0), ps, mp, pid)
        got = self._reads[claim.id] = self.keep(out)
        return got

    def write(self) -> tuple[int, ...]:
        if self._write is None:
            self._write = self.keep((self.req.create("ClaimResponse"),))
        return self._write

    def lane_normal(self, patient_id: str, encounter_id: str | None) -> tuple[int, ...]:
        pop = self.w.population
        return self.keep(self.req.by_patient("Condition", patient_id, pop.count(patient_id, "Condition"), self.page_size, 1))

    def work(self, t_ns: int, claim: ClaimInfo, replica: int) -> int:
        """Process one claim on `replica`; returns the ns the replica is busy with it."""
        ctx = self.launch(t_ns, replica, claim.id, "claim", claim.patient_id, "prior_auth", claim.encounter_id or "")
        self.burst_with_egress(t_ns, ctx, self.reads(claim), self.payer_calls)
        busy = max(5 * NS_PER_S, self.d.exp_ns(self.seconds_per_claim * NS_PER_S))
        self.em.burst(t_ns + busy - NS_PER_S, ctx, self.write())
        self.finish(t_ns + busy - NS_PER_S, ctx)  # the claim is decided
        return busy
