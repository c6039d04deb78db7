"""Deployment files: cluster.yaml through Ray's own autoscaler validation, the KubeRay manifests, the Serve configs,
the Dockerfiles, and the docs.

Offline only: no AWS, no Kubernetes. What these tests cannot check (AMIs, IAM, the CRDs installed in a cluster) is
listed in docs/cluster.md.
"""

from __future__ import annotations

import ast
import copy
import json
import posixpath
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
KUBERAY = REPO / "deploy" / "kuberay"
SERVE_YAML = REPO / "deploy" / "serve.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERFILE_NEURON = REPO / "deploy" / "docker" / "Dockerfile.neuron"
DOCKERIGNORE = REPO / ".dockerignore"
DOCS = REPO / "docs"
TOKEN_SECRET = "hummingml-ray-auth"  # Kubernetes Secret (key auth_token), created from AWS Secrets Manager
SERVE_TOKEN_SECRET = "hummingml-serve-auth"  # Kubernetes Secret (key token): the HTTP API's bearer token
SERVE_IMPORT_PATH = "hummingml.serve.app:app_builder"
IMAGE_REGISTRY = "REPLACE_ME_ACCOUNT_ID.dkr.ecr.us-west-2.amazonaws.com"
IMAGE = f"{IMAGE_REGISTRY}/hummingml:REPLACE_ME_TAG"
NEURON_IMAGE = f"{IMAGE_REGISTRY}/hummingml-neuron:REPLACE_ME_TAG"
FSX_MOUNT = "/fsx"
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}
RAY_PORTS = {8265, 6379, 10001}  # dashboard + jobs API, GCS, Ray client


def load_cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared_cluster() -> dict[str, Any]:
    """cluster.yaml merged with Ray's AWS defaults, as `ray up` does before it talks to AWS."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(load_cluster()))


def kuberay_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(KUBERAY.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in kuberay_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) of every RayCluster, of every RayJob that brings its own cluster, and of every
    RayService."""
    specs = []
    for file, doc in kuberay_docs():
        if doc["kind"] == "RayCluster":
            specs.append((f"{file}:{doc['metadata']['name']}", doc["spec"]))
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            specs.append((f"{file}:{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"]))
        elif doc["kind"] == "RayService":
            specs.append((f"{file}:{doc['metadata']['name']}", doc["spec"]["rayClusterConfig"]))
    return specs


def pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec.get("workerGroupSpecs", [])]


def ray_start_resources(params: dict[str, str]) -> dict[str, float]:
    """``rayStartParams.resources`` as KubeRay reads it: surrounding quotes trimmed, then JSON."""
    return json.loads(params.get("resources", "{}").strip("'\"` "))


def container_images(doc: dict[str, Any]) -> set[str]:
    """Every ``image`` of a container anywhere in a manifest."""
    found: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "containers":
                found |= {c["image"] for c in value}
            else:
                found |= container_images(value)
    elif isinstance(doc, list):
        for item in doc:
            found |= container_images(item)
    return found


