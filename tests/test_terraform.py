"""terraform/: formatting, checkov, and structure tests (python-hcl2) for what the deployment's
safety rests on; `terraform validate` against the provider's schema is test_terraform_validate.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path

import hcl2
import pytest

from objdetect import telemetry
from objdetect_serving.paths import ROOT
from objdetect_serving.release import RELEASE_ENV, RELEASE_SHA256_ENV

TERRAFORM_DIR = ROOT / "terraform"
TERRAFORM_ENV = {**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
# TorchServe management and metrics, and its gRPC inference and management: all on the container's loopback.
MANAGEMENT_AND_METRICS_PORTS = {8081, 8082, 7070, 7071}


@lru_cache(maxsize=1)
def config() -> dict:
    """Every .tf file merged: {"resource": {type: {name: body}}, "data": {...}, "variable": {name: body},
    "output": {...}, "locals": {...}, "provider": [bodies], "terraform": [bodies]}."""
    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
    merged: dict = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}, "provider": [], "terraform": []}
    for path in sorted(TERRAFORM_DIR.glob("*.tf")):
        with open(path) as handle:
            parsed = hcl2.load(handle, serialization_options=options)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    for name, body in named.items():
                        assert name not in merged[kind].setdefault(type_, {}), f"{type_}.{name} defined twice"
                        merged[kind][type_][name] = body
        for kind in ("variable", "output"):
            for block in parsed.get(kind, []):
                merged[kind].update(block)
        for block in parsed.get("locals", []):
            merged["locals"].update(block)
        for block in parsed.get("provider", []):
            merged["provider"].extend(block.values())
        merged["terraform"].extend(parsed.get("terraform", []))
    return merged


def resources(type_: str) -> dict:
    return config()["resource"].get(type_, {})


def one(value):
    """Blocks come as lists of one body."""
    assert isinstance(value, list) and len(value) == 1, value
    return value[0]


# --- tools -----------------------------------------------------------------------------------

@pytest.mark.integration
def test_terraform_files_are_formatted(terraform):
    done = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
                          capture_output=True, text=True, env=TERRAFORM_ENV, timeout=60)
    assert done.returncode == 0, f"terraform fmt would change:\n{done.stdout}{done.stderr}"


def checkov_binary() -> str:
    binary = os.environ.get("CHECKOV_BIN") or str(ROOT / ".venv-checkov" / "bin" / "checkov")
    if not Path(binary).exists():
        pytest.fail(f"checkov not found at {binary}: create its venv (make setup) or set CHECKOV_BIN")
    return binary


@pytest.mark.integration
def test_checkov_finds_no_failed_check_and_every_skip_says_why():
    # checkov ships its own copy of the hcl2 module: keep this interpreter's paths out of its venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([checkov_binary(), "--skip-download", "--framework", "terraform", "-d", str(TERRAFORM_DIR),
                           "--output", "json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.stdout.strip(), f"checkov printed nothing (exit {done.returncode}):\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100  # it really scanned the configuration
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) >= 40, f"{check['check_id']} on {check['resource']} is skipped without a real reason: {reason!r}"


@pytest.mark.unit
def test_every_checkov_skip_is_inline_in_its_resource():
    skips = [(path.name, line.strip()) for path in TERRAFORM_DIR.glob("*.tf")
             for line in path.read_text().splitlines() if "checkov:skip" in line]
    assert skips  # the known skips are documented in place
    for name, line in skips:
        assert re.fullmatch(r"#checkov:skip=CKV2?_AWS_\d+:.{40,}", line), f"{name}: {line}"


# --- versions, backend, variables, outputs ---------------------------------------------------

@pytest.fixture(scope="module")
def variables_only(tmp_path_factory, terraform) -> Path:
    """variables.tf alone: a configuration that needs no provider, so terraform evaluates its
    validation rules offline (`plan` with no resources)."""
    workdir = tmp_path_factory.mktemp("variables")
    shutil.copy(TERRAFORM_DIR / "variables.tf", workdir)
    init = subprocess.run([terraform, "init", "-input=false", "-no-color"], cwd=workdir,
                          capture_output=True, text=True, env=TERRAFORM_ENV, timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    return workdir


def plan_variables(terraform: str, workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    arguments = [f"-var={override}" for override in overrides]
    return subprocess.run([terraform, "plan", "-input=false", "-no-color", "-lock=false",
                           f"-var-file={TERRAFORM_DIR / 'terraform.tfvars.example'}", *arguments],
                          cwd=workdir, capture_output=True, text=True, env=TERRAFORM_ENV, timeout=60)


@pytest.mark.integration
def test_the_example_tfvars_passes_every_validation(terraform, variables_only):
    done = plan_variables(terraform, variables_only)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("override", [
    "image_tag=latest",
    "instance_type=m5.large",
    'allowed_cidrs=["0.0.0.0/0", "not-a-cidr"]',
    'public_subnet_ids=["subnet-0aaaaaaaaaaaaaaaa"]',
    "certificate_arn=arn:aws:iam::123456789012:server-certificate/x",
    "ssl_policy=ELBSecurityPolicy-2016-08",
    "log_retention_days=10",
    "max_tasks=0",
    "max_tasks=4",  # more than half of instance_max_count (6): a release runs old and new tasks side by side
    "target_capacity_percent=0",
    "scale_out_cooldown_seconds=30",
    "instance_max_count=0",
    'environment={"OBJDETECT_API_KEYS": "key"}',
    'environment={"OBJDETECT_RELEASE": "s3://objdetect-models/releases/r1.json"}',
    "name=ecs-objdetect",
    f'model_release={{uri = "https://objdetect-models.s3.amazonaws.com/releases/r1.json", sha256 = "{"a" * 64}"}}',
    f'model_release={{uri = "s3://objdetect-models/archives/{"a" * 64}.mar", sha256 = "{"a" * 64}"}}',
    f'model_release={{uri = "s3://objdetect-models/versions/detector/1.0.json", sha256 = "{"a" * 64}"}}',
    f'model_release={{uri = "s3://Objdetect_Models/releases/r1.json", sha256 = "{"a" * 64}"}}',
    f'model_release={{uri = "s3://objdetect-models/releases/r1.json", sha256 = "{"A" * 64}"}}',
    'model_release={uri = "s3://objdetect-models/releases/r1.json", sha256 = "abc"}',
    "scratch_mib=512",
    'model_operator_principals=["*"]',
    'model_operator_principals=["arn:aws:iam::123456789012:group/ml"]',
    "instance_type=g4ad.xlarge",  # AMD GPUs
    "instance_type=g5g.xlarge",  # Graviton: arm64
    "deployment_strategy=BLUE_GREEN",
    "deployment_strategy=canary",
    "canary_percent=0",
    "canary_percent=100.5",
    "canary_percent=12.34",
    "canary_bake_time_minutes=4",  # shorter than the judges need to fire
    "canary_bake_time_minutes=7.5",
    "linear_step_percent=2",
    "deployment_bake_time_minutes=0",
    "ecr_keep_images=30",
])
def test_variables_refuse_bad_values(terraform, variables_only, override):
    done = plan_variables(terraform, variables_only, override)
    variable = override.split("=", 1)[0]
    assert done.returncode != 0, f"{override} was accepted"
    assert "Invalid value for variable" in done.stderr and variable in done.stderr, done.stderr


@pytest.mark.integration
def test_a_release_and_operator_principals_pass_validation(terraform, variables_only):
    done = plan_variables(terraform, variables_only,
                          f'model_release={{uri = "s3://objdetect-models-123456789012-us-east-1/releases/r-1.json", '
                          f'sha256 = "{"0123456789abcdef" * 4}"}}',
                          'model_operator_principals=["arn:aws:iam::123456789012:role/ml-release", '
                          '"arn:aws:iam::210987654321:root"]', "scratch_mib=6144")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("overrides", [
    ("deployment_strategy=LINEAR", "linear_step_percent=12.5", "linear_step_bake_time_minutes=0"),
    ("deployment_strategy=ROLLING",),
    ("canary_percent=0.5", "canary_bake_time_minutes=5", "deployment_bake_time_minutes=1440"),
    ("instance_type=g5.xlarge",), ("instance_type=g6e.2xlarge",), ("instance_type=p4d.24xlarge",),
])
def test_the_release_strategies_and_nvidia_x86_instance_types_pass_validation(terraform, variables_only, overrides):
    done = plan_variables(terraform, variables_only, *overrides)
    assert done.returncode == 0, done.stdout + done.stderr


# hashicorp/aws 6.21.0 (its CHANGELOG: "Add support for LINEAR and CANARY deployment strategies with
# deployment_configuration.linear_configuration and deployment_configuration.canary_configuration")
# is the first with every argument service.tf uses; 6.69.1 is the schema make validate-terraform checks.
AWS_PROVIDER_FIRST_WITH_CANARY = (6, 21, 0)
AWS_PROVIDER_VALIDATED = (6, 69, 1)


def version_admits(constraint: str, version: tuple[int, ...]) -> bool:
    """Terraform's version constraints, for the >=, <, <=, > and = forms used here."""
    compare = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
               "=": lambda a, b: a == b}
    for part in constraint.split(","):
        operator, number = re.fullmatch(r"\s*(>=|<=|>|<|=)\s*([\d.]+)\s*", part).groups()
        bound = tuple(int(n) for n in number.split("."))
        bound += (0,) * (3 - len(bound))
        if not compare[operator](version, bound):
            return False
    return True


