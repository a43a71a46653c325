"""Which patients and encounters the simulated hospital's visits are for.

Each simulated visit (an ED visit, an inpatient stay, a clinic visit) is one real encounter of
the right class in the loaded population: its patient, its id and its resources exist on the
FHIR server, so every request the agents make names ids that exist there.

A visit takes a patient the run has not seen yet (`Visits`): patients return as real ones do,
an inpatient every day of the stay (rounds, results, handoffs), not for unrelated visits.  A
derived population (fhir/derive.py) has one patient per expected visit, each built around one
encounter (its *visit*), and the pools hold exactly those; a plain Synthea population has far
fewer patients than a week has visits, and once every patient of a pool has been seen, visits
reuse them (counted as ``reused_patients`` in the hospital's counters).

Classes can be rare (a few dozen patients over three years have a handful of inpatient stays).
A pool draws from its preferred class; if that class has fewer than ``MIN_POOL`` encounters the
next class of its fallback chain is added (an admission falls back to emergency visits, which is
how half of admissions arrive; then to ambulatory visits), and so on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    if pop.derived:  # the visits derived for this stream; if none, any visit (patients then repeat)
        visits = pop.visits(name) or [e for e in pop.encounters if e.visit]
        return Pool(name, tuple(sorted({e.class_code for e in visits})), tuple(visits))
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


class Visits:
    """Draws each visit's encounter so that a patient is not reused for unrelated visits: each
    pool in a seeded random order, skipping patients already seen by any stream; an exhausted
    pool reuses its encounters at random (counted)."""

    def __init__(self, pools: dict[str, Pool], rng: np.random.Generator) -> None:
        self.pools = pools
        self.order = {name: rng.permutation(len(p.encounters)).tolist() for name, p in sorted(pools.items())}
        self.next = {name: 0 for name in pools}
        self.seen: set[str] = set()
        self.reused = 0

    def take(self, name: str, d: Draws) -> EncounterInfo:
        pool, order = self.pools[name], self.order[name]
        k = self.next[name]
        while k < len(order):
            e = pool.encounters[order[k]]
            k += 1
            if e.patient_id not in self.seen:
                self.next[name] = k
                self.seen.add(e.patient_id)
                return e
        self.next[name] = k
        self.reused += 1
        return pool.pick(d)


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