def walk(node: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair of a parsed YAML document, at any depth."""
    pairs = []
    if isinstance(node, dict):
        for key, value in node.items():
            pairs.append((key, value))
            pairs += walk(value)
    elif isinstance(node, list):
        for item in node:
            pairs += walk(item)
    return pairs


def rayservice() -> dict[str, Any]:
    return one("RayService", "hummingml-serve")


def serve_configs() -> dict[str, dict[str, Any]]:
    """The two Serve configs: deploy/serve.yaml and the RayService's serveConfigV2 (a YAML string in the manifest)."""
    return {
        "deploy/serve.yaml": yaml.safe_load(SERVE_YAML.read_text()),
        "serve-rayservice.yaml": yaml.safe_load(rayservice()["spec"]["serveConfigV2"]),
    }


def the_app(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    return app


def with_pin_stand_ins(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with the REPLACE_ME_*SHA256 placeholders replaced by syntactically valid digests."""
    args = copy.deepcopy(args)
    for key, value in args.get("models", {}).items():
        if isinstance(value, str) and re.fullmatch(r"REPLACE_ME_\w*SHA256", value):
            args["models"][key] = "0" * 64
    return args


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined, a heredoc's body and
    terminator appended to its instruction, as a shell reads them."""
    instructions = []
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        if heredoc := re.search(r"<<-?'?(\w+)'?", line):
            body = []
            for inner in lines:
                if inner.strip() == heredoc.group(1):
                    break
                body.append(inner)
            line += "\n" + "\n".join(body) + "\n" + heredoc.group(1)
        instruction, _, arguments = line.strip().partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def arg_default(instructions: list[tuple[str, str]], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for i, a in instructions if i == "ARG" and a.split("=", 1)[0] == name]
    return value


def locked_version(package: str) -> str:
    (version,) = re.findall(rf"(?m)^{re.escape(package)}==(\S+)$", (REPO / "requirements" / "lock.txt").read_text())
    return version


def entrypoint_args(job: dict[str, Any], module: str) -> list[str]:
    """The flags after ``python -m MODULE``; placeholders get syntactically valid stand-ins."""
    entrypoint = re.sub(r"REPLACE_ME_\w*SHA256", "0" * 64, job["spec"]["entrypoint"])
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", module], argv[:3]
    return argv[3:]


def all_commands(cfg: dict[str, Any]) -> list[str]:
    commands = [
        c
        for key in (
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
        for c in cfg.get(key, [])
    ]
    for node_type in cfg["available_node_types"].values():
        commands += node_type.get("worker_setup_commands", []) + node_type.get("initialization_commands", [])
    return commands


# ---------------------------------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import validate_config

    cfg = prepared_cluster()
    validate_config(cfg)
    assert cfg["provider"]["type"] == "aws"
    assert cfg["available_node_types"][cfg["head_node_type"]]["max_workers"] == 0
    # Every default command was replaced: nothing installs Ray's nightly wheel or starts a public dashboard.
    joined = "\n".join(all_commands(cfg))
    assert "ray-wheels" not in joined and "0.0.0.0" not in joined


def test_rays_validation_rejects_an_unknown_node_type_field() -> None:
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    cfg = prepared_cluster()
    cfg["available_node_types"]["trn1_train"]["neuron_cores"] = 32  # belongs under resources
    with pytest.raises(jsonschema.ValidationError):
        validate_config(cfg)


def test_node_types() -> None:
    from ray._private.accelerators.neuron import AWS_NEURON_INSTANCE_MAP

    types = load_cluster()["available_node_types"]
    instance = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    assert instance == {
        "head": "m7i.2xlarge",
        "cpu_extract": "c7i.8xlarge",
        "gpu_extract": "g6.xlarge",
        "trn1_train": "trn1.32xlarge",
    }
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["cpu_extract"]["min_workers"] < types["cpu_extract"]["max_workers"]
    assert types["gpu_extract"]["resources"]["GPU"] == 1
    trn1 = types["trn1_train"]["resources"]
    assert trn1["neuron_cores"] == 32 == AWS_NEURON_INSTANCE_MAP["trn1.32xlarge"]  # Ray's own count for the type
    assert trn1["CPU"] == 128


def test_trn1_has_efa_interfaces_as_rays_aws_provider_expects() -> None:
    node = load_cluster()["available_node_types"]["trn1_train"]["node_config"]
    interfaces = node["NetworkInterfaces"]
    assert len(interfaces) == 8  # trn1.32xlarge: 8 EFA devices
    assert all(ni["InterfaceType"] == "efa" for ni in interfaces)
    assert sorted(ni["NetworkCardIndex"] for ni in interfaces) == list(range(8))
    primary = [ni for ni in interfaces if ni["NetworkCardIndex"] == 0]
    assert primary[0]["DeviceIndex"] == 0
    # Ray's AWS provider refuses node-level subnets/groups next to NetworkInterfaces and needs both on each interface.
    assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & node.keys()
    assert all(ni["SubnetId"] and ni["Groups"] for ni in interfaces)
    assert node["Placement"]["GroupName"]


def test_no_public_ingress_and_a_local_dashboard() -> None:
    cfg = load_cluster()
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        ports = set(range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1))
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        assert not (ports & RAY_PORTS and cidrs & PUBLIC_CIDRS), rule
    # Every type names its security group, so Ray creates none (its default one opens SSH to 0.0.0.0/0).
    for name, node_type in cfg["available_node_types"].items():
        node = node_type["node_config"]
        groups = node.get("SecurityGroupIds") or [g for ni in node.get("NetworkInterfaces", []) for g in ni["Groups"]]
        assert groups, f"{name} has no security group of its own"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--num-cpus=0" in head_start


def test_ray_starts_with_token_auth_from_a_file_placed_by_setup() -> None:
    cfg = load_cluster()
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:  # each list item is its own shell: the export must be in the same item
        assert "export RAY_AUTH_MODE=token" in command
        assert command.index("export RAY_AUTH_MODE=token") < command.index("ray start")
        assert "source ~/hummingml/.venv/bin/activate" in command
    prepared = prepared_cluster()
    setups = {
        "head": prepared["head_setup_commands"],
        "workers": prepared["worker_setup_commands"],
        "trn1": cfg["available_node_types"]["trn1_train"]["worker_setup_commands"],
    }
    for where, commands in setups.items():
        token = [c for c in commands if "secretsmanager get-secret-value" in c]
        assert len(token) == 1, where
        assert "umask 077" in token[0] and "chmod 600 ~/.ray/auth_token" in token[0], where


def test_setup_installs_the_project_as_the_readme_does() -> None:
    cfg = load_cluster()
    assert cfg["file_mounts"] == {"~/hummingml": "."}
    assert ".gitignore" in cfg["rsync_filter"]  # keeps the local .venv out of the upload
    prepared = prepared_cluster()
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert "cd ~/hummingml && ./install.sh" in commands
    trn1 = cfg["available_node_types"]["trn1_train"]["worker_setup_commands"]
    neuron = [i for i, c in enumerate(trn1) if "https://pip.repos.neuron.amazonaws.com" in c]
    install = [i for i, c in enumerate(trn1) if "./install.sh --neuron" in c]
    assert len(neuron) == 1 and len(install) == 1 and neuron[0] < install[0]
    assert "torch-neuronx" in trn1[neuron[0]] and "neuronx-distributed" in trn1[neuron[0]]


def test_every_command_is_valid_bash() -> None:
    commands = all_commands(prepared_cluster())
    assert len(commands) > 10
    for command in commands:
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"{command}\n{result.stderr}"


def test_fsx_is_mounted_where_the_jobs_expect_it() -> None:
    commands = all_commands(prepared_cluster())
    targets = [m.group(1) for c in commands for m in re.finditer(r"mount -t lustre .*? (/\S*);", c)]
    assert targets and set(targets) == {FSX_MOUNT}


def test_one_region_everywhere() -> None:
    region = load_cluster()["provider"]["region"]
    files = [CLUSTER_YAML, *KUBERAY.glob("*.yaml"), SERVE_YAML, DOCKERFILE, DOCKERFILE_NEURON]
    text = "".join(p.read_text() for p in files)
    named = set(re.findall(r"--region (\S+)", text)) | set(re.findall(r"\.fsx\.([a-z0-9-]+)\.amazonaws\.com", text))
    named |= set(re.findall(r"\.ecr\.([a-z0-9-]+)\.amazonaws\.com", text))
    assert named == {region}


# ------------------------------------------------------------------------------------------------- KubeRay manifests


def test_kuberay_objects() -> None:
    kinds = sorted((doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) for _, doc in kuberay_docs())
    assert kinds == [
        ("ray.io/v1", "RayCluster", "hummingml-extract"),
        ("ray.io/v1", "RayJob", "hummingml-extract-v1"),
        ("ray.io/v1", "RayJob", "hummingml-train-m385"),
        ("ray.io/v1", "RayService", "hummingml-serve"),
        ("storage.k8s.io/v1", "StorageClass", "fsx-lustre-hummingml"),
        ("v1", "Namespace", "hummingml"),
        ("v1", "PersistentVolumeClaim", "hummingml-fsx"),
        ("v1", "ServiceAccount", "hummingml-ray"),
    ]
    assert not [doc for _, doc in kuberay_docs() if doc["kind"] == "Secret"]  # the token never lives in the repo
    extract = one("RayJob", "hummingml-extract-v1")["spec"]
    assert extract["clusterSelector"] == {"ray.io/cluster": "hummingml-extract"}
    train = one("RayJob", "hummingml-train-m385")["spec"]
    assert train["shutdownAfterJobFinishes"] is True and train["ttlSecondsAfterFinished"] > 0


def test_extraction_entrypoint_parses_and_pins_the_models() -> None:
    from ray_jobs.extract import parse

    cfg, _ = parse(entrypoint_args(one("RayJob", "hummingml-extract-v1"), "ray_jobs.extract"))
    assert cfg.input.startswith("s3://") and cfg.output.startswith("s3://")
    assert cfg.models.kind == "pretrained"
    assert cfg.models.dac_weights.startswith(f"{FSX_MOUNT}/") and cfg.models.demucs_repo.startswith(f"{FSX_MOUNT}/")
    assert cfg.models.dac_sha256 and cfg.models.demucs_sha256


def test_training_entrypoint_parses_and_fits_the_trn1_group() -> None:
    from ray_jobs.train import parse

    job = one("RayJob", "hummingml-train-m385")
    cfg, _ = parse(entrypoint_args(job, "ray_jobs.train"))
    assert cfg.preset == "m385"
    assert cfg.storage.startswith(f"{FSX_MOUNT}/")  # shared by every node: checkpoints and resume
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    cores = ray_start_resources(group["rayStartParams"])["neuron_cores"]
    assert cfg.world_size == cores  # README: one worker per NeuronCore, tp 8 x dp 4 on one trn1.32xlarge
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cfg.world_size * cfg.cpus_per_worker <= float(limits["cpu"]) * group["minReplicas"]


def test_trn1_worker_group_asks_for_neuron_cores_and_efa() -> None:
    (group,) = one("RayJob", "hummingml-train-m385")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "trn1.32xlarge"}
    (container,) = pod["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    for extended in ("aws.amazon.com/neuroncore", "vpc.amazonaws.com/efa"):
        assert requests[extended] == limits[extended]  # Kubernetes requires equal requests and limits for these
    assert int(limits["aws.amazon.com/neuroncore"]) == ray_start_resources(group["rayStartParams"])["neuron_cores"]
    # KubeRay pastes the value unquoted into the container's `ray start` shell line: the shell must leave valid JSON.
    raw = group["rayStartParams"]["resources"]
    shell = subprocess.run(["bash", "-c", f"printf %s {raw}"], capture_output=True, text=True, timeout=10)
    assert json.loads(shell.stdout) == ray_start_resources(group["rayStartParams"])
    assert (
        int(limits["aws.amazon.com/neuroncore"])
        == load_cluster()["available_node_types"]["trn1_train"]["resources"]["neuron_cores"]
    )
    efa_in_cluster_yaml = load_cluster()["available_node_types"]["trn1_train"]["node_config"]["NetworkInterfaces"]
    assert int(limits["vpc.amazonaws.com/efa"]) == len(efa_in_cluster_yaml)


def test_token_auth_on_every_ray_container_and_submitter() -> None:
    specs = ray_cluster_specs()
    assert len(specs) == 3
    for where, spec in specs:
        assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}, where
        assert tuple(int(x) for x in spec["rayVersion"].split(".")) >= (2, 52, 0), where  # KubeRay's minimum
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", where
    templates = [t for _, spec in specs for t in pod_templates(spec)]
    templates += [doc["spec"]["submitterPodTemplate"] for _, doc in kuberay_docs() if doc["kind"] == "RayJob"]
    assert len(templates) == 9
    for template in templates:
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "value" not in env["RAY_AUTH_TOKEN"]
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": TOKEN_SECRET, "key": "auth_token"}


def test_fsx_claim_is_mounted_on_every_ray_pod() -> None:
    claim = one("PersistentVolumeClaim", "hummingml-fsx")
    storage_class = one("StorageClass", claim["spec"]["storageClassName"])
    assert storage_class["provisioner"] == "fsx.csi.aws.com"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, spec in ray_cluster_specs():
        for template in pod_templates(spec):
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            mounts = {m["mountPath"]: m["name"] for c in template["spec"]["containers"] for m in c["volumeMounts"]}
            assert volumes[mounts[FSX_MOUNT]]["persistentVolumeClaim"]["claimName"] == "hummingml-fsx", where


# ---------------------------------------------------------------------------------------------------- Ray Serve app


def test_rayservice_uses_the_image_of_the_other_manifests() -> None:
    others = set().union(*(container_images(doc) for _, doc in kuberay_docs() if doc["kind"] != "RayService"))
    assert others == {IMAGE, NEURON_IMAGE}
    assert container_images(rayservice()) == {IMAGE}
    spec = rayservice()["spec"]["rayClusterConfig"]
    assert spec["rayVersion"] == locked_version("ray")
    assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu"]  # the GPU group is a comment
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # replicas run on the workers


def test_serve_configs_pass_serves_schema_and_build_the_app() -> None:
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from hummingml.config import ConfigError, from_dict
    from hummingml.serve import app as serve_app
    from hummingml.serve.config import ServeConfig, is_loopback

    module, _, attr = SERVE_IMPORT_PATH.partition(":")
    assert module == serve_app.__name__ and callable(getattr(serve_app, attr))
    for where, config in serve_configs().items():
        ServeDeploySchema.model_validate(config)  # what `serve deploy` and the dashboard check
        app = the_app(config)
        assert (app["name"], app["import_path"], app["route_prefix"]) == ("hummingml", SERVE_IMPORT_PATH, "/"), where
        args = with_pin_stand_ins(app["args"])
        cfg = from_dict(ServeConfig, args)
        assert cfg.problems() == [], where
        assert not is_loopback(cfg.host) and cfg.token_file.startswith("/"), where
        http = config["http_options"]
        assert (http["host"], http["port"]) == (cfg.host, cfg.port), where
        assert http["request_timeout_s"] == cfg.request_timeout_s + 30, where  # as `hummingml serve` sets it
        assert cfg.jobs_dir.startswith(f"{FSX_MOUNT}/"), where  # one directory for every API replica
        models = cfg.models
        assert models.kind == "pretrained" and models.dac_sha256 and models.demucs_sha256, where
        assert models.dac_weights.startswith(f"{FSX_MOUNT}/") and models.demucs_repo.startswith(f"{FSX_MOUNT}/")
        assert isinstance(getattr(serve_app, attr)(args), Application), where
        # The builder refuses the same args without the token: a host reachable from other machines needs one.
        with pytest.raises(ConfigError, match="token-file"):
            getattr(serve_app, attr)({**args, "token_file": ""})


def test_both_serve_configs_name_the_same_args() -> None:
    vm, kuberay = serve_configs().values()
    assert vm["http_options"] == kuberay["http_options"]
    vm_args, kuberay_args = the_app(vm)["args"], the_app(kuberay)["args"]
    assert vm_args.keys() == kuberay_args.keys()
    differ = {key for key in vm_args if vm_args[key] != kuberay_args[key]}
    assert differ == {"token_file"}  # a file on FSx on the VMs, the mounted Secret in the pods
    assert vm_args["token_file"].startswith(f"{FSX_MOUNT}/")


def test_serve_token_is_a_file_from_its_own_secret() -> None:
    token_file = the_app(serve_configs()["serve-rayservice.yaml"])["args"]["token_file"]
    directory, name = posixpath.split(token_file)
    assert SERVE_TOKEN_SECRET != TOKEN_SECRET  # API clients never get the Ray cluster token
    templates = pod_templates(rayservice()["spec"]["rayClusterConfig"])
    assert len(templates) == 2
    for template in templates:
        (volume,) = [v for v in template["spec"]["volumes"] if "secret" in v]
        secret = volume["secret"]
        assert secret["secretName"] == SERVE_TOKEN_SECRET
        assert secret["items"] == [{"key": "token", "path": name}]
        assert secret["defaultMode"] == 0o444  # the files belong to root; the image runs as ray (uid 1000)
        for container in template["spec"]["containers"]:
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
            assert mount == {"name": volume["name"], "mountPath": directory, "readOnly": True}
            # The serve token never travels as an environment variable; the Ray token keeps its secretKeyRef.
            refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e]
            assert refs == [TOKEN_SECRET]


def test_nothing_is_exposed_outside_the_kubernetes_cluster() -> None:
    kinds = {doc["kind"] for _, doc in kuberay_docs()}
    assert not kinds & {"Ingress", "Service", "Gateway", "HTTPRoute", "Route"}
    for file, doc in kuberay_docs():
        for key, value in walk(doc):
            assert not (key in ("type", "serviceType") and value in ("LoadBalancer", "NodePort")), file
            assert key not in ("hostPort", "hostNetwork", "externalIPs"), file
    spec = rayservice()["spec"]
    assert spec.get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert spec["rayClusterConfig"]["headGroupSpec"]["serviceType"] == "ClusterIP"


# ------------------------------------------------------------------------------------------------------- images


def test_images_are_tagged_as_the_manifests_name_them() -> None:
    for path, image in ((DOCKERFILE, IMAGE), (DOCKERFILE_NEURON, NEURON_IMAGE)):
        comments = " ".join(
            line.lstrip("# ").rstrip("\\ ") for line in path.read_text().splitlines() if line[:1] == "#"
        )
        builds = re.findall(r"docker build -f deploy/docker/(\S+) (?:\S+ )*?-t (\S+) \.(?:\s|$)", comments)
        assert builds == [(path.name, image)], path.name


def test_dockerfile_installs_the_lock_as_install_sh_does() -> None:
    instructions = dockerfile(DOCKERFILE)
    base = arg_default(instructions, "BASE_IMAGE")
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-cpu", base)
    assert match and match.group(1) == locked_version("ray")
    assert [a for i, a in instructions if i == "FROM"] == ["${BASE_IMAGE}"]
    steps = [
        "-r requirements/lock.txt",
        "--no-deps -r requirements/no-deps.txt",
        "--no-deps --no-build-isolation -e .",
        "python -m hummingml.doctor",
    ]
    install_sh = (REPO / "install.sh").read_text()
    assert '-r "$lock"' in install_sh and all(step in install_sh for step in steps[1:])  # the same three steps
    runs = [a for i, a in instructions if i == "RUN"]
    assert not [step for step in steps if not any(step in run for run in runs)]
    where = [next(n for n, run in enumerate(runs) if step in run) for step in steps]
    assert where == sorted(where), where  # in install.sh's order, the doctor last
    # The dependencies come from requirements/ alone (a cached layer); the whole tree arrives before the project.
    copies = [n for n, (i, a) in enumerate(instructions) if i == "COPY"]
    lock_run = instructions.index(("RUN", runs[where[0]]))
    project_run = instructions.index(("RUN", runs[where[2]]))
    assert instructions[copies[0]][1].endswith("requirements/ requirements/") and copies[0] < lock_run
    assert instructions[copies[1]][1].endswith(". .") and lock_run < copies[1] < project_run
    # The build checks that the venv holds exactly the lock and the --no-deps packages.
    check = [run for run in runs if "importlib" in run]
    assert len(check) == 1 and "requirements/lock.txt" in check[0] and "requirements/no-deps.txt" in check[0]
    envs = [a for i, a in instructions if i == "ENV"]
    assert "PATH=$APP_DIR/.venv/bin:$PATH" in envs and arg_default(instructions, "APP_DIR") == "/home/ray/hummingml"


def test_neuron_dockerfile_uses_install_sh_neuron() -> None:
    instructions = dockerfile(DOCKERFILE_NEURON)
    base = arg_default(instructions, "NEURON_DLC")
    assert base.startswith("public.ecr.aws/neuron/pytorch-training-neuronx:") and "-neuronx-py3" in base
    assert [a for i, a in instructions if i == "FROM"] == ["${NEURON_DLC}"]
    (run,) = [a for i, a in instructions if i == "RUN"]
    assert './install.sh --neuron --python "$PYTHON"' in run
    assert 'test "$dlc_torch" = "$venv_torch"' in run  # the DLC's torch is the one the venv uses
    install_sh = (REPO / "install.sh").read_text()
    assert "--system-site-packages" in install_sh and "python -m hummingml.doctor" in install_sh
    assert "PATH=$APP_DIR/.venv/bin:$PATH" in [a for i, a in instructions if i == "ENV"]


def test_dockerfile_run_steps_are_valid_bash_and_python() -> None:
    runs = [a for path in (DOCKERFILE, DOCKERFILE_NEURON) for i, a in dockerfile(path) if i == "RUN"]
    assert len(runs) >= 6
    for run in runs:
        result = subprocess.run(["bash", "-n", "-c", run], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"{run}\n{result.stderr}"
    scripts = [run.split("\n", 1)[1].rsplit("\n", 1)[0] for run in runs if run.startswith("python - <<")]
    assert len(scripts) == 1
    compile(scripts[0], "Dockerfile heredoc", "exec")


def test_dockerignore_keeps_local_state_out_and_the_build_inputs_in() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()[:1] not in ("", "#")}
    assert {".git", ".venv", ".ci-work", "demo-out", "serve-jobs", "train-runs", "**/__pycache__"} <= patterns
    # What `pip install -e .` and the doctor read: pyproject.toml names README.md and LICENSE.
    needed = ["requirements", "install.sh", "pyproject.toml", "README.md", "LICENSE", "hummingml", "ray_jobs"]
    assert not [p for p in needed if any(p == pattern.rstrip("/") or pattern in ("*", "**") for pattern in patterns)]


# ---------------------------------------------------------------------------------------------------------- no secrets


def test_no_token_or_key_material_in_deployment_files() -> None:
    files = [CLUSTER_YAML, *KUBERAY.glob("*.yaml"), SERVE_YAML, DOCKERFILE, DOCKERFILE_NEURON, DOCKERIGNORE]
    files += [DOCS / "cluster.md", DOCS / "security.md"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"\b[0-9a-fA-F]{32,}\b", text), f"{path.name}: a long hex string (token or digest?)"
        assert not re.search(r"RAY_AUTH_TOKEN=[^$\s\"']", text), f"{path.name}: a literal RAY_AUTH_TOKEN value"
        assert not re.search(r"Bearer [A-Za-z0-9]{16,}", text), f"{path.name}: a literal bearer token"
        assert "BEGIN RSA PRIVATE KEY" not in text and "aws_secret_access_key" not in text.lower(), path.name


# ------------------------------------------------------------------------------------------------------------- docs


def test_every_placeholder_is_documented() -> None:
    files = [CLUSTER_YAML, *KUBERAY.glob("*.yaml"), SERVE_YAML, DOCKERFILE, DOCKERFILE_NEURON]
    text = "".join(p.read_text() for p in files)
    placeholders = set(re.findall(r"REPLACE_ME_[A-Z0-9_]*[A-Z0-9]", text))
    assert placeholders
    documented = (DOCS / "cluster.md").read_text()
    assert not {p for p in placeholders if p not in documented}


def test_tests_cited_in_the_docs_exist() -> None:
    cited = set()
    for doc in ("security.md", "cluster.md"):
        cited |= set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", (DOCS / doc).read_text()))
    assert len(cited) >= 5
    for path, name in cited:
        tree = ast.parse((REPO / path).read_text())
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in names, f"{path}::{name} is cited in docs/ but does not exist"


# ---------------------------------------------------------------------------------------------------- --dry-run

JOB_MODULES = ("extract", "train", "evaluate", "remix", "study")
DOCUMENTED = [REPO / "README.md", *sorted(DOCS.glob("*.md")), *sorted((REPO / "ray_jobs").glob("*.py"))]
_COMMAND = re.compile(r"(?:\.venv/bin/)?(?:python -m ray_jobs\.(\w+)|hummingml (extract|study))\b([^`\n]*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, job, flags) of every concrete job command in the README, the docs and the jobs' docstrings.

    Code blocks are read line by line with continuation lines joined; inline code spans may wrap. A command with no
    flags is a mention, one holding ``...``, ``<`` or ``[`` a pattern, ``--help`` or ``--version`` no run: none is
    run.
    """
    found = []
    for path in DOCUMENTED:
        if path.name.endswith("-flags.md"):  # the generated flag reference
            continue
        pieces = path.read_text().split("```")
        for i, piece in enumerate(pieces):
            if i % 2:  # a fenced code block
                piece = re.sub(r"\\\n\s*", " ", piece)
            else:  # prose, or a docstring's indented examples
                piece = re.sub(r"\\\n\s*", " ", piece)
                piece = re.sub(r"`([^`]*)`", lambda m: "`" + m.group(1).replace("\n", " ") + "`", piece)
            for m in _COMMAND.finditer(piece):
                job = m.group(1) or m.group(2)
                rest = re.split(r"\s(?:&&|\||#|;)|\s\d?>", m.group(3))[0]
                if not rest.strip() or re.search(r"\.\.\.|<|\[|--help|--version", rest):
                    continue
                found.append((f"{path.relative_to(REPO)}: {m.group(0).strip()}", job, shlex.split(rest)))
    return found


def _dry_run(job: str, flags: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    """Run the job's entry point with ``--dry-run`` in this process: (exit code, the printed plan, stderr)."""
    import importlib

    flags = [re.sub(r"REPLACE_ME_\w*SHA256", "0" * 64, f) for f in flags]
    if job in ("extract", "study") and flags and flags[0] == "hummingml":
        flags = flags[1:]
    try:
        code = importlib.import_module(f"ray_jobs.{job}").main([*flags, "--dry-run"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    plan = json.loads(out[out.index("\n") + 1 :]) if code == 0 else {}
    return code, plan, err


def test_every_shipped_entrypoint_and_documented_command_passes_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    commands = documented_commands()
    for _, doc in kuberay_docs():
        if doc["kind"] == "RayJob":
            module = shlex.split(doc["spec"]["entrypoint"])[2]
            commands.append((f"RayJob {doc['metadata']['name']}", module.split(".")[1], entrypoint_args(doc, module)))
    jobs = {job for _, job, _ in commands}
    assert {"extract", "train", "evaluate", "remix"} <= jobs, jobs  # the scan finds the commands it is meant to
    assert any(where.startswith("RayJob hummingml-train") for where, _, _ in commands)
    for where, job, flags in commands:
        code, plan, err = _dry_run(job, flags, capsys)
        assert code == 0, f"{where}: exit {code}: {err.strip()}"
        assert plan["job"] == job, where


def test_dry_run_refuses_what_the_workers_would(capsys: pytest.CaptureFixture[str]) -> None:
    """The m385 Trainium launch without --parallel-zero1: refused in one line before any cluster is involved."""
    job = one("RayJob", "hummingml-train-m385")
    flags = [f for f in entrypoint_args(job, "ray_jobs.train") if f != "--parallel-zero1"]
    code, _, err = _dry_run("train", flags, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("ray_jobs.train: error: ") and "--parallel-zero1" in line


def test_training_dry_run_plans_the_trn1_launch(capsys: pytest.CaptureFixture[str]) -> None:
    job = one("RayJob", "hummingml-train-m385")
    code, plan, _ = _dry_run("train", entrypoint_args(job, "ray_jobs.train"), capsys)
    assert code == 0
    assert plan["placement"]["workers"] == 32 and plan["placement"]["per_worker"] == {"neuron_cores": 1}
    assert plan["mesh"]["dp"] * plan["mesh"]["tp"] == 32
    assert plan["models"]["ar_parameters"] == 384_943_104  # the m385 preset's docstring
    assert plan["checkpoints"]["run_dir"] == "/fsx/hummingml/train-runs/hummingml-m385"