@pytest.mark.unit
def test_terraform_and_the_aws_provider_are_pinned():
    settings = config()["terraform"]
    assert any(block.get("required_version") == ">= 1.11" for block in settings)
    providers = [one(block["required_providers"]) for block in settings if "required_providers" in block]
    aws = one(providers)["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert aws["version"] == ">= 6.21, < 7.0"
    # The minimum is the first release with the canary's arguments, and the range admits the schema validated.
    assert version_admits(aws["version"], AWS_PROVIDER_FIRST_WITH_CANARY)
    assert not version_admits(aws["version"], (6, 20, 0)) and not version_admits(aws["version"], (6, 4, 0))
    assert version_admits(aws["version"], AWS_PROVIDER_VALIDATED)
    assert not version_admits(aws["version"], (7, 0, 0))
    comment = (TERRAFORM_DIR / "versions.tf").read_text()
    assert "6.21.0" in comment and "canary_configuration" in comment  # says why


@pytest.mark.unit
def test_state_lives_in_s3_with_a_lock_file():
    backends = [one(block["backend"]) for block in config()["terraform"] if "backend" in block]
    assert one(backends) == {"s3": {}}  # settings come from backend.hcl per environment
    example = (TERRAFORM_DIR / "backend.hcl.example").read_text()
    for setting in ("bucket", "key", "region"):
        assert re.search(rf"^{setting}\s*=", example, re.M)
    assert re.search(r"^use_lockfile\s*=\s*true", example, re.M)
    assert re.search(r"^encrypt\s*=\s*true", example, re.M)


@pytest.mark.unit
def test_every_variable_is_typed_and_described_and_the_example_sets_the_required_ones():
    variables = config()["variable"]
    for name, body in variables.items():
        assert body.get("type"), f"variable {name} has no type"
        assert len(body.get("description", "")) > 20, f"variable {name} has no real description"
    example = (TERRAFORM_DIR / "terraform.tfvars.example").read_text()
    for name, body in variables.items():
        if "default" not in body:
            assert re.search(rf"^{name}\s*=", example, re.M), f"terraform.tfvars.example does not set required {name}"
    unvalidated = {name: body["type"] for name, body in variables.items() if "validation" not in body}
    # only free-form ones (tags, booleans) go unvalidated
    assert all(type_ in ("bool", "${map(string)}") for type_ in unvalidated.values()), unvalidated


@pytest.mark.unit
def test_outputs_name_the_repository_load_balancer_cluster_and_service():
    outputs = config()["output"]
    expected = {"ecr_repository_url": "aws_ecr_repository.this.repository_url", "alb_dns_name": "aws_lb.this.dns_name",
                "cluster_name": "aws_ecs_cluster.this.name", "service_name": "aws_ecs_service.this.name",
                "model_operator_role_arn": "aws_iam_role.model_operator.arn"}
    for name, reference in expected.items():
        assert outputs[name]["value"] == "${" + reference + "}"
    assert outputs["model_store"]["value"] == "s3://${aws_s3_bucket.models.bucket}"  # scripts/models.py --store


# --- credentials -----------------------------------------------------------------------------

@pytest.mark.unit
def test_no_credentials_in_any_provider_block():
    providers = config()["provider"]
    assert providers
    for provider in providers:
        assert set(provider) <= {"region", "default_tags"}, f"provider sets {sorted(provider)}"
        assert provider["region"] == "${var.region}"


@pytest.mark.unit
def test_no_access_key_anywhere_in_terraform():
    access_key_id = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
    credential_argument = re.compile(r"^\s*(access_key|secret_key|token|shared_credentials_files?|profile)\s*=")
    files = [path for path in TERRAFORM_DIR.rglob("*") if path.is_file() and ".terraform" not in path.parts]
    assert files
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not access_key_id.search(line), f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            if path.suffix in (".tf", ".hcl", ".example", ".tfvars"):
                assert not credential_argument.search(line), f"{path.relative_to(ROOT)}:{number}: {line.strip()}"


# --- registry --------------------------------------------------------------------------------

@pytest.mark.unit
def test_ecr_tags_are_immutable_scanned_on_push_encrypted_and_expire():
    repository = resources("aws_ecr_repository")["this"]
    assert repository["image_tag_mutability"] == "IMMUTABLE"
    assert one(repository["image_scanning_configuration"])["scan_on_push"] is True
    assert one(repository["encryption_configuration"])["encryption_type"] in ("KMS", "AES256")
    policy = resources("aws_ecr_lifecycle_policy")["this"]
    assert policy["repository"] == "${aws_ecr_repository.this.name}"
    assert "imageCountMoreThan" in policy["policy"]


def lifecycle_rules() -> list[dict]:
    """The ECR lifecycle policy's rules: the object under jsonencode, parsed as HCL."""
    policy = resources("aws_ecr_lifecycle_policy")["this"]["policy"]
    match = re.fullmatch(r"\$\{jsonencode\((.*)\)\}", policy, re.S)
    assert match, policy
    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
    return hcl2.loads(f"policy = {match[1]}", serialization_options=options)["policy"]["rules"]


@pytest.mark.unit
def test_ecr_expires_untagged_images_only_by_age_and_keeps_a_generous_count_of_tagged_ones():
    """Task definition revisions name tagged images, and a rollback to one whose image expired
    fails to pull: untagged images expire, tagged ones only beyond a count no rollback reaches."""
    rules = sorted(lifecycle_rules(), key=lambda rule: rule["rulePriority"])
    assert [rule["action"] for rule in rules] == [{"type": "expire"}] * len(rules)
    untagged, tagged = rules  # exactly these two
    assert untagged["selection"] == {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                                     "countNumber": 7}
    assert tagged["selection"] == {"tagStatus": "tagged", "tagPatternList": ["*"], "countType": "imageCountMoreThan",
                                   "countNumber": "${var.ecr_keep_images}"}
    assert not [rule for rule in rules if rule["selection"]["tagStatus"] == "any"]  # "any" would count tagged images by age too
    variable = config()["variable"]["ecr_keep_images"]
    assert variable["default"] >= 500
    assert "var.ecr_keep_images >= 100" in one(variable["validation"])["condition"]
    reason = (TERRAFORM_DIR / "ecr.tf").read_text()
    assert "rollback" in reason and "refuse" in reason  # the decision and the scripts' check, written down


# --- the task --------------------------------------------------------------------------------

def container() -> dict:
    task = resources("aws_ecs_task_definition")["this"]
    assert task["container_definitions"] == "${jsonencode([local.container])}"
    return config()["locals"]["container"]


@pytest.mark.unit
def test_task_needs_one_gpu_on_ec2_in_awsvpc_mode():
    task = resources("aws_ecs_task_definition")["this"]
    assert task["requires_compatibilities"] == ["EC2"]
    assert task["network_mode"] == "awsvpc"
    assert container()["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert task["cpu"] == "${tostring(var.task_cpu)}" and task["memory"] == "${tostring(var.task_memory)}"
    variables = config()["variable"]
    # Sized for a g4dn.xlarge (4 vCPU, 16 GiB) with headroom for the agent, checked against the type.
    assert variables["instance_type"]["default"] == "g4dn.xlarge"
    assert variables["task_cpu"]["default"] < 4096 and variables["task_memory"]["default"] <= 16384 - 2048
    conditions = [p["condition"] for p in one(task["lifecycle"])["precondition"]]
    assert any("memory_size" in c for c in conditions) and any("default_vcpus" in c for c in conditions)


INSTANCE_TYPES = {  # type: (GPU manufacturers, architectures), as EC2's DescribeInstanceTypes reports them
    "g4dn.xlarge": (["NVIDIA"], ["x86_64"]), "g5.2xlarge": (["NVIDIA"], ["x86_64"]), "p4d.24xlarge": (["NVIDIA"], ["x86_64"]),
    "g4ad.xlarge": (["AMD"], ["x86_64"]), "g5g.xlarge": (["NVIDIA"], ["arm64"]), "m5.large": ([], ["x86_64", "i386"]),
}


def instance_type_accepted(instance_type: str) -> bool:
    """variables.tf's instance_type validation, run here: each can(regex(...)) of its condition, negated where it is."""
    condition = one(config()["variable"]["instance_type"]["validation"])["condition"]
    terms = re.findall(r'(!?)can\(regex\("((?:[^"\\]|\\.)*)", var\.instance_type\)\)', condition)
    assert len(terms) == condition.count("can(") >= 2 and condition.count("||") == 0, condition
    return all(bool(re.search(pattern.replace("\\\\", "\\"), instance_type)) != bool(negated) for negated, pattern in terms)


@pytest.mark.unit
def test_instance_types_must_be_nvidia_and_x86_64():
    """The image is CUDA on x86_64: g4ad (AMD GPUs) and Graviton types (g5g, arm64) are refused by the
    variable's validation and, whatever the name says, by preconditions on what EC2 reports."""
    for instance_type, (manufacturers, architectures) in INSTANCE_TYPES.items():
        fits = manufacturers and set(manufacturers) == {"NVIDIA"} and "x86_64" in architectures
        assert instance_type_accepted(instance_type) == bool(fits), instance_type
    conditions = [p["condition"] for p in one(resources("aws_ecs_task_definition")["this"]["lifecycle"])["precondition"]]
    assert "${length(data.aws_ec2_instance_type.gpu.gpus) > 0}" in conditions
    assert '${alltrue([for gpu in data.aws_ec2_instance_type.gpu.gpus : gpu.manufacturer == "NVIDIA"])}' in conditions
    assert '${contains(data.aws_ec2_instance_type.gpu.supported_architectures, "x86_64")}' in conditions
    platform = one(resources("aws_ecs_task_definition")["this"]["runtime_platform"])
    assert platform["cpu_architecture"] == "X86_64"


@pytest.mark.unit
def test_api_keys_come_from_secrets_manager_never_from_the_environment():
    definition = container()
    assert definition["secrets"] == [{"name": "OBJDETECT_API_KEYS", "valueFrom": "${aws_secretsmanager_secret.api_keys.arn}"}]
    assert "OBJDETECT_API_KEYS" not in json.dumps(definition["environment"])
    validation = one(config()["variable"]["environment"]["validation"])
    assert 'key != "OBJDETECT_API_KEYS"' in validation["condition"]
    assert "aws_secretsmanager_secret_version" not in config()["resource"]  # the value never enters the state


@pytest.mark.unit
def test_container_runs_as_non_root_with_init_health_check_and_logs():
    definition = container()
    assert definition["user"] == "10001:10001"
    assert definition["image"] == "${aws_ecr_repository.this.repository_url}:${var.image_tag}"
    assert definition["linuxParameters"]["initProcessEnabled"] is True
    assert definition["privileged"] is False
    assert definition["healthCheck"]["command"] == ["CMD", "python", "/opt/objdetect/scripts/server.py", "--check", "${var.model_name}"]
    assert definition["healthCheck"]["startPeriod"] == "${min(var.health_check_grace_period_seconds, 300)}"
    assert definition["stopTimeout"] == "${local.stop_timeout_s}"
    assert [m["containerPort"] for m in definition["portMappings"]] == ["${local.inference_port}"]
    assert config()["locals"]["inference_port"] == 8080
    logs = definition["logConfiguration"]
    assert logs["logDriver"] == "awslogs" and logs["options"]["awslogs-group"] == "${aws_cloudwatch_log_group.service.name}"


@pytest.mark.unit
def test_root_file_system_is_read_only_unless_ecs_exec_needs_it_and_scratch_space_is_writable():
    definition = container()
    assert definition["readonlyRootFilesystem"] == "${local.readonly_root}"
    assert config()["locals"]["readonly_root"] == "${!var.enable_execute_command}"
    assert {m["containerPath"] for m in definition["linuxParameters"]["tmpfs"]} == {"/tmp", "/home/objdetect"}


@pytest.mark.unit
def test_scratch_holds_two_versions_of_a_release_and_still_fits_the_tasks_memory():
    """/tmp (tmpfs) holds the release's archives, downloaded there, and TorchServe's unpacked copies;
    its pages count against the container's memory, which a precondition keeps in view."""
    local, variables = config()["locals"], config()["variable"]
    mounts = {m["containerPath"]: m["size"] for m in container()["linuxParameters"]["tmpfs"]}
    assert mounts == {"/tmp": "${local.scratch_mib}", "/home/objdetect": "${local.home_mib}"}
    assert local["scratch_mib"] == "${var.scratch_mib}"
    scratch = variables["scratch_mib"]["default"]
    archive_mib = 350 * 10**6 / 2**20
    assert scratch >= 2 * 2 * archive_mib + 1024  # two versions, archive and unpacked, plus logs and the JVM's files
    conditions = [p["condition"] for p in one(resources("aws_ecs_task_definition")["this"]["lifecycle"])["precondition"]]
    assert "${local.scratch_mib + local.home_mib + local.torchserve_min_mib <= var.task_memory}" in conditions
    assert local["torchserve_min_mib"] >= 4096  # the Java frontend (2 GiB) and a worker
    assert scratch + local["home_mib"] + local["torchserve_min_mib"] <= variables["task_memory"]["default"]


# --- load balancer, security groups ----------------------------------------------------------

@pytest.mark.unit
def test_target_group_checks_ping_and_targets_task_addresses():
    group = resources("aws_lb_target_group")["this"]
    check = one(group["health_check"])
    assert check["path"] == "/ping" and check["matcher"] == "200"
    assert group["target_type"] == "ip"
    assert group["port"] == "${local.inference_port}"


@pytest.mark.unit
def test_a_stopping_task_is_drained_by_the_load_balancer_then_by_its_entrypoint_before_sigkill():
    """The stop sequence of main.tf: deregistration lets any request through the load balancer
    finish; the entrypoint's drain (OBJDETECT_DRAIN_TIMEOUT_S) and TorchServe's stop fit stopTimeout."""
    local = config()["locals"]
    response_timeout = int(re.search(r"^default_response_timeout=(\d+)", (ROOT / "config.properties").read_text(),
                                     re.M).group(1))
    assert local["longest_request_s"] > response_timeout  # TorchServe answers or gives up first
    assert resources("aws_lb")["this"]["idle_timeout"] == "${local.longest_request_s}"
    assert resources("aws_lb_target_group")["this"]["deregistration_delay"] == "${local.longest_request_s}"
    assert local["drain_timeout_s"] == "${var.drain_timeout_seconds}"
    assert local["stop_timeout_s"] == "${local.drain_timeout_s + 15}"  # TorchServe stops in about 3 s
    assert container()["stopTimeout"] == "${local.stop_timeout_s}"
    validation = one(config()["variable"]["drain_timeout_seconds"]["validation"])["condition"]
    assert "var.drain_timeout_seconds <= 105" in validation  # 105 + 15 = ECS's largest stopTimeout, 120 s


@pytest.mark.unit
def test_the_container_requires_its_gpu_and_drains_within_stop_timeout_and_takes_extra_settings():
    """require_cuda on (a task whose GPU does not work fails its health check and is replaced),
    the drain bound the task definition leaves room for, request log lines in CloudWatch's embedded
    metric format; var.environment adds or overrides."""
    assert config()["locals"]["environment"] == ('${merge({OBJDETECT_REQUIRE_CUDA = "true", '
                                                 'OBJDETECT_DRAIN_TIMEOUT_S = tostring(local.drain_timeout_s), '
                                                 'OBJDETECT_CLOUDWATCH_NAMESPACE = local.metrics_namespace}, '
                                                 'var.environment, local.release_environment)}')
    assert container()["environment"] == "${[for key, value in local.environment : {name = key, value = value}]}"


@pytest.mark.unit
def test_https_with_a_certificate_tls12_and_redirect_else_plain_http():
    listeners = resources("aws_lb_listener")
    https, redirect, http = listeners["https"], listeners["http_redirect"], listeners["http"]
    assert https["count"] == redirect["count"] == "${local.https ? 1 : 0}"
    assert http["count"] == "${local.https ? 0 : 1}"
    assert config()["locals"]["https"] == '${var.certificate_arn != ""}'
    assert https["protocol"] == "HTTPS" and https["ssl_policy"] == "${var.ssl_policy}"
    assert config()["variable"]["ssl_policy"]["default"].startswith("ELBSecurityPolicy-TLS13-1-2")
    action = one(redirect["default_action"])
    assert action["type"] == "redirect"
    assert one(action["redirect"]) == {"port": "443", "protocol": "HTTPS", "status_code": "HTTP_301"}
    assert "HTTP without a certificate" in (TERRAFORM_DIR / "README.md").read_text()


def port_range(rule: dict) -> range | None:
    """The ports a rule opens; None for all ports (protocol -1)."""
    if str(rule.get("ip_protocol")) in ("-1", "all"):
        return None
    return range(int(resolve(rule["from_port"])), int(resolve(rule["to_port"])) + 1)


def resolve(value):
    """A number, or a reference to a local holding one ("${local.inference_port}")."""
    match = re.fullmatch(r"\$\{local\.(\w+)\}", str(value))
    return config()["locals"][match[1]] if match else value


@pytest.mark.unit
def test_no_rule_ever_opens_the_management_or_metrics_port():
    rules = {**resources("aws_vpc_security_group_ingress_rule"), **resources("aws_vpc_security_group_egress_rule")}
    assert rules
    assert not resources("aws_security_group_rule")
    for group in resources("aws_security_group").values():
        assert "ingress" not in group and "egress" not in group, "inline rules: keep every rule a resource, checked here"
    for name, rule in rules.items():
        ports = port_range(rule)
        assert ports is not None, f"rule {name} opens every port"
        assert not MANAGEMENT_AND_METRICS_PORTS & set(ports), f"rule {name} opens {ports}"


@pytest.mark.unit
def test_security_group_descriptions_use_only_characters_ec2_accepts():
    allowed = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=;{}!$*]*")  # EC2's set for groups and rules (no ' or &)
    described = {**resources("aws_security_group"), **resources("aws_vpc_security_group_ingress_rule"),
                 **resources("aws_vpc_security_group_egress_rule")}
    for name, body in described.items():
        text = re.sub(r"\$\{[^}]*\}", "x", body["description"])  # interpolations: names and CIDRs
        assert allowed.fullmatch(text), f"{name}: {body['description']!r}"


@pytest.mark.unit
def test_tasks_accept_only_the_inference_port_and_only_from_the_load_balancer():
    ingress = resources("aws_vpc_security_group_ingress_rule")
    to_tasks = {name: rule for name, rule in ingress.items() if rule["security_group_id"] == "${aws_security_group.task.id}"}
    assert list(to_tasks) == ["task_from_alb"]
    rule = to_tasks["task_from_alb"]
    assert rule["referenced_security_group_id"] == "${aws_security_group.alb.id}"
    assert "cidr_ipv4" not in rule
    assert rule["from_port"] == rule["to_port"] == "${local.inference_port}"
    assert not [r for r in ingress.values() if r["security_group_id"] == "${aws_security_group.instance.id}"]
    for rule in ingress.values():
        if rule["security_group_id"] == "${aws_security_group.alb.id}":
            assert rule["from_port"] in (80, 443) and rule["cidr_ipv4"] == "${each.value}"


# --- service, scaling, capacity --------------------------------------------------------------

@pytest.mark.unit
def test_service_rolls_back_failed_deployments_and_allows_ecs_exec():
    service = resources("aws_ecs_service")["this"]
    assert one(service["deployment_circuit_breaker"]) == {"enable": True, "rollback": True}
    assert service["enable_execute_command"] == "${var.enable_execute_command}"
    assert config()["variable"]["enable_execute_command"]["default"] is True
    assert service["health_check_grace_period_seconds"] == "${var.health_check_grace_period_seconds}"
    assert config()["variable"]["health_check_grace_period_seconds"]["default"] >= 120
    assert one(service["load_balancer"])["container_port"] == "${local.inference_port}"
    assert one(service["network_configuration"])["assign_public_ip"] is False
    assert one(service["capacity_provider_strategy"])["capacity_provider"] == "${aws_ecs_capacity_provider.gpu.name}"


@pytest.mark.unit
def test_service_scales_its_desired_count_between_min_and_max_tasks():
    # The policy's metric, cooldowns and spare capacity: tests/test_scaling.py.
    target = resources("aws_appautoscaling_target")["service"]
    assert target["scalable_dimension"] == "ecs:service:DesiredCount"
    assert target["min_capacity"] == "${var.min_tasks}" and target["max_capacity"] == "${var.max_tasks}"
    policy = resources("aws_appautoscaling_policy")["requests_per_task"]
    assert policy["policy_type"] == "TargetTrackingScaling"


@pytest.mark.unit
def test_gpu_instances_require_imdsv2_encrypt_volumes_and_join_the_cluster_with_gpu_support():
    template = resources("aws_launch_template")["gpu"]
    metadata = one(template["metadata_options"])
    assert metadata["http_tokens"] == "required" and metadata["http_put_response_hop_limit"] == 1
    volume = one(one(template["block_device_mappings"])["ebs"])
    assert volume["encrypted"] is True
    assert config()["data"]["aws_ssm_parameter"]["gpu_ami"]["name"] == \
        "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
    assert "ECS_CLUSTER=${var.name}" in template["user_data"] and "ECS_ENABLE_GPU_SUPPORT=true" in template["user_data"]
    assert template["instance_type"] == "${var.instance_type}"


@pytest.mark.unit
def test_capacity_provider_scales_gpu_instances_and_is_the_cluster_default():
    provider = one(resources("aws_ecs_capacity_provider")["gpu"]["auto_scaling_group_provider"])
    assert one(provider["managed_scaling"])["status"] == "ENABLED"
    assert provider["managed_termination_protection"] == "ENABLED"
    assert resources("aws_autoscaling_group")["gpu"]["protect_from_scale_in"] is True
    default = one(resources("aws_ecs_cluster_capacity_providers")["this"]["default_capacity_provider_strategy"])
    assert default["capacity_provider"] == "${aws_ecs_capacity_provider.gpu.name}"
    setting = one(resources("aws_ecs_cluster")["this"]["setting"])
    assert setting == {"name": "containerInsights", "value": "enabled"}


@pytest.mark.unit
def test_logs_are_encrypted_and_kept_for_the_configured_retention():
    groups = resources("aws_cloudwatch_log_group")
    assert groups
    for name, group in groups.items():
        assert group["retention_in_days"] == "${var.log_retention_days}", name
        assert group["kms_key_id"] == "${aws_kms_key.this.arn}", name
    assert resources("aws_kms_key")["this"]["enable_key_rotation"] is True


@pytest.mark.unit
def test_readme_walks_a_newcomer_from_prerequisites_to_teardown():
    readme = (TERRAFORM_DIR / "README.md").read_text()
    steps = re.findall(r"^### (\d+)\. ", readme, re.M)
    assert steps == [str(n) for n in range(1, len(steps) + 1)] and len(steps) >= 8
    for needed in ("## Deploy to AWS", "terraform init -backend-config=backend.hcl", "put-secret-value",
                   "scripts/push.py", "scripts/deploy.py", "X-API-Key", "aws ecs execute-command", "127.0.0.1:8081",
                   "0.526", "check current pricing", "NAT gateway", "terraform destroy", "ecr_force_delete",
                   "## Networking", "Not verified", "## Model releases", "scripts/models.py publish",
                   "scripts/models.py release", "scripts/models.py status", "scripts/models.py rollback",
                   "--allow-shapes", "output -raw model_store"):
        assert needed in readme, f"terraform/README.md does not mention {needed!r}"
    assert "Archives come with the image" not in readme  # a release brings them from the model store


# --- the model store (models.tf) and who may read and write it (iam.tf) ------------------------

ACCOUNT = "123456789012"
BUCKET_ARN = f"arn:aws:s3:::objdetect-models-{ACCOUNT}-us-east-1"
OPERATOR_ARN = f"arn:aws:iam::{ACCOUNT}:role/objdetect-model-operator"
TASK_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/objdetect-task"
ADMIN_ARN = f"arn:aws:iam::{ACCOUNT}:role/Admin"
STORE_KEYS = [f"archives/{'a' * 64}.mar", "releases/r-1.json", "versions/detector/2.0.json", "elsewhere/x"]
OBJECT_WRITES = ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectTagging", "s3:PutObjectAcl",
                 "s3:PutObjectRetention", "s3:RestoreObject"]


