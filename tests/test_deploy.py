"""Static checks of deploy/ (no container engine or cluster exists on these machines)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cds_service.cli import build_parser
from cds_service.core.settings import Settings

DEPLOY = Path(__file__).parents[1] / "deploy"


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def test_kubernetes_manifests_wire_api_workers_redis_config_and_secrets() -> None:
    docs = manifests()
    api, worker = docs[("Deployment", "cds-api")], docs[("Deployment", "cds-worker")]
    for deployment in (api, worker, docs[("Deployment", "cds-redis")]):
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        for c in containers(deployment):
            assert "readinessProbe" in c and "livenessProbe" in c
    gpu = containers(worker)[0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1 and gpu["requests"]["nvidia.com/gpu"] == 1
    api_c = containers(api)[0]
    assert api_c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api_c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"configMapRef": {"name": "cds-config"}} in api_c["envFrom"]
    assert {"secretRef": {"name": "cds-secrets"}} in api_c["envFrom"]
    service = docs[("Service", "cds-api")]
    assert service["spec"]["selector"] == {"app": "cds-api"}
    secret = docs[("Secret", "cds-secrets")]["stringData"]
    assert {"CDS_JWT_ISSUERS", "CDS_DATABASE_URL"} <= set(secret)


def test_every_configured_variable_is_a_real_setting() -> None:
    known = {f"CDS_{name.upper()}" for name in Settings.model_fields}
    docs = manifests()
    used = set(docs[("ConfigMap", "cds-config")]["data"]) | set(docs[("Secret", "cds-secrets")]["stringData"])
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        used |= {k for k in service.get("environment", {}) if k.startswith("CDS_")}
    for dockerfile in DEPLOY.glob("Dockerfile.*"):
        used |= set(re.findall(r"\b(CDS_[A-Z_]+)=", dockerfile.read_text()))
    assert used and used <= known, used - known


def test_compose_and_dockerfiles_run_commands_that_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"api", "worker", "redis", "postgres"} <= set(compose["services"])
    assert compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for dockerfile in DEPLOY.glob("Dockerfile.*"):
        text = dockerfile.read_text()
        # locked installs: the runtime lock hash-checked and unresolved, then the package alone, then pip check
        assert "COPY requirements ./requirements" in text
        assert "pip install --require-hashes --no-deps -r requirements/serve.lock" in text
        assert "pip install --no-deps --no-build-isolation . && pip check" in text
        assert not re.search(r"pip install (\.|\S*\[)", text)  # no resolving install of the project
        cmd = re.search(r'^CMD \["cds-service", "([a-z-]+)"', text, re.M)
        assert cmd and cmd.group(1) in commands
    api, worker = (DEPLOY / "Dockerfile.api").read_text(), (DEPLOY / "Dockerfile.worker").read_text()
    assert "pip install --require-hashes --no-deps -r requirements/torch-cpu.txt" in api
    torch_cpu = (DEPLOY.parent / "requirements" / "torch-cpu.txt").read_text()
    assert re.search(r"^torch==2\.13\.0\+cpu \\\n +--hash=sha256:[0-9a-f]{64}$", torch_cpu, re.M)
    assert 'pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu128' in worker
    assert "nvidia/cuda" in worker
    for doc in manifests().values():
        for c in containers(doc) if doc["kind"] == "Deployment" else []:
            for probe in ("readinessProbe", "livenessProbe"):
                command = c[probe].get("exec", {}).get("command", [])
                if command[:1] == ["cds-service"]:
                    assert command[1] in commands
