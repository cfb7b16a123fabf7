#!/usr/bin/env python3
"""Checks deploy/k8s/ offline: every object against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict: unknown fields are errors), then what
a schema cannot see: references between objects resolve, images are pinned,
and the KV StatefulSet's peer list matches its replicas and headless Service.
Exits non-zero naming each problem.

  python3 tests/python/k8s_check.py deploy/k8s [--kubernetes-version 1.30.0]
"""
import argparse
import glob
import os
import re
import sys

import kubernetes_validate
import yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--kubernetes-version", default="1.30.0")
    a = ap.parse_args()
    problems, objects = [], []
    files = sorted(glob.glob(os.path.join(a.dir, "*.yaml")))
    if not files:
        problems.append(f"no manifests under {a.dir}")
    for f in files:
        with open(f) as fh:
            for doc in yaml.safe_load_all(fh):
                if not doc:
                    continue
                objects.append((f, doc))
                try:
                    kubernetes_validate.validate(doc, a.kubernetes_version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    problems.append(f"{f}: {doc.get('kind')}/{doc['metadata'].get('name')}: "
                                    f"{'.'.join(str(p) for p in e.path)}: {e.message}")

    by_kind = {}
    for f, o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o

    def pod_specs():
        for f, o in objects:
            spec = o.get("spec", {})
            if o["kind"] in ("Deployment", "StatefulSet", "Job"):
                yield f, o, spec["template"]["spec"], spec["template"]["metadata"].get("labels", {}) \
                    if "metadata" in spec["template"] else {}

    for f, o, ps, labels in pod_specs():
        name = f"{f}: {o['kind']}/{o['metadata']['name']}"
        for c in ps.get("containers", []):
            img = c["image"]
            if ":" not in img or img.endswith(":latest"):
                problems.append(f"{name}: image {img} is not pinned to a version")
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef", {}).get("name")
                if ref and ref not in by_kind.get("ConfigMap", {}):
                    problems.append(f"{name}: envFrom ConfigMap {ref} is not defined")
        for v in ps.get("volumes", []):
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                problems.append(f"{name}: volume claim {claim} is not defined")
            cm = v.get("configMap", {}).get("name")
            if cm and cm not in by_kind.get("ConfigMap", {}):
                problems.append(f"{name}: volume ConfigMap {cm} is not defined")
        sa = ps.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            problems.append(f"{name}: ServiceAccount {sa} is not defined")
        if o["kind"] in ("Deployment", "StatefulSet"):
            sel = o["spec"]["selector"]["matchLabels"]
            if any(labels.get(k) != v for k, v in sel.items()):
                problems.append(f"{name}: selector {sel} does not match the pod labels {labels}")

    for svc in by_kind.get("Service", {}).values():
        sel = svc["spec"].get("selector", {})
        if not any(all(lbl.get(k) == v for k, v in sel.items()) for _, _, _, lbl in pod_specs()):
            problems.append(f"Service/{svc['metadata']['name']}: selector {sel} matches no pod template")

    for sts in by_kind.get("StatefulSet", {}).values():
        n = sts["metadata"]["name"]
        svc = by_kind.get("Service", {}).get(sts["spec"]["serviceName"])
        if svc is None:
            problems.append(f"StatefulSet/{n}: serviceName {sts['spec']['serviceName']} is not defined")
        else:
            if svc["spec"].get("clusterIP") != "None":
                problems.append(f"StatefulSet/{n}: its Service is not headless (clusterIP: None)")
            if not svc["spec"].get("publishNotReadyAddresses"):
                problems.append(f"StatefulSet/{n}: peers cannot resolve each other before ready "
                                "(publishNotReadyAddresses)")
        if sts["spec"].get("podManagementPolicy") != "Parallel":
            problems.append(f"StatefulSet/{n}: podManagementPolicy is not Parallel")
        script = " ".join(" ".join(c.get("command", []) + c.get("args", []))
                          for c in sts["spec"]["template"]["spec"]["containers"])
        peers = re.findall(r"(\d+)=([a-z0-9-]+)-(\d+)\.([a-z0-9-]+):(\d+)", script)
        want = [(str(i + 1), n, str(i), sts["spec"]["serviceName"]) for i in range(sts["spec"]["replicas"])]
        if [p[:4] for p in peers] != want:
            problems.append(f"StatefulSet/{n}: --peers {peers} does not name its {sts['spec']['replicas']} "
                            f"pods as ID=<ordinal+1>={n}-<ordinal>.{sts['spec']['serviceName']}")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
                if p["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]]
        if not pdbs:
            problems.append(f"StatefulSet/{n}: no PodDisruptionBudget selects it")

    for p in problems:
        print(f"FAIL {p}")
    print(f"{len(objects)} objects in {len(files)} files checked against Kubernetes "
          f"{a.kubernetes_version}: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