def statements(document: str) -> list[dict]:
    return config()["data"]["aws_iam_policy_document"][document]["statement"]


def resolved(text: str) -> str:
    for reference, value in (("${aws_s3_bucket.models.arn}", BUCKET_ARN), ("${aws_iam_role.model_operator.arn}", OPERATOR_ARN),
                             ("${aws_iam_role.task.arn}", TASK_ROLE_ARN)):
        text = text.replace(reference, value)
    return text


def action_matches(patterns: list[str], action: str) -> bool:
    return any(fnmatchcase(action.lower(), pattern.lower()) for pattern in patterns)  # IAM actions: case-insensitive


def store_policy_denies(action: str, key: str | None, principal: str, tls: bool = True, if_none_match: bool = False) -> bool:
    """Whether the bucket policy denies `principal` `action` on `key` (None: the bucket itself),
    over TLS or not, with S3's conditional-write header If-None-Match or without."""
    resource = BUCKET_ARN if key is None else f"{BUCKET_ARN}/{key}"
    for statement in statements("model_store"):
        if statement.get("effect", "Allow") != "Deny":
            continue
        assert statement["principals"] == [{"type": "*", "identifiers": ["*"]}]
        if not action_matches(statement["actions"], action):
            continue
        if not any(fnmatchcase(resource, resolved(pattern)) for pattern in statement["resources"]):
            continue
        holds = []
        for condition in statement.get("condition", []):
            values = [resolved(value) for value in condition["values"]]
            assert not [value for value in values if "${" in value], f"a principal this test cannot name: {values}"
            if (condition["test"], condition["variable"]) == ("Bool", "aws:SecureTransport"):
                holds.append(str(tls).lower() in values)
            elif condition["test"] in ("ArnNotEquals", "StringNotEquals") and condition["variable"] == "aws:PrincipalArn":
                holds.append(principal not in values)
            elif (condition["test"], condition["variable"]) == ("Null", "s3:if-none-match"):
                holds.append(str(not if_none_match).lower() in values)
            else:
                raise AssertionError(f"condition not modelled here: {condition}")
        if all(holds):
            return True
    return False


