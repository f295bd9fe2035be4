"""deploy/k8s: every overlay renders with `kubectl kustomize` and validates offline, and its parts fit together.

Core kinds are validated with kubernetes-validate (the Kubernetes OpenAPI schemas, strict: unknown fields
are errors). The Prometheus Operator kinds (ServiceMonitor, PrometheusRule) are not in those schemas; they
are validated against the operator's CRD models (cloudcoil-models-prometheus-operator, pydantic), with a
round trip that turns a field the model does not know into an error, and their references are checked
here: selectors, ports, metric names (src/tritonrag/metrics.py), the autoscaler's adapter rules.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tritonrag import metrics
from tritonrag.openai import auth
from tritonrag.paths import MODEL_REPOSITORY, REPO_ROOT
from tritonrag.triton import drain
from tritonrag.triton.canary import CANARY_FILE_ENV, RoutingConfig, canary_file_path

yaml = pytest.importorskip("yaml", reason="pyyaml is in the test extra")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.32.0"  # the kubectl client installed here; the schemas ship inside kubernetes-validate
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: cannot render the overlays")


def render(overlay: str) -> list[dict]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed: cannot render the overlays")
    return request.param, render(request.param)


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict], name: str = "tritonserver") -> dict:
    return next(c for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env(docs: list[dict], name: str = "tritonserver") -> dict[str, dict]:
    return {e["name"]: e for e in container(docs, name).get("env", [])}


# ---- schemas ------------------------------------------------------------------------------------------


def test_core_kinds_validate_strictly(rendered):
    overlay, docs = rendered
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    assert {d["kind"] for d in core} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_refuses_an_unknown_field(rendered):
    """The check above can fail: a misspelt field in the Deployment is an error, not a warning."""
    _, docs = rendered
    broken = copy.deepcopy(one(docs, "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_crd_kinds_are_not_in_the_core_schemas(rendered):
    """Why they are checked below instead: kubernetes-validate has no schema for them."""
    _, docs = rendered
    for kind in CRD_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(one(docs, kind), KUBERNETES_VERSION, strict=True)


def _crd_model(kind: str):
    models = pytest.importorskip(
        "cloudcoil.models.prometheus_operator.v1", reason="cloudcoil-models-prometheus-operator is in the test extra"
    )
    return getattr(models, kind)


def _dropped_fields(given, kept, path="") -> list[str]:
    """Fields of `given` that the model round trip lost: fields its schema does not have."""
    if isinstance(given, dict):
        kept = kept if isinstance(kept, dict) else {}
        return [p for key, value in given.items() for p in _dropped_fields(value, kept.get(key), f"{path}.{key}")] + [
            f"{path}.{key}" for key in given if key not in kept
        ]
    if isinstance(given, list):
        kept = kept if isinstance(kept, list) else []
        return [
            p
            for i, value in enumerate(given)
            for p in _dropped_fields(value, kept[i] if i < len(kept) else None, f"{path}[{i}]")
        ]
    return []


def validate_crd(doc: dict) -> None:
    model = _crd_model(doc["kind"]).model_validate(doc)
    kept = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    dropped = sorted(set(_dropped_fields(doc, kept)))
    assert not dropped, f"{doc['kind']} fields unknown to the CRD schema: {dropped}"


@pytest.mark.parametrize("kind", sorted(CRD_KINDS))
def test_operator_kinds_validate_against_their_crd_models(rendered, kind):
    _, docs = rendered
    validate_crd(one(docs, kind))


def test_crd_check_refuses_an_unknown_field(rendered):
    _, docs = rendered
    broken = copy.deepcopy(one(docs, "ServiceMonitor"))
    broken["spec"]["endpoints"][0]["scrapeIntervall"] = "15s"
    with pytest.raises(AssertionError, match="scrapeIntervall"):
        validate_crd(broken)


# ---- the parts fit together ----------------------------------------------------------------------------


def test_probes_use_triton_health_endpoints_on_a_declared_port(rendered):
    _, docs = rendered
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # Liveness: /v2/health/live and the stub and stall gauges, on the declared ports (tritonrag.triton.health).
    command = c["livenessProbe"]["exec"]["command"]
    assert command[:3] == ["python3", "-m", "tritonrag.triton.health"]
    assert f"127.0.0.1:{ports['http']}" in command and f"http://127.0.0.1:{ports['metrics']}/metrics" in command
    startup = c["startupProbe"]
    # The startup budget covers the slowest measured warm-up (526 s on a loaded 2-core machine).
    assert startup["periodSeconds"] * startup["failureThreshold"] > 526


def test_service_and_servicemonitor_reach_the_pods(rendered):
    _, docs = rendered
    deployment, service, monitor = one(docs, "Deployment"), one(docs, "Service"), one(docs, "ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod = deployment["spec"]["template"]["spec"]
    container_ports = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c["ports"]}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == container_ports
    assert all(p["targetPort"] == p["name"] for p in service["spec"]["ports"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"} <= service_ports


def test_pdb_and_hpa_target_the_deployment(rendered):
    _, docs = rendered
    deployment, hpa, pdb = (
        one(docs, "Deployment"),
        one(docs, "HorizontalPodAutoscaler"),
        one(docs, "PodDisruptionBudget"),
    )
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "a disruption must leave a replica serving"


def test_hpa_metrics_are_ours_and_served_by_the_adapter_rules(rendered):
    _, docs = rendered
    hpa = one(docs, "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == {metrics.WAITING.name, metrics.KV_USAGE.name}
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {}
    for rule in values["rules"]["custom"]:
        series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series), rule
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        served[rule["name"]["as"]] = series
    assert wanted <= served.keys(), f"the adapter serves {sorted(served)}, the HPA wants {sorted(wanted)}"


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:tritonrag|nv_inference|kube)_\w+", expr)) | set(re.findall(r"\bup(?=\{)", expr))


def _known(name: str) -> bool:
    families = {f.name for f in vars(metrics).values() if isinstance(f, metrics.Family)}
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in families or base in families or name.startswith(("nv_inference_", "kube_")) or name == "up"


def test_alerts_cover_latency_errors_kv_and_readiness_with_our_metric_names(rendered):
    _, docs = rendered
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    exprs = " ".join(r["expr"] for r in rules)
    assert f"{metrics.TTFT.name}_bucket" in exprs and "histogram_quantile(0.99" in exprs
    assert metrics.TRITON_FAILURE in exprs and metrics.KV_USAGE.name in exprs and "kube_pod_status_ready" in exprs
    for rule in rules:
        names = _metric_names(rule["expr"])
        assert names and all(_known(n) for n in names), (rule["alert"], names)
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_grafana_dashboard_queries_our_metrics(rendered):
    _, docs = rendered
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert len(maps) == 1
    dashboard = json.loads(next(iter(maps[0]["data"].values())))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*map(_metric_names, exprs))
    assert all(_known(n) for n in used), sorted(n for n in used if not _known(n))
    for family in (metrics.TTFT, metrics.WAITING, metrics.KV_USAGE, metrics.ROUTER_REQUESTS):
        assert any(n.startswith(family.name) for n in used), family.name


def test_termination_grace_outlasts_the_drain(rendered):
    """The preStop drain's bound, then tritonserver's exit timeout, then model unloading."""
    _, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    command = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python3", "-m", drain.__name__]
    pre_stop = int(command[command.index("--max-wait") + 1])
    exit_timeout = int(env(docs)["TRITONRAG_EXIT_TIMEOUT"]["value"])
    unload = 15  # measured: SIGTERM to exit 0 in 13 s with the whole repository, once drained (2-core CPU)
    assert pod["terminationGracePeriodSeconds"] > pre_stop + exit_timeout + unload


def test_canary_configmap_is_mounted_where_the_router_is_pointed(rendered, monkeypatch):
    _, docs = rendered
    c = container(docs)
    canary_file = Path(env(docs)[CANARY_FILE_ENV]["value"])
    mount = next(m for m in c["volumeMounts"] if canary_file.parent == Path(m["mountPath"]))
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    volume = next(
        v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    configmap = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    RoutingConfig.from_dict(json.loads(configmap["data"][canary_file.name]))  # the router would accept it
    # ... and the router reads the variable's path, not its weights_file parameter, unresolved (links kept).
    monkeypatch.setenv(CANARY_FILE_ENV, str(canary_file))
    assert canary_file_path("${TRITONRAG_ARTIFACTS}/canary.json", MODEL_REPOSITORY) == canary_file


def test_openai_front_end_runs_beside_tritonserver_with_keys_from_an_optional_secret(rendered):
    _, docs = rendered
    front = container(docs, "openai")
    assert front["image"] == container(docs)["image"] and front["args"] == ["openai"]
    assert front["readinessProbe"]["httpGet"] == {"path": "/health", "port": "openai"}
    ref = env(docs, "openai")[auth.ENV_KEYS]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] == "tritonrag-api-keys"
    assert not [d for d in docs if d["kind"] == "Secret"], "keys are never committed"


def test_gpu_overlay_requests_a_gpu_and_cpu_overlay_does_not():
    if KUBECTL is None:
        pytest.skip("kubectl not installed: cannot render the overlays")
    for overlay, gpus in (("gpu", "1"), ("cpu", None)):
        resources = container(render(overlay))["resources"]
        assert resources.get("limits", {}).get("nvidia.com/gpu") == gpus, overlay
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
