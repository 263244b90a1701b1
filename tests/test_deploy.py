"""Deployment manifests: App Platform's termination block, the Kubernetes files in deploy/kubernetes
(validated offline against the Kubernetes schemas), and the examples in the deployment docs."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

from audiohook_server import CLOSE_WAIT
from config import ConfigError, load_profiles, load_settings

# Schemas shipped with kubernetes-validate; 1.30 is the oldest release its range (>=1.30) carries,
# so the manifests stay valid for clusters that old.
KUBERNETES_VERSION = "1.30.0"
KUBE_DIR = ROOT / "deploy" / "kubernetes"
SECRET_TEMPLATE = "secret.example.yaml"
# After the drain, the connector's last `disconnect`s wait up to CLOSE_WAIT for Genesys's `close`,
# and App.drain gives them a few seconds more: the platform must allow this much on top.
CLOSE_ALLOWANCE = 10.0
# The brief for Kubernetes: grace >= drain + about 15 s (preStop and close wait included).
KUBE_MARGIN = 15.0
APP_PLATFORM_MAX_DRAIN = 110
APP_PLATFORM_MAX_GRACE = 600
MINIMAL_ENV = {"GENESYS_API_KEY": "test-key", "OPENAI_API_KEY": "sk-test-not-a-real-key"}


def default_drain() -> float:
    """The connector's own default, read from the code rather than restated here."""
    return load_settings(MINIMAL_ENV).shutdown_drain_seconds


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def settings_map() -> dict[str, str]:
    return resource("ConfigMap", "connector-config")["data"]


def pod_spec() -> dict[str, Any]:
    return resource("Deployment")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return only


def container_port(port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container()["ports"] if p.get("name") == port)