@pytest.mark.unit
def test_the_model_store_is_versioned_encrypted_with_the_deployments_key_and_private():
    bucket = resources("aws_s3_bucket")["models"]
    assert bucket["force_destroy"] == "${var.model_store_force_destroy}"
    assert config()["variable"]["model_store_force_destroy"]["default"] is False
    assert bucket["bucket"] == "${local.model_store_bucket}"
    assert config()["locals"]["model_store_bucket"] == "${var.name}-models-${local.account_id}-${var.region}"
    for type_ in ("aws_s3_bucket_versioning", "aws_s3_bucket_server_side_encryption_configuration",
                  "aws_s3_bucket_public_access_block", "aws_s3_bucket_ownership_controls",
                  "aws_s3_bucket_lifecycle_configuration", "aws_s3_bucket_policy"):
        assert resources(type_)["models"]["bucket"] == "${aws_s3_bucket.models.id}", type_
    assert one(resources("aws_s3_bucket_versioning")["models"]["versioning_configuration"])["status"] == "Enabled"
    rule = one(resources("aws_s3_bucket_server_side_encryption_configuration")["models"]["rule"])
    assert one(rule["apply_server_side_encryption_by_default"]) == {"sse_algorithm": "aws:kms",
                                                                    "kms_master_key_id": "${aws_kms_key.this.arn}"}
    assert rule["bucket_key_enabled"] is True
    block = resources("aws_s3_bucket_public_access_block")["models"]
    assert all(block[setting] is True for setting in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                                      "restrict_public_buckets"))
    ownership = one(resources("aws_s3_bucket_ownership_controls")["models"]["rule"])
    assert ownership["object_ownership"] == "BucketOwnerEnforced"


