"""deploy/kuberay/: the Kubernetes core objects against Kubernetes' own schemas
(kubernetes-validate's bundled copies, strict: no unknown fields), and the RayCluster and
RayJob against KubeRay's documentation.

KubeRay's side comes from its API reference for ray.io/v1 (docs/reference/api.md) at
v1.5.1, the oldest release the manifests support (`authOptions` is new in it), and its
RayCluster configuration guide and rayStartParams guidance:

* RayClusterSpec: `headGroupSpec` is required; `rayVersion` is the image's Ray;
  `authOptions.mode` is `disabled` or `token`, and `token` needs Ray 2.52.0 or later.
* HeadGroupSpec: `template` (a PodTemplateSpec) is required; `rayStartParams` maps
  `ray start` options to strings.
* WorkerGroupSpec: `groupName`, `minReplicas`, `maxReplicas` and `template` are required
  (`groupName` unique); 0 <= minReplicas <= replicas <= maxReplicas; `rayStartParams` as
  for the head.
* The Ray container is the first container of each pod template (RayContainerIndex 0);
  Ray's `num-cpus` and `memory` default to its resource limits.
* RayJobSpec: `entrypoint` is the command `ray job submit` runs; `rayClusterSpec` (or a
  `clusterSelector`) names the cluster; `shutdownAfterJobFinishes` deletes the cluster
  after the job, `ttlSecondsAfterFinished` (>= 0) that many seconds later and only with
  it; `submissionMode` is K8sJobMode (default), HTTPMode, InteractiveMode or SidecarMode.
* Names: a RayCluster's is a DNS-1035 label of at most 53 characters, a RayJob's at most
  47 (KubeRay appends 6 characters to name its cluster).
"""

from __future__ import annotations

import re
import shlex

import kubernetes_validate
import pytest

from .support import DEPLOY, IMAGE_WORKDIR, ROOT, check_overcommit_args, load_yaml

KUBERAY = DEPLOY / "kuberay"
RAYCLUSTER = load_yaml(KUBERAY / "raycluster.yaml")
RAYJOB = load_yaml(KUBERAY / "rayjob.yaml")
PVC = load_yaml(KUBERAY / "results-pvc.yaml")
CONFIGMAP = load_yaml(KUBERAY / "prometheus-config.yaml")
# The oldest and the newest Kubernetes schemas we check against.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

# Fields of ray.io/v1 in KubeRay v1.5.1's API reference.
RAYCLUSTER_SPEC = {
    "authOptions", "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_SPEC = {
    "template", "headService", "enableIngress", "resources", "labels", "rayStartParams",
    "serviceType",
}  # fmt: skip
WORKER_GROUP_SPEC = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
AUTH_MODES = {"disabled", "token"}
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _cluster_specs() -> dict[str, dict]:
    return {"raycluster.yaml": RAYCLUSTER["spec"], "rayjob.yaml": RAYJOB["spec"]["rayClusterSpec"]}


def _pod_templates() -> list[tuple[str, dict]]:
    out = []
    for file, spec in _cluster_specs().items():
        out.append((f"{file} head", spec["headGroupSpec"]["template"]))
        for group in spec.get("workerGroupSpecs", []):
            out.append((f"{file} {group['groupName']}", group["template"]))
    return out


