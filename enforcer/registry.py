"""The BAA registry: which external endpoints are covered by a Business Associate Agreement.

An agent may connect to an external endpoint only if its policy names the endpoint *and* the
registry says a BAA covers it at that moment (status active, inside its effective dates).  The
registry is a separate file from the policy because it changes on its own schedule (a BAA is
signed or terminated): the kernel control plane watches the file and applies a change at the
next connect, and the AI-BOM records the registry version at each first contact.

File format (baa-registry.json, documented in docs/policy.md)::

    {"schema": "paritybed.baa/1", "version": 3,
     "endpoints": [{"name": "embedding-service", "address": "127.0.0.21:9443",
                    "baa_id": "BAA-2025-014", "vendor": "...", "status": "active",
                    "effective_from": "2025-01-01", "effective_to": null}]}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from paritybed.core.baa import Endpoint

REGISTRY_SCHEMA = "paritybed.baa/1"


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["paritybed.baa/1"] = Field(REGISTRY_SCHEMA, alias="schema")
    version: int = Field(1, ge=1)
    endpoints: list[Endpoint] = Field(default_factory=list)

    def by_address(self) -> dict[str, Endpoint]:
        return {e.address: e for e in self.endpoints}

    def content_hash(self) -> str:
        d = self.model_dump(mode="json", by_alias=True)
        return "sha256:" + hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"


def save_registry(reg: Registry, path: str | Path) -> None:
    Path(path).write_text(reg.to_json(), encoding="utf-8")


def load_registry(path: str | Path) -> Registry:
    from paritybed.core.jsonfile import load_model

    return load_model(path, Registry, "BAA registry", "docs/policy.md")