@pytest.mark.unit
def test_the_model_store_expires_replaced_versions_and_abandoned_uploads_but_never_current_objects():
    rule = one(resources("aws_s3_bucket_lifecycle_configuration")["models"]["rule"])
    assert rule["status"] == "Enabled" and rule["filter"] == [{}]
    assert one(rule["noncurrent_version_expiration"])["noncurrent_days"] == "${var.model_store_noncurrent_days}"
    assert config()["variable"]["model_store_noncurrent_days"]["default"] >= 30
    assert 1 <= one(rule["abort_incomplete_multipart_upload"])["days_after_initiation"] <= 7
    assert one(rule["expiration"]) == {"expired_object_delete_marker": True}  # a release's archives stay


@pytest.mark.unit
def test_the_model_store_refuses_plain_http_and_writes_from_anyone_but_the_operators_role():
    policy = resources("aws_s3_bucket_policy")["models"]
    assert policy["policy"] == "${data.aws_iam_policy_document.model_store.json}"
    for key in STORE_KEYS:
        for action in OBJECT_WRITES:
            for principal in (ADMIN_ARN, TASK_ROLE_ARN, f"arn:aws:iam::{ACCOUNT}:root", "arn:aws:iam::999999999999:root"):
                assert store_policy_denies(action, key, principal), f"{principal} may {action} {key}"
            assert not store_policy_denies(action, key, OPERATOR_ARN, if_none_match=True), f"the operators' role may not {action} {key}"
        assert not store_policy_denies("s3:GetObject", key, TASK_ROLE_ARN)  # reads are IAM's to allow
    for action in ("s3:GetObject", "s3:PutObject", "s3:ListBucket"):
        for key in (STORE_KEYS[0], None):
            assert store_policy_denies(action, key, OPERATOR_ARN, tls=False), f"{action} {key} without TLS"
    # Release manifests and version records are written once (scripts/models.py sends If-None-Match);
    # archives are named by their hash and verified by every task.
    for key in ("releases/r-1.json", "versions/detector/2.0.json"):
        assert store_policy_denies("s3:PutObject", key, OPERATOR_ARN, if_none_match=False), f"{key} could be replaced"
    assert not store_policy_denies("s3:PutObject", STORE_KEYS[0], OPERATOR_ARN, if_none_match=False)
    # The account's administrators keep the bucket's settings (terraform manages them).
    assert not store_policy_denies("s3:PutBucketPolicy", None, ADMIN_ARN)


def role_policies(role: str) -> dict:
    return {name: body for name, body in resources("aws_iam_role_policy").items() if body["role"] == f"${{aws_iam_role.{role}.id}}"}


@pytest.mark.unit
def test_the_task_role_reads_releases_and_archives_and_writes_nothing():
    attached = role_policies("task")
    assert attached["task_model_store"]["policy"] == "${data.aws_iam_policy_document.task_model_store.json}"
    assert "count" not in attached["task_model_store"]  # every task, whatever enable_execute_command says
    read, decrypt = statements("task_model_store")
    assert read["actions"] == ["s3:GetObject"]
    assert sorted(read["resources"]) == ["${aws_s3_bucket.models.arn}/archives/*", "${aws_s3_bucket.models.arn}/releases/*"]
    assert "effect" not in read and "condition" not in read
    assert decrypt["actions"] == ["kms:Decrypt"] and decrypt["resources"] == ["${aws_kms_key.this.arn}"]
    assert one(decrypt["condition"]) == {"test": "StringEquals", "variable": "kms:ViaService",
                                         "values": ["s3.${var.region}.amazonaws.com"]}
    documents = [re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", body["policy"])[1]
                 for body in attached.values()]
    granted = [action for document in documents for statement in statements(document) for action in statement["actions"]]
    assert not [action for action in granted if action.startswith("s3:") and action != "s3:GetObject"], granted
    assert not [a for a in granted if a.startswith("kms:") and a != "kms:Decrypt"], granted


def operator_allows(action: str, resource: str) -> list[dict]:
    """The statements of the operators' policy that allow `action` on `resource` (as written)."""
    return [statement for statement in statements("model_operator") if statement.get("effect", "Allow") == "Allow"
            and action_matches(statement["actions"], action)
            and any(fnmatchcase(resolved(resource), resolved(pattern)) for pattern in statement["resources"])]


