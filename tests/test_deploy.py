"""deploy/: the KubeRay RayJob manifest and the Docker image.

The manifest is checked against KubeRay's own RayJob schema (ray.io/v1, cut down from the CRD by
deploy/kuberay/extract_schema.py, source commit recorded in the file), against the checks the
KubeRay operator runs before creating the cluster (utils/validation.go at the same commit), and
against mmpipe: the entrypoint must parse with mmpipe's CLI and build a valid job config.
There is no Kubernetes or Docker here, so nothing is applied or built.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
SCHEMA = ROOT / "deploy" / "kuberay" / "rayjob.schema.json"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def load_manifest() -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    assert len(docs) == 1, "rayjob.yaml should hold exactly one object"
    return docs[0]


def pinned(name: str) -> str:
    """The exact version constraints.txt (what the tests, CI and the image install) gives a
    distribution (``ray`` -> ``2.60.0``); pyproject.toml keeps ranges."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    found = [line.split("==", 1)[1] for line in lines if line.split("==")[0].lower() == name]
    assert len(found) == 1, f"{name} pinned {len(found)} times in constraints.txt"
    return found[0]


# ---------------------------------------------------------------- KubeRay CRD schema


def _unique_list_map_keys(validator, keys, instance, schema):
    """``x-kubernetes-list-type: map`` lists (containers, volumes, ports, env...) are keyed by
    these fields; the API server rejects duplicates, JSON Schema alone does not."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(instance, list):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry {dict(zip(keys, key))}")
            seen.add(key)


RayJobValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-map-keys": _unique_list_map_keys})


def schema_errors(doc: dict) -> list[str]:
    schema = yaml.safe_load(SCHEMA.read_text())  # JSON is YAML
    validator = RayJobValidator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))]


def test_schema_file_is_a_valid_pruned_crd_schema():
    import json

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    source = schema["x-source"]
    assert source["repository"] == "https://github.com/ray-project/kuberay"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["path"].endswith("ray.io_rayjobs.yaml") and source["version"] == "v1"
    assert SCHEMA.stat().st_size < 200_000, "keep the committed schema small (prune more)"
    # the fields the manifest relies on are really in it, with the CRD's required lists
    cluster = schema["properties"]["spec"]["properties"]["rayClusterSpec"]
    assert cluster["required"] == ["headGroupSpec"]
    workers = cluster["properties"]["workerGroupSpecs"]["items"]
    assert set(workers["required"]) == {"groupName", "maxReplicas", "minReplicas", "template"}
    assert "enableInTreeAutoscaling" in cluster["properties"]


def test_manifest_matches_kuberay_rayjob_schema():
    assert schema_errors(load_manifest()) == []


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split("/")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if value is _DELETE:
        del node[key]
    elif isinstance(node, list) and key == len(node):
        node.append(value)
    else:
        node[key] = value
    return doc


_DELETE = object()
_CLUSTER = "spec/rayClusterSpec"
_GPU = f"{_CLUSTER}/workerGroupSpecs/1"


@pytest.mark.parametrize("path, value, expected", [
    (f"{_CLUSTER}/headGroupSpec", _DELETE, "'headGroupSpec' is a required property"),
    (f"{_GPU}/groupName", _DELETE, "'groupName' is a required property"),
    (f"{_GPU}/maxReplicas", "8", "is not of type 'integer'"),
    # rayStartParams are strings for `ray start`; an unquoted number is a common mistake
    (f"{_GPU}/rayStartParams/object-store-memory", 8000000000, "is not of type 'string'"),
    (f"{_CLUSTER}/enableInTreeAutoscalling", True, "Additional properties are not allowed"),
    (f"{_GPU}/template/spec/containers/0/resources/limits/memory", "48 GB", "does not match"),
    (f"{_CLUSTER}/autoscalerOptions/upscalingMode", "Fast", "is not one of"),
    (f"{_GPU}/template/spec/containers/1", {"name": "ray-worker", "image": "x"}, "duplicate entry"),
    ("kind", "RayCluster", "'RayJob' was expected"),
])
def test_schema_rejects_broken_manifests(path, value, expected):
    """The schema is strict enough to catch the mistakes it is there for."""
    errors = schema_errors(_set(load_manifest(), path, value))
    assert any(expected in e for e in errors), errors


# ---------------------------------------------------------------- KubeRay operator checks


def groups(doc: dict) -> list[tuple[str, dict]]:
    """(name, group spec) for the head and each worker group."""
    cluster = doc["spec"]["rayClusterSpec"]
    return [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def test_manifest_passes_kuberay_operator_validation():
    """What KubeRay's ValidateRayJobMetadata / ValidateRayJobSpec / ValidateRayClusterSpec check
    (ray-operator/controllers/ray/utils/validation.go) for the features this manifest uses."""
    doc = load_manifest()
    name, spec = doc["metadata"]["name"], doc["spec"]
    assert len(name) <= 47, "RayJob names are at most 53 - 6 characters"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), "RayJob name must be a DNS-1035 label"
    assert spec.get("submissionMode", "K8sJobMode") in (
        "K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    assert spec.get("ttlSecondsAfterFinished", 0) >= 0
    if spec.get("ttlSecondsAfterFinished", 0) > 0:
        assert spec.get("shutdownAfterJobFinishes"), "a TTL needs shutdownAfterJobFinishes: true"
    assert spec.get("backoffLimit", 0) >= 0
    if spec.get("submissionMode") == "InteractiveMode":
        assert not spec.get("backoffLimit")
    assert spec["entrypoint"].strip()
    names = [n for n, _ in groups(doc)]
    assert len(set(names)) == len(names), "worker group names must be unique"
    for group_name, group in groups(doc):
        assert group["template"]["spec"]["containers"], f"{group_name}: no containers"
        params, resources = group.get("rayStartParams", {}), group.get("resources", {})
        if resources:
            assert not {"num-cpus", "num-gpus", "memory", "resources"} & set(params), \
                f"{group_name}: resources in both rayStartParams and resources"
        assert "labels" not in params, f"{group_name}: use the group's labels field"
        if group_name != "head":
            lo, hi = group["minReplicas"], group["maxReplicas"]
            assert 0 <= lo <= hi, f"{group_name}: minReplicas {lo} > maxReplicas {hi}"
            assert lo <= group.get("replicas", lo) <= hi


# ---------------------------------------------------------------- mmpipe-specific


def test_entrypoint_is_a_valid_mmpipe_embed_command(monkeypatch):
    """Run mmpipe's own CLI on the entrypoint up to the job config (flags, types, ranges), then
    stop before any model or data is touched."""
    import mmpipe.cli
    import mmpipe.jobs.embed as embed_job

    argv = shlex.split(load_manifest()["spec"]["entrypoint"])
    assert argv[:2] == ["mmpipe", "embed"], "the entrypoint runs `mmpipe embed` itself"

    class Stop(Exception):
        pass

    built = {}

    def fake_embed(input, out, *, progress=None, **options):
        # what mmpipe.jobs.embed.embed does first; ConfigError on a bad value
        built["cfg"] = embed_job.EmbedConfig.build(input=input, out=out, **options)
        raise Stop

    monkeypatch.setattr(embed_job, "embed", fake_embed)
    with pytest.raises(Stop):
        mmpipe.cli.main(argv[1:])  # an unknown flag or bad value exits 2 here instead
    cfg = built["cfg"]
    assert cfg.engine == "ray"
    # The driver runs on the head pod, where the RayJob's submission sets RAY_ADDRESS.
    assert cfg.ray_address == "auto"
    assert cfg.input.startswith("s3://"), "every worker reads the input: an object store"
    # Only the driver writes (shards and commit log), so --out is a volume of the head pod's,
    # a claim that outlives the cluster so that a retry resumes.
    head = load_manifest()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    claims = {v["name"] for v in head["volumes"] if "persistentVolumeClaim" in v}
    mounts = [m["mountPath"] for m in head["containers"][0]["volumeMounts"] if m["name"] in claims]
    assert any(cfg.out.startswith(m.rstrip("/") + "/") for m in mounts), cfg.out
    assert cfg.device.startswith("cuda"), "the manifest has a GPU group for the model stage"
    # one GPU per model actor: a pipeline is the text tower plus K image-tower parts
    gpus_needed = 1 if cfg.pipeline_stages == 1 else cfg.pipeline_stages + 1
    assert dict(groups(load_manifest()))["gpu"]["maxReplicas"] >= gpus_needed


def memory_bytes(quantity) -> float:
    """A Kubernetes quantity (``48Gi``, ``500M``, ``8e9``, ``1500m``) in bytes."""
    q = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "m": 1e-3}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if q.endswith(suffix):
            return float(q[:-len(suffix)]) * factor
    return float(q)


def test_output_claim_is_shipped_and_named_like_the_heads_volume():
    pvc = yaml.safe_load((MANIFEST.parent / "output-pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"]
    head = load_manifest()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in head["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]


def test_memory_quantities_parse():
    assert memory_bytes("48Gi") == 48 * 2**30
    assert memory_bytes("500M") == 500e6
    assert memory_bytes(8000000000) == 8e9
    assert memory_bytes("8e9") == 8e9


@pytest.mark.parametrize("group_name", ["head", "cpu", "gpu"])
def test_object_store_fits_shared_memory_and_container_memory(group_name):
    """Ray puts its object store in /dev/shm: the mount must be memory-backed and at least as
    big as the store (else Ray refuses or falls back to disk), and the store, which counts
    against the container's memory limit, must leave the processes room."""
    group = dict(groups(load_manifest()))[group_name]
    container = ray_container(group)
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    for resource in ("cpu", "memory"):
        assert requests[resource] == limits[resource], \
            f"{group_name}: requests = limits for {resource} (Ray sizes itself from the limits)"
    store = int(group["rayStartParams"]["object-store-memory"])  # bytes, as `ray start` wants
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    [volume] = [v for v in group["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    shm = volume["emptyDir"]
    assert shm["medium"] == "Memory"
    memory = memory_bytes(limits["memory"])
    assert store <= memory_bytes(shm["sizeLimit"]) <= memory
    assert store <= 0.5 * memory, f"{group_name}: object store leaves too little process memory"


def test_gpu_group_requests_gpus_and_autoscaling_is_on():
    doc = load_manifest()
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    gpus = {}
    for name, group in groups(doc):
        resources = ray_container(group)["resources"]
        gpus[name] = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
        if "nvidia.com/gpu" in resources.get("requests", {}):
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        if name != "head":
            assert group["maxReplicas"] > group["minReplicas"], f"{name}: nothing to autoscale"
    assert gpus["gpu"] >= 1, "the model stage's group needs nvidia.com/gpu limits"
    assert gpus["head"] == 0 and gpus["cpu"] == 0, "GPUs only where the model stage runs"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "keep tasks off the head (driver, GCS)"
    assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_versions_and_images_match_the_project():
    doc = load_manifest()
    ray_version = pinned("ray")
    assert doc["spec"]["rayClusterSpec"]["rayVersion"] == ray_version
    assert f"ARG RAY_VERSION={ray_version}\n" in DOCKERFILE.read_text()
    version = PYPROJECT["project"]["version"]
    for name, group in groups(doc):
        for container in group["template"]["spec"]["containers"]:
            repo, _, tag = container["image"].rpartition(":")
            variant = "gpu" if name == "gpu" else "cpu"
            assert tag == f"{version}-{variant}", f"{name}: image tag {tag!r}"
    env = {e["name"]: e.get("value") for e in ray_container(groups(doc)[0][1]).get("env", [])}
    if env.get("HF_HUB_OFFLINE") == "1":  # then the image must hold the job's model
        argv = shlex.split(doc["spec"]["entrypoint"])
        model = argv[argv.index("--model") + 1] if "--model" in argv else None
        baked = re.search(r"^ARG PREFETCH_MODEL=(\S*)$", DOCKERFILE.read_text(), re.M).group(1)
        from mmpipe.models.spec import DEFAULT_CLIP
        assert (model or DEFAULT_CLIP) == baked


# ---------------------------------------------------------------- Dockerfile
# Docker cannot run here, so these are text checks of what the image build relies on.


def test_dockerfile_installs_pinned_ray_extra_as_non_root():
    text = DOCKERFILE.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{VARIANT\}$", code, re.M)
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"  # admits py311, the tag's Python
    installs = [line for line in code.splitlines() if "pip install" in line]
    full = [line for line in installs if "--no-deps" not in line]
    assert full and all("-c /tmp/constraints.txt" in line and "'.[all]'" in line for line in full)
    assert all("--no-deps" in line for line in installs if line not in full)
    assert "COPY --chown=1000:100 pyproject.toml constraints.txt ./" in code
    users = re.findall(r"^USER (\S+)$", code, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end non-root"
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "a numeric USER lets runAsNonRoot check it"


def test_gpu_variant_rewrites_the_torch_pin_correctly():
    """constraints.txt pins torch's CPU build; the gpu variant's sed must turn exactly that line
    into the same version of the PyPI (CUDA) build."""
    text = DOCKERFILE.read_text()
    sed = re.search(r"sed -E 's/(.+?)/(.+?)/' constraints.txt", text)
    assert sed, "the Dockerfile's torch rewrite moved; update this test"
    pattern, replacement = sed.groups()  # sed -E and Python agree on this syntax
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    [torch] = [line for line in constraints if line.startswith("torch==")]
    rewritten = re.sub(pattern, replacement, torch)
    assert rewritten == f"torch=={pinned('torch').removesuffix('+cpu')}", (torch, rewritten)
    untouched = [line for line in constraints if line != torch]
    assert all(re.sub(pattern, replacement, line) == line for line in untouched)


def test_dockerignore_sends_only_what_the_build_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "allow-list: everything (.venv, .git, data) is out unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY"):
            args = [a for a in line.split()[1:] if not a.startswith("--")]
            copied.update(a.rstrip("/") for a in args[:-1])
    assert copied and copied <= allowed, copied - allowed
