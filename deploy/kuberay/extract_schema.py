"""Cut the RayJob CRD's openAPIV3Schema down to a small JSON Schema that tests/test_deploy.py checks
deploy/kuberay/rayjob.yaml against.

The CRD KubeRay ships (ray-operator/config/crd/bases/ray.io_rayjobs.yaml) is about 1.4 MB, almost
all of it three copies of the full Kubernetes PodTemplateSpec. This keeps the ``ray.io/v1`` schema
of every RayJob and RayCluster field as it is (types, enums, required fields, defaults), and keeps
one shared copy of the pod template with only the pod and container fields listed below. On top of
the CRD it rejects unknown fields everywhere (``additionalProperties: false`` wherever an object
lists its properties), as ``kubectl apply`` does with its default ``--validate=strict``: a typo such
as ``rayStartParam`` fails the test instead of being silently pruned by the API server.

A pod field that is not kept fails validation too; to use one, add it to the lists below and run
the script again. The CRD's CEL rules (``x-kubernetes-validations``) stay in the output but JSON
Schema does not evaluate them.

Usage, with a clone of https://github.com/ray-project/kuberay (a bare mirror is enough):

    python deploy/kuberay/extract_schema.py /path/to/kuberay --ref v1.7.0

Needs only PyYAML (a dependency of mmpipe).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

CRD_PATH = "ray-operator/config/crd/bases/ray.io_rayjobs.yaml"
VERSION = "v1"
OUT = Path(__file__).with_name("rayjob.schema.json")

# What a Ray pod template may use: enough for images, resources, GPUs, node placement, shared
# memory, credentials and security settings. Probes are left out: KubeRay injects its own.
POD_SPEC_KEEP = [
    "containers", "initContainers", "volumes", "nodeSelector", "tolerations", "securityContext",
    "serviceAccountName", "imagePullSecrets", "priorityClassName", "runtimeClassName",
    "schedulerName", "restartPolicy", "terminationGracePeriodSeconds",
]
CONTAINER_KEEP = [
    "name", "image", "imagePullPolicy", "command", "args", "workingDir", "env", "envFrom", "ports",
    "resources", "volumeMounts", "securityContext",
]
VOLUME_KEEP = ["name", "emptyDir", "configMap", "secret", "persistentVolumeClaim", "csi"]


def load_crd(repo: str, ref: str) -> tuple[str, str]:
    """The CRD text at ``ref`` and the commit ``ref`` resolves to."""
    git = ["git", "-C", repo]
    commit = subprocess.run(git + ["rev-parse", f"{ref}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    text = subprocess.run(git + ["show", f"{commit}:{CRD_PATH}"], check=True,
                          capture_output=True, text=True).stdout
    return text, commit


def keep(schema: dict, names: list[str], where: str) -> dict:
    missing = [n for n in names if n not in schema["properties"]]
    if missing:
        sys.exit(f"{where} has no {missing}: update the keep lists for this KubeRay version")
    out = {k: v for k, v in schema.items() if k != "properties"}
    out["properties"] = {n: schema["properties"][n] for n in names}
    return out


def pod_template(template: dict) -> tuple[dict, dict]:
    """The pruned PodTemplateSpec and the Container schema it refers to."""
    template = copy.deepcopy(template)
    spec = template["properties"]["spec"]
    container = spec["properties"]["containers"]["items"]
    if spec["properties"]["initContainers"]["items"] != container:
        sys.exit("containers and initContainers differ in this CRD: give each its own definition")
    spec = keep(spec, POD_SPEC_KEEP, "PodSpec")
    for name in ("containers", "initContainers"):
        spec["properties"][name] = {**spec["properties"][name], "items": {"$ref": "#/$defs/Container"}}
    volumes = spec["properties"]["volumes"]
    spec["properties"]["volumes"] = {**volumes, "items": keep(volumes["items"], VOLUME_KEEP, "Volume")}
    template["properties"]["spec"] = spec
    return template, keep(container, CONTAINER_KEEP, "Container")


def strict(node):
    """additionalProperties: false on every object that lists its properties (kubectl's strict
    field validation); maps (additionalProperties given) and free-form objects stay open."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


def extract(crd_text: str, commit: str, ref: str) -> dict:
    import yaml

    crd = yaml.safe_load(crd_text)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    root = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    root["properties"].pop("status", None)  # written by the operator, never part of a manifest

    spec = root["properties"]["spec"]["properties"]
    cluster = spec["rayClusterSpec"]["properties"]
    # The same PodTemplateSpec appears three times; check that, then keep one pruned copy.
    templates = [cluster["headGroupSpec"]["properties"]["template"],
                 cluster["workerGroupSpecs"]["items"]["properties"]["template"],
                 spec["submitterPodTemplate"]]
    if any(t != templates[0] for t in templates[1:]):
        sys.exit("the pod templates differ in this CRD: prune each one separately")
    pod, container = pod_template(templates[0])
    ref_pod = {"$ref": "#/$defs/PodTemplateSpec"}
    cluster["headGroupSpec"]["properties"]["template"] = ref_pod
    cluster["workerGroupSpecs"]["items"]["properties"]["template"] = ref_pod
    spec["submitterPodTemplate"] = ref_pod

    # The root's apiVersion/kind are only typed as strings in the CRD; pin them here.
    root["properties"]["apiVersion"] = {"type": "string", "const": f"{crd['spec']['group']}/{VERSION}"}
    root["properties"]["kind"] = {"type": "string", "const": crd["spec"]["names"]["kind"]}
    root["required"] = sorted(set(root.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})

    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "KubeRay RayJob ray.io/v1 (pruned; see x-source)",
        "x-source": {
            "repository": "https://github.com/ray-project/kuberay",
            "ref": ref,
            "commit": commit,
            "path": CRD_PATH,
            "sha256": hashlib.sha256(crd_text.encode()).hexdigest(),
            "version": VERSION,
            "generated_by": "deploy/kuberay/extract_schema.py",
            "kept": {"PodSpec": POD_SPEC_KEEP, "Container": CONTAINER_KEEP, "Volume": VOLUME_KEEP},
            "strict": "additionalProperties: false on every object that lists its properties",
        },
        **strict(root),
        "$defs": {"PodTemplateSpec": strict(pod), "Container": strict(container)},
    }
    return schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kuberay", help="a clone (or bare mirror) of ray-project/kuberay")
    parser.add_argument("--ref", default="v1.7.0", help="tag, branch or commit (default: v1.7.0)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    text, commit = load_crd(args.kuberay, args.ref)
    schema = extract(text, commit, args.ref)
    args.out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"{args.out}: {args.out.stat().st_size} bytes from {args.ref} ({commit})")


if __name__ == "__main__":
    main()