@pytest.mark.unit
def test_the_operators_role_publishes_releases_and_rolls_out_this_service_only():
    role = resources("aws_iam_role")["model_operator"]
    assert role["name"] == "${var.name}-model-operator"
    assert role_policies("model_operator")["model_operator"]["policy"] == "${data.aws_iam_policy_document.model_operator.json}"
    trust = one(statements("model_operator_assume"))
    assert trust["actions"] == ["sts:AssumeRole"]
    assert trust["principals"] == [{"type": "AWS", "identifiers": "${local.model_operator_principals}"}]
    assert config()["locals"]["model_operator_principals"] == (
        '${length(var.model_operator_principals) > 0 ? var.model_operator_principals : '
        '["arn:${local.partition}:iam::${local.account_id}:root"]}')
    assert config()["variable"]["model_operator_principals"]["default"] == []
    # The store: write and read each prefix, list the bucket; delete nothing.
    for prefix in ("archives", "versions", "releases"):
        for action in ("s3:PutObject", "s3:GetObject"):
            assert operator_allows(action, f"{BUCKET_ARN}/{prefix}/x"), f"{action} {prefix}/"
    assert not operator_allows("s3:PutObject", f"{BUCKET_ARN}/elsewhere/x")
    assert operator_allows("s3:AbortMultipartUpload", f"{BUCKET_ARN}/archives/x")  # an interrupted large upload
    assert operator_allows("s3:ListBucket", BUCKET_ARN)
    granted = [action for statement in statements("model_operator") for action in statement["actions"]]
    assert not [action for action in granted if re.match(r"s3:(Delete|PutBucket|PutObjectAcl)|s3:\*|ecs:\*|iam:\*", action)]
    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        (statement,) = operator_allows(action, "${aws_kms_key.this.arn}")
        assert one(statement["condition"])["values"] == ["s3.${var.region}.amazonaws.com"]
    # ECS: this service, this cluster's tasks, this family's tags; "*" only where AWS allows nothing narrower.
    for action in ("ecs:DescribeServices", "ecs:UpdateService"):
        (statement,) = operator_allows(action, "${aws_ecs_service.this.arn}")
        assert statement["resources"] == ["${aws_ecs_service.this.arn}"]
    (statement,) = operator_allows("ecs:ListTasks", "*")
    assert one(statement["condition"]) == {"test": "ArnEquals", "variable": "ecs:cluster", "values": ["${aws_ecs_cluster.this.arn}"]}
    assert operator_allows("ecs:DescribeTasks", "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/t")
    (statement,) = operator_allows("ecs:TagResource", "${aws_ecs_task_definition.this.arn_without_revision}:7")
    assert one(statement["condition"])["values"] == ["RegisterTaskDefinition"]
    unscoped = {action for statement in statements("model_operator") if "*" in statement["resources"]
                for action in statement["actions"]}
    assert unscoped == {"ecs:DescribeTaskDefinition", "ecs:ListTaskDefinitions", "ecs:RegisterTaskDefinition", "ecs:ListTasks"}
    # A revision may name exactly the task and execution roles, for ECS tasks.
    (pass_role,) = [statement for statement in statements("model_operator") if "iam:PassRole" in statement["actions"]]
    assert pass_role["actions"] == ["iam:PassRole"]
    assert sorted(pass_role["resources"]) == ["${aws_iam_role.execution.arn}", "${aws_iam_role.task.arn}"]
    assert one(pass_role["condition"]) == {"test": "StringEquals", "variable": "iam:PassedToService",
                                           "values": ["ecs-tasks.amazonaws.com"]}


@pytest.mark.unit
def test_a_task_definition_names_its_release_in_two_environment_variables_from_model_release():
    local = config()["locals"]
    assert (RELEASE_ENV, RELEASE_SHA256_ENV) == ("OBJDETECT_RELEASE", "OBJDETECT_RELEASE_SHA256")
    assert local["release_environment"] == ("${var.model_release == null ? {} : "
                                            "{OBJDETECT_RELEASE = var.model_release.uri, "
                                            "OBJDETECT_RELEASE_SHA256 = var.model_release.sha256}}")
    assert local["environment"].endswith(", local.release_environment)}")  # after var.environment: the release wins
    variable = config()["variable"]["model_release"]
    assert variable["default"] is None and variable["type"] == "${object({uri = string, sha256 = string})}"
    # var.environment cannot name a release behind model_release's back.
    condition = one(config()["variable"]["environment"]["validation"])["condition"]
    assert '!contains(["OBJDETECT_RELEASE", "OBJDETECT_RELEASE_SHA256"], key)' in condition
    # A release in another store could not be read by the task role: terraform refuses it at plan.
    conditions = [p["condition"] for p in one(resources("aws_ecs_task_definition")["this"]["lifecycle"])["precondition"]]
    assert ('${var.model_release == null ? true : startswith(var.model_release.uri, '
            '"s3://${aws_s3_bucket.models.bucket}/releases/")}') in conditions


# --- monitoring.tf ---------------------------------------------------------------------------

ALB, ECS = "AWS/ApplicationELB", "ECS/ContainerInsights"
OURS = "${local.metrics_namespace}"
# alarm: (threshold, expression, [(namespace, metric, statistic, dimensions)])
ALARMS = {
    "alb-5xx-rate": ("${var.alarm_5xx_percent}", "100 * (FILL(m1, 0) + FILL(m2, 0)) / m3", [
        (ALB, "HTTPCode_Target_5XX_Count", "Sum", "load_balancer"), (ALB, "HTTPCode_ELB_5XX_Count", "Sum", "load_balancer"),
        (ALB, "RequestCount", "Sum", "load_balancer")]),
    "p99-response-time": ("${var.alarm_p99_response_seconds}", "m1",
                          [(ALB, "TargetResponseTime", "p99", "load_balancer")]),
    "unhealthy-hosts": (0, "MAX([FILL(m1, 0), FILL(m2, 0)])", [(ALB, "UnHealthyHostCount", "Maximum", "target_group"),
                                                               (ALB, "UnHealthyHostCount", "Maximum", "alternate_group")]),
    "tasks-below-desired": (0, "m1 - m2", [(ECS, "DesiredTaskCount", "Maximum", "ecs_service"),
                                           (ECS, "RunningTaskCount", "Minimum", "ecs_service")]),
    "model-error-rate": ("${var.alarm_model_error_percent}", "100 * m1 / m2",
                         [(OURS, "server_errors", "Sum", "model"), (OURS, "requests", "Sum", "model")]),
    "predict-p99": ("${var.alarm_predict_p99_ms}", "m1", [(OURS, "predict_ms", "p99", "model")]),
    "gpu-memory": ("${floor(0.9 * local.gpu_memory_mib)}", "m1", [(OURS, "gpu_memory_mb", "Maximum", "model")]),
    "gpu-utilization": (90, "m1", [(OURS, "gpu_utilization_percent", "Average", "model")]),
}


@pytest.mark.unit
def test_each_alarm_judges_its_metrics_against_its_threshold_and_notifies_the_topic():
    alarms = config()["locals"]["alarms"]
    assert set(alarms) == set(ALARMS)
    for name, (threshold, expression, metrics) in ALARMS.items():
        alarm = alarms[name]
        assert (alarm["threshold"], alarm["expression"]) == (threshold, expression), name
        assert [tuple(m[1:4]) + (m[4],) for m in alarm["metrics"]] == \
            [(ns, metric, stat, f"${{local.{dims}}}") for ns, metric, stat, dims in metrics], name
        assert [m[0] for m in alarm["metrics"]] == [f"m{i}" for i in range(1, len(metrics) + 1)]
        assert all(re.search(rf"\bm{i}\b", expression) for i in range(1, len(metrics) + 1)), name
        assert 1 <= alarm["datapoints"] <= alarm["minutes"], name
    resource = resources("aws_cloudwatch_metric_alarm")["this"]
    assert resource["for_each"] == "${local.alarms}" and resource["comparison_operator"] == "GreaterThanThreshold"
    assert resource["alarm_actions"] == resource["ok_actions"] == ["${aws_sns_topic.alarms.arn}"]
    assert resource["treat_missing_data"] == "notBreaching"  # no traffic is not an outage
    assert one(resource["metric_query"])["return_data"] is True
    metric = one(one(one(resource["dynamic"])["metric_query"]["content"])["metric"])
    assert metric["dimensions"] == "${metric_query.value[4]}" and metric["period"] == 60


@pytest.mark.unit
def test_the_models_alarms_and_dashboard_read_what_each_request_log_line_carries():
    """Our metrics exist only as members of the log line (objdetect/telemetry.py), per model."""
    ours = {m[2] for alarm in config()["locals"]["alarms"].values() for m in alarm["metrics"] if m[1] == OURS}
    dashboard = resources("aws_cloudwatch_dashboard")["this"]["dashboard_body"]
    stages = config()["locals"]["stages"]
    assert ours <= set(telemetry.EMBEDDED_METRICS)
    assert set(stages) == {f"{stage}_ms" for stage in telemetry.STAGES} <= set(telemetry.EMBEDDED_METRICS)
    assert config()["locals"]["model"] == "${tomap({model = var.model_name})}"
    line = json.loads(telemetry.log_line(telemetry.RequestRecord("r", 500, "prediction_failed"), "detector", "1",
                                         "objdetect"))
    assert [d["Dimensions"] for d in line["_aws"]["CloudWatchMetrics"]] == [[["model"]], [["model", "outcome"]]]
    widgets = json.dumps(config()["locals"]["dashboard_widgets"])
    for title in ("Requests per minute", "Response time", "Errors by code", "Stage latency p50", "Stage latency p99",
                  "Tasks", "GPU"):
        assert title in widgets
    assert "MetricName=\\\"requests\\\" NOT outcome=\\\"ok\\\"" in widgets  # errors by code: a SEARCH
    assert "local.dashboard_widgets" in dashboard


