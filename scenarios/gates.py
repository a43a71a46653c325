"""The gate thresholds of the three criteria and the replay, and how the staging envelope
compiles to a policy."""

from __future__ import annotations

from pydantic import Field

from paritybed.scenarios.base import IpPort, Strict


class FidelityGate(Strict):
    resource_mix_jsd_max: float = Field(0.10, ge=0, le=1)
    hour_profile_jsd_max: float = Field(0.15, ge=0, le=1)
    interarrival_ks_max: float = Field(0.08, ge=0, le=1)  # parity: KS on gaps between new contexts (docs/parity.md)
    burst_ratio_min: float = Field(0.75, ge=0)
    context_ks_max: float = Field(0.30, ge=0, le=1)  # parity: requests per context are small integers (docs/parity.md)
    context_duration_ks_max: float = Field(0.30, ge=0, le=1)  # launch contexts: opening to closing (docs/parity.md)


class CoverageGate(Strict):
    support_min_share: float = Field(0.0005, ge=0, le=1)
    support_min_count: int = Field(3, ge=1)
    staging_min_count: int = Field(1, ge=1)


class BreakGlassGate(Strict):
    require_expiry_exercised: bool = True


class ReplayGate(Strict):
    max_over_block_share: float | None = Field(None, ge=0, le=1)
    max_under_blocks: int | None = Field(None, ge=0)


class Gate(Strict):
    fidelity: FidelityGate = Field(default_factory=FidelityGate)
    coverage: CoverageGate = Field(default_factory=CoverageGate)
    break_glass: BreakGlassGate = Field(default_factory=BreakGlassGate)
    replay: ReplayGate = Field(default_factory=ReplayGate)


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
