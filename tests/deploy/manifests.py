"""Builds each kustomization under deploy/kubernetes and checks what it makes: every object
against the Kubernetes API schema of KUBERNETES_VERSION (strict: unknown fields fail), a
ServiceMonitor against servicemonitor.schema.json, and what the sidecar pattern relies on.
Run by tests/deploy.rs: python3 manifests.py KUBECTL OUTDIR; exits 1 with the reasons.
Writes each ConfigMap's sluice.yaml and prometheus-adapter's queries into OUTDIR for the
Rust test to check with `sluice validate` and promtool."""

import json
import pathlib
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.29.0"  # the first release whose API knows native sidecars
ROOT = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/example", "monitoring", "autoscaling"]
problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def build(kubectl, name):
    out = subprocess.run([kubectl, "kustomize", str(ROOT / name)], capture_output=True, text=True)
    if out.returncode != 0:
        problem(name, f"kubectl kustomize failed: {out.stderr.strip()}")
        return []
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate(name, obj):
    where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] == "ServiceMonitor":
        schema = json.loads((pathlib.Path(__file__).parent / "servicemonitor.schema.json").read_text())
        try:
            jsonschema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            problem(where, e.message)
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        problem(where, f"{'.'.join(map(str, e.path))}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        problem(where, f"no schema for {obj['apiVersion']} {obj['kind']} in Kubernetes {KUBERNETES_VERSION}")


def check_pod(name, objects):
    """What docs/deploy.md promises of the Deployment."""
    kinds = {o["kind"] for o in objects}
    for kind in ["Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"]:
        if kind not in kinds:
            problem(name, f"no {kind}")
    deployment = next((o for o in objects if o["kind"] == "Deployment"), None)
    if not deployment:
        return
    pod = deployment["spec"]["template"]["spec"]
    sidecar = next((c for c in pod.get("initContainers", []) if c["name"] == "sluice"), None)
    if not sidecar or sidecar.get("restartPolicy") != "Always":
        problem(name, "sluice is not a native sidecar (an init container with restartPolicy: Always)")
        return
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
        get = sidecar.get(probe, {}).get("httpGet", {})
        if get.get("port") != "metrics" or get.get("path") not in ("/healthz", "/readyz"):
            problem(name, f"{probe} is not on sluice's metrics listener")
    if sidecar["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problem(name, "readiness is not /readyz")
    for limit in ["requests", "limits"]:
        if "memory" not in sidecar.get("resources", {}).get(limit, {}):
            problem(name, f"sluice has no memory {limit}")
    if sidecar["securityContext"].get("runAsUser", 0) == 0:
        problem(name, "sluice runs as root")
    app = pod["containers"][0]
    if "preStop" not in app.get("lifecycle", {}):
        problem(name, "the app has no preStop")
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = volumes.get("sluice-config", {}).get("configMap")
    if not config or "subPath" in str(sidecar["volumeMounts"]):
        problem(name, "the config is not a ConfigMap mounted as a directory (a subPath never updates)")
    if "secret" not in volumes.get("sluice-admin", {}):
        problem(name, "the admin token is not from a Secret")
    configmap = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == config["name"])
    text = configmap["data"]["sluice.yaml"]
    settings = yaml.safe_load(text)
    metrics_port = settings["admin"]["metrics_listen"].rsplit(":", 1)
    if metrics_port[0] in ("127.0.0.1", "[::1]") or int(metrics_port[1]) != ports["metrics"]:
        problem(name, "admin.metrics_listen is not the pod's address on the probes' port")
    if int(settings["listen"].rsplit(":", 1)[1]) != ports["http"]:
        problem(name, "listen is not the container's http port")
    token = settings["admin"]["tokens"][0].get("token_file", "")
    if not token.startswith(mounts["sluice-admin"] + "/"):
        problem(name, "the token file is not in the Secret's mount")
    services = [o for o in objects if o["kind"] == "Service"]
    if not any(p.get("targetPort") == "http" for s in services for p in s["spec"]["ports"]):
        problem(name, "no Service points at sluice's port")
    if any(p.get("targetPort") in (8000, "8000") for s in services for p in s["spec"]["ports"]):
        problem(name, "a Service points at the app past sluice")
    return text


def main():
    kubectl, out = sys.argv[1], pathlib.Path(sys.argv[2])
    built = {name: build(kubectl, name) for name in KUSTOMIZATIONS}
    count = 0
    for name, objects in built.items():
        for obj in objects:
            validate(name, obj)
            count += 1
    for name in ["base", "overlays/example"]:
        text = check_pod(name, built[name])
        if text:
            (out / f"{name.replace('/', '-')}.sluice.yaml").write_text(text)
    if not any(o["kind"] == "HorizontalPodAutoscaler" for o in built["overlays/example"]):
        problem("overlays/example", "no HorizontalPodAutoscaler")
    if not any(o["kind"] == "ServiceMonitor" for o in built["monitoring"]):
        problem("monitoring", "no ServiceMonitor")
    adapter = next((o for o in built["autoscaling"] if o["kind"] == "ConfigMap"), None)
    queries = []
    for rule in yaml.safe_load(adapter["data"]["config.yaml"])["rules"] if adapter else []:
        series = rule["seriesQuery"].split("{")[0]
        for key in ["seriesQuery", "metricsQuery"]:
            query = rule[key].replace("<<.Series>>", series)
            query = query.replace("<<.LabelMatchers>>", 'namespace="shop",pod=~"app-.*"').replace("<<.GroupBy>>", "pod")
            queries.append(query)
    hpa_metrics = [m["pods"]["metric"]["name"] for o in built["overlays/example"] if o["kind"] == "HorizontalPodAutoscaler" for m in o["spec"]["metrics"]]
    exposed = [rule["name"]["as"] for rule in yaml.safe_load(adapter["data"]["config.yaml"])["rules"]] if adapter else []
    for metric in hpa_metrics:
        if metric not in exposed:
            problem("overlays/example", f"the HPA's metric {metric} is not one prometheus-adapter exposes")
    (out / "adapter-queries.json").write_text(json.dumps(queries))
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"ok: {count} objects from {len(KUSTOMIZATIONS)} kustomizations valid for Kubernetes {KUBERNETES_VERSION}")


main()