def fenced_blocks(markdown: str, language: str) -> list[str]:
    """Fenced code blocks of one language, also when indented inside a list item."""
    pattern = re.compile(rf"^([ \t]*)```{language}\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    blocks = []
    for indent, body in pattern.findall(markdown):
        blocks.append("\n".join(line.removeprefix(indent) for line in body.splitlines()))
    return blocks


def image_repository(image: str) -> str:
    """`registry/name:tag` without the tag (a registry port's colon stays)."""
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


# App Platform


def app_platform_service() -> dict[str, Any]:
    return yaml.safe_load((ROOT / ".do" / "app.yaml").read_text())["services"][0]


def test_app_platform_termination_gives_the_drain_and_the_last_disconnects_their_time():
    service = app_platform_service()
    envs = {e["key"]: e.get("value") for e in service["envs"]}
    drain = float(envs["SHUTDOWN_DRAIN_SECONDS"])
    termination = service["termination"]
    # drain_seconds: out of the load balancer, calls go on, before SIGTERM.
    assert default_drain() <= drain <= termination["drain_seconds"] <= APP_PLATFORM_MAX_DRAIN
    # grace_period_seconds: SIGTERM to SIGKILL, the connector's own drain and close wait inside it.
    assert CLOSE_WAIT < CLOSE_ALLOWANCE
    grace = termination["grace_period_seconds"]
    assert drain + CLOSE_ALLOWANCE <= grace <= APP_PLATFORM_MAX_GRACE
    assert grace >= termination["drain_seconds"] + CLOSE_ALLOWANCE


def test_app_platform_builds_the_repository_dockerfile():
    service = app_platform_service()
    assert (ROOT / service["dockerfile_path"]).is_file()
    assert "environment_slug" not in service  # a buildpack slug beside a Dockerfile only confuses


# Kubernetes: schemas


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        # strict: an unknown field (a typo such as `terminationGracePeriod`) fails too.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_broken_deployment():
    broken = copy.deepcopy(resource("Deployment"))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 50
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(resource("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest_except_the_secret_template():
    kustomization = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifest_files()} - {SECRET_TEMPLATE}
    (image,) = kustomization["images"]
    assert image["name"] == image_repository(container()["image"])


# Kubernetes: the Deployment


def test_deployment_listens_on_port_and_probes_health_for_liveness_and_ready_for_readiness():
    port = int(settings_map()["PORT"])
    (declared,) = container()["ports"]
    assert declared["containerPort"] == port
    liveness, readiness = container()["livenessProbe"], container()["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/health"
    assert readiness["httpGet"]["path"] == "/ready"
    assert container_port(liveness["httpGet"]["port"]) == port
    assert container_port(readiness["httpGet"]["port"]) == port


def test_grace_period_covers_prestop_drain_and_close_wait():
    drain = float(settings_map()["SHUTDOWN_DRAIN_SECONDS"])
    assert drain >= default_drain()
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert 0 < pause <= 15  # long enough for endpoints to update, short next to the drain
    grace = pod_spec()["terminationGracePeriodSeconds"]
    # The preStop time is spent out of the same grace period.
    assert grace >= pause + drain + CLOSE_ALLOWANCE
    assert grace >= drain + KUBE_MARGIN


def dockerfile_uid() -> int:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].isdigit()
    assert f"--uid {users[-1]}" in text
    return int(users[-1])


def test_pods_run_as_the_images_non_root_user_with_a_read_only_root():
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == dockerfile_uid()
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_deployment_reads_the_configmap_and_secret_that_exist():
    sources = container()["envFrom"]
    config_names = {s["configMapRef"]["name"] for s in sources if "configMapRef" in s}
    secret_names = {s["secretRef"]["name"] for s in sources if "secretRef" in s}
    assert config_names == {"connector-config"}
    assert resource("ConfigMap", "connector-config")
    assert secret_names == {resource("Secret")["metadata"]["name"]}
    assert "replicas" not in resource("Deployment")["spec"]  # the HPA owns the count


def profiles_mount() -> tuple[str, str]:
    """(ConfigMap name, key) of the file BOT_PROFILES_PATH names, through the pod's mounts."""
    target = PurePosixPath(settings_map()["BOT_PROFILES_PATH"])
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    for mount in container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume and target.parent == PurePosixPath(mount["mountPath"]):
            items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
            return volume["configMap"]["name"], items.get(target.name, target.name)
    raise AssertionError(f"no ConfigMap volume is mounted where {target} lives")


def test_the_profiles_configmap_is_mounted_where_bot_profiles_path_points():
    name, key = profiles_mount()
    assert key in resource("ConfigMap", name)["data"]


def test_the_profiles_example_loads_with_the_connectors_own_loader(tmp_path: Path):
    name, key = profiles_mount()
    path = tmp_path / key
    path.write_text(resource("ConfigMap", name)["data"][key])
    profiles = load_profiles(str(path))
    assert set(profiles) == {"sales-bot", "billing-bot"}
    # The whole ConfigMap as the environment, the mounted file where the pod would see it.
    env = {**settings_map(), **MINIMAL_ENV, "BOT_PROFILES_PATH": str(path)}
    settings = load_settings(env)
    assert settings.port == int(settings_map()["PORT"])
    assert settings.shutdown_drain_seconds == float(settings_map()["SHUTDOWN_DRAIN_SECONDS"])
    sales = settings.call_config("sales-bot", {})
    assert sales.voice == "marin" and sales.agent_name == "Ava"
    assert settings.call_config("billing-bot", {}).model == "gpt-realtime-2.1"


# Kubernetes: the Secret template

# An OpenAI key, a JWT, or any long unbroken token (a base64 secret, an API key).
REAL_LOOKING = re.compile(r"sk-[A-Za-z0-9_-]{8,}|eyJ[A-Za-z0-9_-]{8,}|[A-Za-z0-9+/=_-]{24,}")


def test_the_secret_template_holds_placeholders_only():
    secret = resource("Secret")
    assert "data" not in secret  # base64 values could hide anything
    values = secret["stringData"]
    assert {"GENESYS_API_KEY", "OPENAI_API_KEY"} <= set(values)
    for key, value in values.items():
        assert re.fullmatch(r"<replace: [^<>]+>", value), key
        assert not REAL_LOOKING.search(value), key
    assert not set(values) & set(settings_map())  # no setting given twice, no secret in a ConfigMap


def test_an_unfilled_secret_template_stops_start_up():
    env = {**settings_map(), **resource("Secret")["stringData"]}
    env.pop("BOT_PROFILES_PATH")
    with pytest.raises(ConfigError, match="GENESYS_AUDIOHOOK_CLIENT_SECRET"):
        load_settings(env)


# Kubernetes: Service, PDB, HPA


def pod_labels() -> dict[str, str]:
    return resource("Deployment")["spec"]["template"]["metadata"]["labels"]


def selects_pods(selector: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= pod_labels().items()


def test_service_and_pdb_select_the_deployments_pods():
    assert selects_pods(resource("Deployment")["spec"]["selector"]["matchLabels"])
    service = resource("Service")
    assert selects_pods(service["spec"]["selector"])
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == int(settings_map()["PORT"])
    assert selects_pods(resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])


def test_hpa_scales_the_deployment_on_cpu_and_scales_down_slowly():
    hpa = resource("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = resource("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # CPU utilization is measured against the request: there must be one.
    assert "cpu" in container()["resources"]["requests"]
    # Each pod removed ends its calls after the drain: no faster than one per drain period.
    scale_down = hpa["spec"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300
    assert all(p["value"] == 1 for p in scale_down["policies"] if p["type"] == "Pods")


def test_the_ingress_example_is_valid_and_allows_hour_long_websockets():
    (block,) = fenced_blocks((KUBE_DIR / "README.md").read_text(), "yaml")
    ingress = yaml.safe_load(block)
    kubernetes_validate.validate(ingress, KUBERNETES_VERSION, strict=True)
    annotations = ingress["metadata"]["annotations"]
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) >= 3600
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/audiohook" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    service = resource("Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


# The docs' derived Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def copied_path(arguments: str) -> PurePosixPath:
    """Where `COPY <src> <dest>` puts a single file: into `dest` when it ends with a slash."""
    parts = [p for p in shlex.split(arguments) if not p.startswith("--")]
    assert len(parts) == 2, arguments
    source, destination = parts
    if destination.endswith("/"):
        return PurePosixPath(destination) / PurePosixPath(source).name
    return PurePosixPath(destination)


def test_copied_path_follows_dockers_directory_rule():
    assert copied_path("profiles.json /app/config/") == PurePosixPath("/app/config/profiles.json")
    assert copied_path("bots.json /app/config/profiles.json") == PurePosixPath("/app/config/profiles.json")


def test_the_derived_dockerfile_in_deploy_md_copies_the_profiles_where_its_env_points():
    blocks = fenced_blocks((ROOT / "docs" / "deploy.md").read_text(), "dockerfile")
    assert len(blocks) == 1
    instructions = dockerfile_instructions(blocks[0])
    assert instructions[0][0] == "FROM"
    assert image_repository(instructions[0][1]) == image_repository(container()["image"])
    copies = [copied_path(args) for op, args in instructions if op == "COPY"]
    envs = dict(args.split("=", 1) for op, args in instructions if op == "ENV")
    assert PurePosixPath(envs["BOT_PROFILES_PATH"]) in copies
    assert not set(envs) & set(resource("Secret")["stringData"])  # secrets never in the image
