"""The gate thresholds of the three criteria and the replay, and how the staging envelope
compiles to a policy."""

from __future__ import annotations

from pydantic import Field

from paritybed.scenarios.base import IpPort, Strict


class FidelityGate(Strict):
    """Set by the calibration sweep (sweeps/calibration.yaml -> sweeps/calibration.json, `make
    calibrate`; docs/parity.md "Calibration"): each is where the gate passes every safe run of the
    sweep and fails the unsafe ones the other checks do not (tests/test_calibration.py holds the
    two in step).  Before calibration: 0.10, 0.15, 0.08, 0.75, 0.30 and no rate headroom."""

    resource_mix_jsd_max: float = Field(0.0682, ge=0, le=1)
    hour_profile_jsd_max: float = Field(0.2107, ge=0, le=1)
    interarrival_ks_max: float = Field(0.5502, ge=0, le=1)  # parity: KS on gaps between new contexts (docs/parity.md)
    burst_ratio_min: float = Field(0.2008, ge=0)
    context_ks_max: float = Field(0.4012, ge=0, le=1)  # parity: requests per context are small integers (docs/parity.md)
    context_duration_ks_max: float = Field(0.30, ge=0, le=1)  # launch contexts: opening to closing (docs/parity.md; not calibrated yet)
    rate_headroom_min: float = Field(0.6936, ge=0)  # staging-built rate limit (burst) over production's busiest 5 minutes


class CoverageGate(Strict):
    support_min_share: float = Field(0.0005, ge=0, le=1)
    support_min_count: int = Field(3, ge=1)
    staging_min_count: int = Field(1, ge=1)


class BreakGlassGate(Strict):
    require_expiry_exercised: bool = True


class ReplayGate(Strict):
    """What the replay's consequences may be (``null`` turns a check off).  The first two and the
    last say when a staging arm is *unsafe* (the calibration's ground truth, parity/consequences.py);
    ``max_under_blocks`` judges the deployment: an attack action that gets through fails the run,
    whether or not staging is to blame."""

    max_over_block_share: float | None = Field(0.0001, ge=0, le=1)  # legitimate production requests denied
    max_clinical_impact_minutes_per_day: float | None = Field(5.0, ge=0)  # agent-minutes blocked or quarantined
    max_under_blocks: int | None = Field(0, ge=0)  # attack actions allowed or only alerted
    #: attack actions staging's policy lets through beyond what the oracle policy (learned from
    #: production's own legitimate traffic) lets through, as a share of the attack's actions.
    #: 0.2: good staging arms of other seeds let up to 0.15 of the rate-limited sweep through
    #: beyond the oracle by chance (docs/parity.md, "Calibration"); an excess counts above that.
    max_excess_under_block_share: float | None = Field(0.2, ge=0, le=1)


class MarginGate(Strict):
    """The confidence interval each distribution metric carries (parity/intervals.py): a metric
    whose interval straddles its threshold makes the verdict ``marginal``."""

    confidence: float = Field(0.95, gt=0, lt=1)
    resamples: int = Field(400, ge=0)  # bootstrap resamples; 0: no intervals (pass or fail only)


class Gate(Strict):
    fidelity: FidelityGate = Field(default_factory=FidelityGate)
    coverage: CoverageGate = Field(default_factory=CoverageGate)
    break_glass: BreakGlassGate = Field(default_factory=BreakGlassGate)
    replay: ReplayGate = Field(default_factory=ReplayGate)
    margin: MarginGate = Field(default_factory=MarginGate)


class PolicySettings(Strict):
    """How the staging envelope compiles to an enforceable policy."""

    fhir_server: IpPort = "127.0.0.1:8080"
    fhir_base: str = "/fhir"
    rate_margin: float = Field(1.5, ge=1)  # multiplies the staging peak 5-minute count
    lane_duration_margin: float = Field(1.0, ge=1)
    quarantine_hold_min: float | None = Field(15, gt=0)  # None: until released by an operator
    min_pair_count: int = Field(1, ge=1)  # a pair enters the envelope from this many staging requests
    context_duration_margin: float = Field(2.0, ge=1)  # multiplies the longest launch context held in staging
    context_open_margin: float = Field(2.0, ge=1)  # multiplies the most contexts open at once on a replica
    new_patient_margin: float = Field(2.0, ge=1)  # multiplies the busiest 5 minutes of new patients
