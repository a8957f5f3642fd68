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

from nfqproxy import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KINDS: dict[tuple[str, str], type[BaseModel]] = {
    ("v1", "ServiceAccount"): models.V1ServiceAccount,
    ("v1", "ConfigMap"): models.V1ConfigMap,
    ("apps/v1", "DaemonSet"): models.V1DaemonSet,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): models.V1ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): models.V1ClusterRoleBinding,
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    """The Kubernetes objects of deploy/ (kustomization.yaml is kubectl's, not one)."""
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(DEPLOY.glob("*.yaml"))
        if path.name != "kustomization.yaml"
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


def test_kubectl_apply_k_takes_the_proxy_and_its_rbac() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["rbac.yaml", "daemonset.yaml"]
    assert all((DEPLOY / name).is_file() for name in kustomization["resources"])
    (dashboard,) = kustomization["configMapGenerator"]
    assert dashboard["files"] == ["grafana-dashboard.json"]
    assert (DEPLOY / "grafana-dashboard.json").is_file()


def test_the_daemonset_args_and_its_configmap_parse_as_nfqproxy_run(tmp_path: Path) -> None:
    """The container's args through the CLI's parser, the ConfigMap's config.yaml through
    the config loader: what the pod would run, flags over file."""
    daemonset = named_daemonset("nfqproxy")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    configmap = next(d for _, d in documents() if d["kind"] == "ConfigMap")
    config = tmp_path / "config.yaml"
    config.write_text(configmap["data"]["config.yaml"])
    values = {"$(NODE_NAME)": "node-a", "$(NODE_IP)": "192.0.2.10"}
    args = [
        f"{a.split('=', 1)[0]}={values.get(a.split('=', 1)[1], a.split('=', 1)[1])}"
        if "=" in a
        else a
        for a in container["args"]
    ]
    args = [f"--config={config}" if a.startswith("--config=") else a for a in args]
    parser = cli.build_parser()
    parsed = cli._with_config_file(parser, args, config)
    assert parsed.command == "run" and parsed.hostname_override == "node-a"
    assert parsed.node_ip == ["192.0.2.10"] and parsed.keep_hooks_on_exit is True
    assert parsed.api_server.startswith("https://") and parsed.log_format == "json"
    assert parsed.metrics_per_service_port is False  # read from the file: a known key
    assert [str(n) for ranges in parsed.service_cidrs for n in ranges] == ["10.96.0.0/12"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"][1] == f"--config={mount['mountPath']}/config.yaml"


def test_the_daemonset_is_hardened_as_kubeadm_and_cilium_deploy_theirs() -> None:
    pod = named_daemonset("nfqproxy")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    liveness = container["livenessProbe"]
    assert liveness["failureThreshold"] >= 3 and liveness["timeoutSeconds"] >= 1
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/lib/modules" not in mounts  # nothing loads modules from the pod
    assert {"/run/nfqproxy", "/run/xtables.lock", "/etc/nfqproxy"} <= mounts
    assert container["resources"]["requests"]["memory"] == "320Mi"
