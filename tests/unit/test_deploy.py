"""deploy/ manifests are valid Kubernetes objects, checked against the API's own schemas.

The schemas come as the generated models of the kubernetes package (kubernetes.aio, from
the API's OpenAPI document). They are strict: a wrong type or a field the schema does not
know fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio.client import models
from pydantic import BaseModel

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KINDS: dict[tuple[str, str], type[BaseModel]] = {
    ("v1", "ServiceAccount"): models.V1ServiceAccount,
    ("v1", "ConfigMap"): models.V1ConfigMap,
    ("apps/v1", "DaemonSet"): models.V1DaemonSet,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): models.V1ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): models.V1ClusterRoleBinding,
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(DEPLOY.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.mark.parametrize(("where", "doc"), documents(), ids=[w for w, _ in documents()])
def test_each_deploy_manifest_validates_against_the_kubernetes_schema(
    where: str, doc: dict[str, Any]
) -> None:
    # The generated models forbid unknown fields and check types strictly.
    KINDS[(doc["apiVersion"], doc["kind"])].model_validate(doc)


def test_the_schema_check_catches_unknown_fields_and_wrong_types() -> None:
    daemonset = next(d for _, d in documents() if d["kind"] == "DaemonSet")  # any of them
    pod = daemonset["spec"]["template"]["spec"]
    pod["hostNetwrok"] = True
    with pytest.raises(ValueError, match="hostNetwrok"):
        models.V1DaemonSet.model_validate(daemonset)
    del pod["hostNetwrok"]
    pod["hostNetwork"] = "yes please"
    with pytest.raises(ValueError, match="hostNetwork"):
        models.V1DaemonSet.model_validate(daemonset)


def named_daemonset(name: str) -> dict[str, Any]:
    return next(
        d for _, d in documents() if d["kind"] == "DaemonSet" and d["metadata"]["name"] == name
    )


def test_the_daemonset_runs_as_a_kube_proxy_replacement() -> None:
    daemonset = named_daemonset("nfqproxy")
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostNetwork"] is True and pod["priorityClassName"] == "system-node-critical"
    assert {
        "name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    } in container["env"]
    assert any(m["mountPath"] == "/run/xtables.lock" for m in container["volumeMounts"])
    assert container["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]


def test_the_probes_never_kill_a_proxy_that_waits_for_the_api() -> None:
    """Startup and liveness ask /livez, which fails only when the process is wedged: a
    proxy waiting for its first list is alive. Readiness asks /healthz: tables programmed
    and syncs fresh."""
    container = named_daemonset("nfqproxy")["spec"]["template"]["spec"]["containers"][0]
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"]["path"] == liveness["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert "initialDelaySeconds" not in liveness  # the startup probe holds it back


def test_the_cleanup_daemonset_runs_nfqproxy_cleanup_on_every_node() -> None:
    proxy_pod = named_daemonset("nfqproxy")["spec"]["template"]["spec"]
    pod = named_daemonset("nfqproxy-cleanup")["spec"]["template"]["spec"]
    (cleanup,) = pod["initContainers"]
    assert (
        cleanup["args"] == ["cleanup"] and cleanup["image"] == proxy_pod["containers"][0]["image"]
    )
    assert pod["hostNetwork"] is True and pod["tolerations"] == [{"operator": "Exists"}]
    assert cleanup["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert any(m["mountPath"] == "/run/xtables.lock" for m in cleanup["volumeMounts"])