@pytest.mark.unit
def test_the_alarm_topic_is_encrypted_and_only_this_accounts_alarms_may_publish():
    topic = resources("aws_sns_topic")["alarms"]
    assert topic["kms_master_key_id"] == "${aws_kms_key.this.arn}"
    policy = resources("aws_sns_topic_policy")["alarms"]["policy"]
    assert "cloudwatch.amazonaws.com" in policy and "sns:Publish" in policy
    assert ":alarm:${var.name}-*" in policy and "aws:SourceArn" in policy
    key_policy = resources("aws_kms_key")["this"]["policy"]
    assert "CloudWatchAlarmsPublishToTheAlarmTopic" in key_policy and "aws:SourceAccount" in key_policy
    email = resources("aws_sns_topic_subscription")["alarm_email"]
    assert email["count"] == '${var.alarm_email == "" ? 0 : 1}' and email["protocol"] == "email"
    assert {"alarm_topic_arn", "dashboard_url"} <= set(config()["output"])


@pytest.mark.unit
@pytest.mark.parametrize("content_type, accepted", [
    ("image/jpeg", True), ("image/png", True), ("image/webp", True), ("Image/JPEG", True),
    ("application/octet-stream", True), ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/vnd.api+json", True), ("application/x-www-form-urlencoded", True),
    ("multipart/form-data; boundary=----x", True),
    ("text/plain", False), ("application/xml", False), ("text/xml", False),
    ("application/x-java-serialized-object", False), ("multipart/mixed; boundary=x", False),
    ("application/jsonx", False), ("image/jpeg\nx-evil: 1", False),
])
def test_the_waf_refuses_content_types_the_api_does_not_take(content_type, accepted):
    """The rule's regex, run as WAF runs it (on the lowercased header); a present header that does
    not match is refused with a JSON 415, a missing one passes (curl -T sends none)."""
    acl = config()["resource"]["aws_wafv2_web_acl"]["this"]
    (rule,) = [rule for rule in acl["rule"] if rule["name"] == "accepted-content-types"]
    assert rule["action"][0]["block"][0]["custom_response"][0]["response_code"] == 415
    (both,) = rule["statement"][0]["and_statement"]
    present, refused = both["statement"]
    assert present["size_constraint_statement"][0]["comparison_operator"] == "GT"
    regex = refused["not_statement"][0]["statement"][0]["regex_match_statement"][0]
    assert regex["regex_string"] == "${local.accepted_content_types}"
    assert regex["text_transformation"][0]["type"] == "LOWERCASE"
    pattern = config()["locals"]["accepted_content_types"]
    assert bool(re.search(pattern, content_type.lower())) == accepted
    bodies = {body["key"]: body for body in acl["custom_response_body"]}
    assert bodies["unsupported-media-type"]["content_type"] == "APPLICATION_JSON"


# --- releases: ECS's canary (service.tf, alb.tf, iam.tf, monitoring.tf) ----------------------

STRATEGIES = ("CANARY", "LINEAR", "ROLLING")


def service() -> dict:
    return resources("aws_ecs_service")["this"]


def dynamic_blocks(body: dict) -> dict[str, dict]:
    """A body's dynamic blocks by name: {"for_each": ..., "content": [...]}."""
    return {name: block for entry in body.get("dynamic", []) for name, block in entry.items()}


def holds(expression: str, strategy: str) -> bool:
    """A block's for_each, for one deployment_strategy: the two forms service.tf uses, evaluated here."""
    shifts = config()["locals"]["shifts_traffic"]
    chosen = re.fullmatch(r'\$\{contains\(\[((?:"\w+"(?:, )?)+)\], var\.deployment_strategy\)\}', shifts)
    assert chosen, shifts
    shifting = strategy in re.findall(r'"(\w+)"', chosen[1])
    assert isinstance(expression, str), f"a for_each that ignores the strategy: {expression}"
    if expression == "${local.shifts_traffic ? [1] : []}":
        return shifting
    match = re.fullmatch(r'\$\{var\.deployment_strategy == "(\w+)" \? \[1\] : \[\]\}', expression)
    assert match, f"a for_each this test cannot evaluate: {expression}"
    return strategy == match[1]


def release_settings(strategy: str) -> dict:
    """What service.tf sends ECS for one strategy: its blocks that exist, and the bake time."""
    configuration = one(service()["deployment_configuration"])
    blocks = {name: one(block["content"]) for name, block in dynamic_blocks(configuration).items()
              if holds(block["for_each"], strategy)}
    balancer = {name: one(block["content"]) for name, block in dynamic_blocks(one(service()["load_balancer"])).items()
                if holds(block["for_each"], strategy)}
    bake = re.fullmatch(r"\$\{local\.shifts_traffic \? (.+) : null\}", configuration["bake_time_in_minutes"])
    assert bake, configuration["bake_time_in_minutes"]
    shifting = holds("${local.shifts_traffic ? [1] : []}", strategy)
    return {"strategy": configuration["strategy"], "blocks": blocks, "load_balancer": balancer,
            "bake_time_in_minutes": bake[1] if shifting else None}


@pytest.mark.unit
def test_the_service_releases_with_ecs_own_strategy_canary_by_default():
    assert one(service()["deployment_controller"]) == {"type": "ECS"}  # ECS's blue/green family needs it
    assert one(service()["deployment_configuration"])["strategy"] == "${var.deployment_strategy}"
    variable = config()["variable"]["deployment_strategy"]
    assert variable["default"] == "CANARY"
    assert one(variable["validation"])["condition"] == '${contains(["CANARY", "LINEAR", "ROLLING"], var.deployment_strategy)}'
    assert config()["locals"]["shifts_traffic"] == '${contains(["CANARY", "LINEAR"], var.deployment_strategy)}'


@pytest.mark.unit
def test_canary_and_linear_settings_come_from_variables_and_only_with_their_strategy():
    variables = config()["variable"]
    canary = release_settings("CANARY")
    assert canary["blocks"] == {"canary_configuration": {
        "canary_percent": "${var.canary_percent}",
        "canary_bake_time_in_minutes": "${tostring(var.canary_bake_time_minutes)}"}}
    assert canary["bake_time_in_minutes"] == "tostring(var.deployment_bake_time_minutes)"
    linear = release_settings("LINEAR")
    assert linear["blocks"] == {"linear_configuration": {
        "step_percent": "${var.linear_step_percent}",
        "step_bake_time_in_minutes": "${tostring(var.linear_step_bake_time_minutes)}"}}
    assert linear["bake_time_in_minutes"] == "tostring(var.deployment_bake_time_minutes)"
    rolling = release_settings("ROLLING")  # ECS's rolling deployment as it was: no blocks, no bake, one target group
    assert rolling["blocks"] == {} and rolling["load_balancer"] == {} and rolling["bake_time_in_minutes"] is None
    # Defaults within what ECS accepts, a small canary, and bakes the judges can fire within.
    assert 0.1 <= variables["canary_percent"]["default"] <= 20
    assert 3 <= variables["linear_step_percent"]["default"] <= 100
    for name in ("canary_bake_time_minutes", "deployment_bake_time_minutes", "linear_step_bake_time_minutes"):
        assert 0 <= variables[name]["default"] <= 1440, name


def judge_alarms() -> dict[str, dict]:
    alarms = config()["locals"]["alarms"]
    return {name: alarms[name] for name in config()["locals"]["release_judges"]}


@pytest.mark.unit
def test_the_alarms_block_names_exactly_the_three_judges_and_rolls_back_with_the_circuit_breaker():
    block = one(service()["alarms"])
    assert block == {"alarm_names": "${[for name in local.release_judges : aws_cloudwatch_metric_alarm.this[name].alarm_name]}",
                     "enable": True, "rollback": True}
    assert config()["locals"]["release_judges"] == ["alb-5xx-rate", "p99-response-time", "model-error-rate"]
    assert set(judge_alarms()) <= set(config()["locals"]["alarms"])  # alarms monitoring.tf makes
    assert one(service()["deployment_circuit_breaker"]) == {"enable": True, "rollback": True}
    # The alarms must not depend on the service that names them (a cycle terraform refuses).
    assert "aws_ecs_service" not in json.dumps(config()["locals"]["alarms"])
    assert "aws_ecs_service" not in config()["locals"]["ecs_service"]


