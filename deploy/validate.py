"""Checks the manifests in deploy/: every core kind against the Kubernetes
schemas (kubernetes-validate, strict), the ServiceMonitor -- a CRD those
schemas do not have -- against schemas/servicemonitor.json, and that the
Service, ServiceMonitor and HPA point at what the Deployment defines.

Run by .ci/run: python deploy/validate.py (needs kubernetes-validate)."""

import json
import pathlib
import subprocess
import sys

import jsonschema
import yaml

HERE = pathlib.Path(__file__).parent
KUBERNETES = "1.33.0"


def load(name):
    return yaml.safe_load((HERE / name).read_text())


def main():
    core = [
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "hpa-recommended.yaml",
        "prometheus-adapter.yaml",
    ]
    subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES]
        + [str(HERE / f) for f in core],
        check=True,
    )
    schema = json.loads((HERE / "schemas" / "servicemonitor.json").read_text())
    jsonschema.validate(load("servicemonitor.yaml"), schema)

    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"] for p in container["ports"]}
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items(), "service selects the pods"
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, "service ports exist"
    monitor = load("servicemonitor.yaml")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert all(e["port"] in service_ports for e in monitor["spec"]["endpoints"])
    hpa = load("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    recommended = load("hpa-recommended.yaml")
    assert recommended["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    external = recommended["spec"]["metrics"][0]["external"]
    adapter = yaml.safe_load(load("prometheus-adapter.yaml")["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in adapter["externalRules"]}
    assert external["metric"]["name"] in served, "the adapter serves the HPA's external metric"
    assert external["target"] == {"type": "AverageValue", "averageValue": "1"}, (
        "desired replicas = the recommended count"
    )
    args = container["args"]
    drain = int(args[args.index("--drain-timeout") + 1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain, f"terminationGracePeriodSeconds {grace} must exceed the drain {drain}"
    for probe, path in [("livenessProbe", "/"), ("readinessProbe", "/ready")]:
        assert container[probe]["httpGet"]["path"] == path, probe
    print("deploy/: all manifests valid")


if __name__ == "__main__":
    sys.exit(main())
