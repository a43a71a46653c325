"""Which real Synthea encounters the simulated hospital reuses for each stream.

The simulated hospital sees far more visits in a week than a modest Synthea population has
encounters of each class, so each simulated visit *reuses* a real encounter of the right class,
drawn with replacement: its patient, its id and its resources are real, so every request the
agents make names ids that exist on the loaded FHIR server.

Classes can be rare (a few dozen patients over three years have a handful of inpatient stays).
A pool draws from its preferred class; if that class has fewer than ``MIN_POOL`` encounters the
next class of its fallback chain is added (an admission falls back to emergency visits, which is
how half of admissions arrive; then to ambulatory visits), and so on.
"""

from __future__ import annotations

from dataclasses import dataclass

from paritybed.core.draws import Draws
from paritybed.core.errors import InputError
from paritybed.fhir.population import EncounterInfo, Population

MIN_POOL = 5
CHAINS = {
    "ed": ("EMER", "URGENTCARE", "IMP", "AMB"),
    "inpatient": ("IMP", "ACUTE", "EMER", "AMB"),
    "outpatient": ("AMB", "VR", "HH", "EMER", "IMP"),
}


@dataclass(frozen=True)
class Pool:
    name: str
    classes: tuple[str, ...]  # the classes actually drawn from
    encounters: tuple[EncounterInfo, ...]

    def pick(self, d: Draws) -> EncounterInfo:
        return self.encounters[d.below(len(self.encounters))]


def build_pool(pop: Population, name: str) -> Pool:
    """The encounters of the stream `name` (ed | inpatient | outpatient), see the module doc."""
    chosen: list[EncounterInfo] = []
    classes: list[str] = []
    for cls in CHAINS[name]:
        if len(chosen) >= MIN_POOL:
            break
        got = pop.encounters_by_class(cls)
        if got:
            chosen += got
            classes.append(cls)
    if len(chosen) < MIN_POOL:  # an unusual population: take every encounter
        chosen = list(pop.encounters)
        classes = sorted({e.class_code for e in chosen})
    if not chosen:
        raise InputError(f"the population in {pop.folder} has no Encounter: the hospital needs encounters to simulate")
    return Pool(name, tuple(classes), tuple(chosen))


class Panels:
    """Clinicians and their usual patients (the patients of the encounters they attended), for
    break-glass: the on-call clinician reaches a patient *outside* that panel."""

    def __init__(self, pop: Population) -> None:
        panels: dict[str, set[str]] = {}
        for e in pop.encounters:
            if e.practitioner_id:
                panels.setdefault(e.practitioner_id, set()).add(e.patient_id)
        self.clinicians = sorted(panels) or list(pop.practitioners)
        self._panels = panels
        self.patients = [p.id for p in pop.patients]
        self._latest: dict[str, str] = {}
        for e in pop.encounters:  # encounters are sorted by (patient, start): the last one wins
            self._latest[e.patient_id] = e.id

    def outside(self, clinician: str, d: Draws) -> str:
        panel = self._panels.get(clinician, set())
        others = [p for p in self.patients if p not in panel] or self.patients
        return others[d.below(len(others))]

    def latest_encounter(self, patient_id: str) -> str | None:
        return self._latest.get(patient_id)
