"""docker-compose.yml for HAPI FHIR: pinned image, the settings the loader needs, a healthcheck.

No Docker engine runs on these machines; what can be checked is the file itself and that the
compose client parses it (`docker compose config`, or Debian's `docker-compose` v1).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ruamel.yaml import YAML

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
PINNED = re.compile(r"^hapiproject/hapi:v\d+\.\d+\.\d+-\d+$")


def _services() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())["services"]


def test_hapi_service_is_pinned_and_configured_for_client_ids() -> None:
    hapi = _services()["hapi"]
    assert PINNED.match(hapi["image"]), hapi["image"]
    assert "8080:8080" in hapi["ports"]
    env = hapi["environment"]
    assert env["hapi.fhir.client_id_strategy"] == "ANY"  # `paritybed fhir load` PUTs Synthea's ids
    assert env["hapi.fhir.fhir_version"] == "R4"


def test_healthcheck_probes_fhir_metadata() -> None:
    services = _services()
    checks = [s["healthcheck"]["test"] for s in services.values() if "healthcheck" in s]
    assert any("http://hapi:8080/fhir/metadata" in test for test in checks)
    for image in (s["image"] for s in services.values()):
        assert ":" in image and not image.endswith(":latest"), image


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_client_parses_the_file(require) -> None:
    cmd = _compose_command()
    if cmd is None:
        require("compose", "no compose client here: neither `docker compose` (plugin) nor `docker-compose`")
    r = subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    config = YAML(typ="safe").load(r.stdout)
    assert PINNED.match(config["services"]["hapi"]["image"])