def _ray_version() -> str:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return next(line.split("==")[1] for line in lines if line.startswith("ray=="))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("where", [name for name, _ in _pod_templates()])
def test_pod_templates_are_valid_kubernetes(where, version):
    """Each group's template is a core/v1 PodTemplateSpec: checked as a PodTemplate's."""
    template = dict(_pod_templates())[where]
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "check"},
        "template": template,
    }
    kubernetes_validate.validate(wrapped, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("obj", [PVC, CONFIGMAP], ids=["results-pvc", "prometheus-config"])
def test_core_objects_are_valid_kubernetes(obj, version):
    kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field():
    template = {"spec": {"containers": [{"name": "ray-head", "volumeMount": []}]}}
    obj = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
        kubernetes_validate.validate({**obj, "template": template}, K8S_VERSIONS[-1], strict=True)


def test_objects_are_kuberay_v1_with_valid_names():
    for obj, limit in ((RAYCLUSTER, 53), (RAYJOB, 47)):
        assert obj["apiVersion"] == "ray.io/v1"
        name = obj["metadata"]["name"]
        assert DNS_1035.fullmatch(name) and len(name) <= limit, name
    assert RAYCLUSTER["kind"] == "RayCluster"
    assert RAYJOB["kind"] == "RayJob"


@pytest.mark.parametrize("file", ["raycluster.yaml", "rayjob.yaml"])
def test_cluster_spec_has_kuberays_required_fields(file):
    spec = _cluster_specs()[file]
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert spec["rayVersion"] == _ray_version()  # the image's Ray (constraints.txt)
    mode = spec.get("authOptions", {}).get("mode")
    assert mode in AUTH_MODES | {None}
    if mode == "token":
        assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52, 0)
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_SPEC, set(head) - HEAD_GROUP_SPEC
    _check_group(head, "head")
    names = [g["groupName"] for g in spec.get("workerGroupSpecs", [])]
    assert len(names) == len(set(names))
    for group in spec.get("workerGroupSpecs", []):
        assert set(group) <= WORKER_GROUP_SPEC, set(group) - WORKER_GROUP_SPEC
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(group)
        replicas = group.get("replicas", 0)
        assert 0 <= group["minReplicas"] <= replicas <= group["maxReplicas"], group["groupName"]
        _check_group(group, group["groupName"])


def _check_group(group: dict, where: str) -> None:
    params = group.get("rayStartParams", {})
    assert all(isinstance(v, str) for v in params.values()), f"{where}: {params}"
    assert "labels" not in params  # KubeRay refuses it: the group's labels field instead
    containers = group["template"]["spec"]["containers"]
    assert containers, where
    ray = containers[0]  # KubeRay runs `ray start` in the first container
    assert ray["name"].startswith("ray-") and ray["image"] == "overcommit-sim:latest", where
    # Ray's num-cpus and memory default to the Ray container's limits (rayStartParams
    # guidance); requests equal to them, as in the configuration guide's example.
    limits = ray["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits) and ray["resources"]["requests"] == limits, where


def test_a_runs_actors_stay_in_the_head_pod():
    """Host and guest-shard actors talk gRPC on loopback (docs/deploy.md, "One machine,
    today"): worker pods could not reach a host actor, so none are started."""
    assert all(g.get("replicas", 0) == 0 for g in RAYCLUSTER["spec"]["workerGroupSpecs"])
    assert not RAYJOB["spec"]["rayClusterSpec"].get("workerGroupSpecs")


def test_rayjob_spec_has_kuberays_fields_and_runs_a_spec():
    spec = RAYJOB["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert "rayClusterSpec" in spec or "clusterSelector" in spec
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    assert isinstance(spec["shutdownAfterJobFinishes"], bool)
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    assert ttl >= 0 and (ttl == 0 or spec["shutdownAfterJobFinishes"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "overcommit"
    check_overcommit_args(argv[1:], "deploy/kuberay/rayjob.yaml entrypoint")


def test_rayjob_writes_results_to_the_claimed_volume():
    spec = RAYJOB["spec"]
    argv = shlex.split(spec["entrypoint"])
    out = argv[argv.index("--out") + 1]
    pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == out]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == PVC["metadata"]["name"]
    assert out == f"{IMAGE_WORKDIR}/runs"  # where the sidecar's targets glob looks
    assert pod["securityContext"]["fsGroup"] == 1000  # the image's user may write the claim


def test_head_pods_mount_the_prometheus_configmap():
    for file, spec in _cluster_specs().items():
        pod = spec["headGroupSpec"]["template"]["spec"]
        sidecar = pod["containers"][1]
        (config,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == "/etc/prometheus"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == config["name"]]
        assert volume["configMap"]["name"] == CONFIGMAP["metadata"]["name"], file
        assert "prometheus.yml" in CONFIGMAP["data"]
        assert "--config.file=/etc/prometheus/prometheus.yml" in sidecar["args"], file
        assert "--web.listen-address=127.0.0.1:9090" in sidecar["args"], file  # loopback only
