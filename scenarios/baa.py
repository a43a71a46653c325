"""The scenario's BAA registry: the external endpoints the fleet may call and their agreements.

An entry is the enforcer's registry entry (paritybed.core.baa.Endpoint, one model for both), with
one extra rule for scenarios: the address is ip:port, because live mode listens there with a
stand-in endpoint.
"""

from __future__ import annotations

from pydantic import Field

from paritybed.core.baa import Endpoint
from paritybed.scenarios.base import IpPort, Strict


class BaaEndpoint(Endpoint):
    """A registry entry as a scenario writes it (see the module doc)."""

    address: IpPort


class BaaRegistry(Strict):
    version: int = Field(1, ge=1)
    endpoints: list[BaaEndpoint] = Field(default_factory=list)
