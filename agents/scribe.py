"""The ambient scribe: documents an encounter while the clinician talks to the patient.

At encounter time it reads, in one tight burst, the Patient, the Encounter, recent vital-sign
Observations, the medications (``settings.medication_types``: MedicationRequest, because that is
what Synthea writes; the fleet entry also *declares* MedicationStatement, which it never reads:
a minimum-necessary finding the attestation reports), active problems (Condition) and
AllergyIntolerance.  About a minute later it sends the recording to its model endpoint
(UC Davis pilot: draft ready a median 1.05 min after the recording ends); when the clinician
signs, minutes later, it creates a DocumentReference and updates the Encounter.

Handoff bursts are shorter (no allergies, first pages only, nothing written); medication
reconciliation reads every page of the medication list.
"""

from __future__ import annotations

from paritybed.agents.base import AgentRuntime, World
from paritybed.core.units import NS_PER_MIN, NS_PER_S

DRAFT_DELAY_NS = 63 * NS_PER_S  # UC Davis 2024: median 1.05 min from recording end to draft
SIGN_SIGMA = 0.6  # log-normal spread of the signing delay around its median


class Scribe(AgentRuntime):
    agent_class = "ambient_scribe"

    def __init__(self, spec, world: World) -> None:
        super().__init__(spec, world)
        s = spec.settings
        self.usage = s.usage
        self.page_size = s.page_size
        self.max_pages = s.max_pages
        self.med_types = list(s.medication_types)
        self.llm_calls = s.llm_calls
        self.sign_median_ns = s.sign_delay_min * NS_PER_MIN
        self._reads: dict[tuple[str, str, str], tuple[int, ...]] = {}
        self._writes: dict[tuple[str, str], tuple[int, ...]] = {}

    # ------------------------------------------------------------------ request sets
    def reads(self, kind: str, patient_id: str, encounter_id: str) -> tuple[int, ...]:
        """The read burst of one documentation context: kind is note | handoff | med_rec."""
        key = (kind, patient_id, encounter_id)
        got = self._reads.get(key)
        if got is not None:
            return got
        pop, req, ps = self.w.population, self.req, self.page_size
        full = kind != "handoff"
        pages = self.max_pages if full else 1
        out: list[int] = [req.read("Patient", patient_id, patient_id)]
        if kind != "med_rec":
            out.append(req.read("Encounter", encounter_id, patient_id))
            out += req.by_patient("Observation", patient_id, pop.count(patient_id, "Observation", "vital-signs"),
                                  ps, pages, extra=[("category", "vital-signs")])
        for mt in self.med_types:
            mp = 1000 if kind == "med_rec" else pages  # reconciliation reads the whole list
            out += req.by_patient(mt, patient_id, pop.count(patient_id, mt), ps, mp)
        out += req.by_patient("Condition", patient_id, pop.count(patient_id, "Condition"), ps, pages)
        if full:
            out += req.by_patient("AllergyIntolerance", patient_id, pop.count(patient_id, "AllergyIntolerance"), ps, 1)
        got = self._reads[key] = self.keep(out)
        return got

    def writes(self, patient_id: str, encounter_id: str) -> tuple[int, ...]:
        key = (patient_id, encounter_id)
        got = self._writes.get(key)
        if got is None:
            got = self._writes[key] = self.keep((self.req.create("DocumentReference"),
                                                 self.req.update("Encounter", encounter_id, patient_id)))
        return got

    def lane_normal(self, patient_id: str, encounter_id: str | None) -> tuple[int, ...]:
        reads = self.reads("handoff", patient_id, encounter_id) if encounter_id else self.keep(
            (self.req.read("Patient", patient_id, patient_id),))
        return reads

    # ------------------------------------------------------------------ behaviour
    def document(self, t_ns: int, patient_id: str, encounter_id: str, workflow: str, kind: str = "note") -> None:
        """Document one encounter moment: the read burst now, the model call a minute later and,
        for notes and reconciliations, the signed note minutes after that.  The launch context
        (this patient, this encounter) opens at the encounter and closes at the signature (at the
        draft for a handoff, which writes nothing)."""
        ctx = self.launch(t_ns, self.replica(), encounter_id, "encounter", patient_id, workflow, encounter_id)
        self.em.burst(t_ns, ctx, self.reads(kind, patient_id, encounter_id))
        t_draft = t_ns + DRAFT_DELAY_NS
        self.burst_with_egress(t_draft, ctx, (), self.llm_calls)
        if kind == "handoff":
            self.finish(t_draft, ctx)
            return
        t_sign = t_draft + int(self.d.lognormal(self.sign_median_ns, SIGN_SIGMA))
        self.em.burst(t_sign, ctx, self.writes(patient_id, encounter_id))
        self.finish(t_sign, ctx)