@pytest.mark.unit
def test_the_judges_read_every_request_and_can_fire_within_a_canary_bake():
    """Each judge reads the whole load balancer or the model (production may be in either target
    group, the canary in the other), each minute, takes no traffic for no breach, and fires within
    the shortest canary bake the variable allows."""
    resource = resources("aws_cloudwatch_metric_alarm")["this"]
    assert resource["treat_missing_data"] == "notBreaching"
    assert one(one(one(resource["dynamic"])["metric_query"]["content"])["metric"])["period"] == 60
    shortest_bake = int(re.search(r"var\.canary_bake_time_minutes >= (\d+)",
                                  one(config()["variable"]["canary_bake_time_minutes"]["validation"])["condition"])[1])
    for name, alarm in judge_alarms().items():
        assert {metric[4] for metric in alarm["metrics"]} <= {"${local.load_balancer}", "${local.model}"}, name
        assert alarm["datapoints"] <= alarm["minutes"] <= shortest_bake, name
    assert config()["locals"]["load_balancer"] == "${tomap({LoadBalancer = aws_lb.this.arn_suffix})}"
    assert "deployment_bake_time_minutes >= 5" in one(config()["variable"]["deployment_bake_time_minutes"]["validation"])["condition"]


@pytest.mark.unit
def test_the_alternate_target_group_serves_like_the_first():
    first, alternate = resources("aws_lb_target_group")["this"], resources("aws_lb_target_group")["alternate"]
    assert first["name"] != alternate["name"] and alternate["name"] == "${var.name}-alt"  # <= 28 characters
    for setting in ("port", "protocol", "target_type", "vpc_id", "deregistration_delay", "health_check"):
        assert alternate[setting] == first[setting], setting
    assert one(alternate["health_check"])["path"] == "/ping"
    assert "count" not in alternate and "for_each" not in alternate  # whatever the strategy: nothing to create mid-release


@pytest.mark.unit
def test_the_production_listener_rule_forwards_to_both_groups_and_leaves_the_weights_to_ecs():
    rule = resources("aws_lb_listener_rule")["production"]
    # The listener that serves: HTTPS with a certificate (port 80 only redirects), plain HTTP without.
    assert rule["listener_arn"] == "${local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http[0].arn}"
    assert "count" not in rule
    action = one(rule["action"])
    assert action["type"] == "forward"
    weights = {group["arn"]: group["weight"] for group in one(action["forward"])["target_group"]}
    assert weights == {"${aws_lb_target_group.this.arn}": 100, "${aws_lb_target_group.alternate.arn}": 0}
    assert one(one(rule["condition"])["path_pattern"])["values"] == ["/*"]  # every request
    assert one(rule["lifecycle"])["ignore_changes"] == ["action"]  # ECS shifts the weights
    # ECS's blue/green family fails on a listener that mixes forward and other actions.
    for name in ("https", "http"):
        assert one(resources("aws_lb_listener")[name]["default_action"])["type"] == "forward", name
    assert config()["output"]["production_listener_rule_arn"]["value"] == "${aws_lb_listener_rule.production.arn}"


@pytest.mark.unit
def test_the_load_balancer_block_names_the_alternate_group_the_rule_and_the_role_when_traffic_shifts():
    balancer = one(service()["load_balancer"])
    assert balancer["target_group_arn"] == "${aws_lb_target_group.this.arn}"
    for strategy in ("CANARY", "LINEAR"):
        assert release_settings(strategy)["load_balancer"] == {"advanced_configuration": {
            "alternate_target_group_arn": "${aws_lb_target_group.alternate.arn}",
            "production_listener_rule": "${aws_lb_listener_rule.production.arn}",
            "role_arn": "${aws_iam_role.ecs_infrastructure.arn}"}}, strategy
    # ECS accepts the alternate group only once a listener uses it, and the role needs its policy first.
    assert {"${aws_lb_listener_rule.production}", "${aws_iam_role_policy_attachment.ecs_infrastructure}"} <= \
        set(service()["depends_on"])


@pytest.mark.unit
def test_the_infrastructure_role_is_ecs_s_with_aws_documented_trust_and_load_balancer_policy():
    role = resources("aws_iam_role")["ecs_infrastructure"]
    assert role["assume_role_policy"] == "${data.aws_iam_policy_document.ecs_infrastructure_assume.json}"
    trust = one(statements("ecs_infrastructure_assume"))
    assert trust["actions"] == ["sts:AssumeRole"] and trust.get("effect", "Allow") == "Allow"
    assert trust["principals"] == [{"type": "Service", "identifiers": ["ecs.amazonaws.com"]}]
    assert "condition" not in trust  # AWS documents none; one ECS does not meet would fail every release
    attachments = [a for a in resources("aws_iam_role_policy_attachment").values()
                   if a["role"] == "${aws_iam_role.ecs_infrastructure.name}"]
    assert [a["policy_arn"] for a in attachments] == [
        "arn:${local.partition}:iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers"]
    assert not role_policies("ecs_infrastructure")  # nothing besides AWS's policy


@pytest.mark.unit
def test_the_readme_says_what_a_release_looks_like_how_to_watch_and_stop_it():
    readme = (TERRAFORM_DIR / "README.md").read_text()
    section = readme.split("## Releases\n", 1)[1].split("\n## ", 1)[0]
    for needed in ("canary_percent", "canary_bake_time_minutes", "deployment_bake_time_minutes",
                   "aws ecs list-service-deployments", "aws ecs describe-service-deployments", "console",
                   "scripts/models.py status", "circuit breaker", "stop-service-deployment", "--stop-type ROLLBACK",
                   *config()["locals"]["release_judges"]):
        assert needed in section, f"README Releases does not mention {needed!r}"


# --- batch jobs ------------------------------------------------------------------------------

@pytest.mark.unit
def test_batch_runs_the_service_image_and_release_on_gpus_that_scale_to_zero():
    assert config()["variable"]["batch"]["default"] is None  # off unless asked for
    environment = resources("aws_batch_compute_environment")["gpu"]
    compute = one(environment["compute_resources"])
    assert compute["min_vcpus"] == 0  # nothing runs, nothing is billed, between jobs
    assert compute["type"] == '${each.value.spot ? "SPOT" : "EC2"}'
    assert "SPOT_PRICE_CAPACITY_OPTIMIZED" in compute["allocation_strategy"]
    assert one(compute["ec2_configuration"])["image_type"] == "ECS_AL2023_NVIDIA"
    queue = resources("aws_batch_job_queue")["detect"]
    assert one(queue["compute_environment_order"])["compute_environment"] == "${aws_batch_compute_environment.gpu[each.key].arn}"

    definition = resources("aws_batch_job_definition")["detect"]
    text = (TERRAFORM_DIR / "batch.tf").read_text()
    image = container()["image"]
    assert f'image            = "{image}"' in text  # the service's image, the same tag
    assert 'command          = ["batch"]' in text and '{ type = "GPU", value = "1" }' in text
    assert "privileged       = false" in text and "readonlyRootFilesystem = true" in text
    assert config()["locals"]["batch_environment"] == \
        '${merge({OBJDETECT_REQUIRE_CUDA = "true", TMPDIR = "/tmp"}, local.release_environment)}'
    retry = one(definition["retry_strategy"])
    assert retry["attempts"] == "${each.value.attempts}"
    # A reclaimed Spot instance is retried; anything else ends the child (images fail as lines).
    assert [(e.get("on_status_reason") or e.get("on_reason"), e["action"]) for e in retry["evaluate_on_exit"]] == \
        [("Host EC2*", "RETRY"), ("*", "EXIT")]


@pytest.mark.unit
def test_a_batch_child_reads_its_inputs_and_the_release_and_writes_only_the_output():
    documents = config()["data"]["aws_iam_policy_document"]["batch_job"]["statement"]
    by_sid = {statement["sid"]: statement for statement in documents}
    assert by_sid["ReadInputs"]["actions"] == ["s3:GetObject"]
    assert by_sid["ReadTheModelRelease"]["actions"] == ["s3:GetObject"]
    assert sorted(by_sid["ReadTheModelRelease"]["resources"]) == [
        "${aws_s3_bucket.models.arn}/archives/*", "${aws_s3_bucket.models.arn}/releases/*"]
    writes = [(sid, action) for sid, statement in by_sid.items() for action in statement["actions"]
              if action.startswith("s3:") and action not in ("s3:GetObject", "s3:ListBucket")]
    assert {sid for sid, _ in writes} == {"ReadAndWriteTheOutput"}
    assert by_sid["ReadAndWriteTheOutput"]["resources"] == ["arn:${local.partition}:s3:::${local.batch_output_path}/*"]
    assert one(by_sid["S3Encryption"]["condition"])["values"] == ["s3.${var.region}.amazonaws.com"]
    assert resources("aws_iam_role")["batch_job"]["assume_role_policy"] == "${data.aws_iam_policy_document.task_assume.json}"
