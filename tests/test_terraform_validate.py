"""make validate-terraform: the real `terraform validate`, offline, against a stand-in hashicorp/aws that
serves the schema recovered from the provider's CDK bindings (objdetect_tools.terraform_validate).

The integration tests prove it can fail: one small broken configuration per kind of defect, each
refused with terraform's own error; and that terraform/ passes, with what was not checked reported.
They build the schema once (the bindings' wheel from PyPI; cached in .venv/terraform-schema/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import hcl2
import pytest
from google.protobuf import message_factory

from objdetect_serving.paths import ROOT
from objdetect_tools import terraform_schema, terraform_stand_in, terraform_validate

REQUIRED_PROVIDERS = """\
terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "%s"
    }
  }
}
"""


@pytest.fixture(scope="module")
def stand_in(terraform) -> terraform_validate.StandIn:
    """The schema (built once per checkout, then cached), the stand-in's stubs and its mirror."""
    try:
        return terraform_validate.prepare(log=lambda message: None)
    except terraform_schema.WheelUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must validate terraform/, and the provider's bindings could not be downloaded: {error}")
        pytest.skip(f"the provider's bindings could not be downloaded (with CI set this fails): {error}")


def configuration(folder: Path, body: str, constraint: str = ">= 6.21, < 7.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.tf").write_text(REQUIRED_PROVIDERS % constraint + textwrap.dedent(body))
    return folder


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.integration
def test_the_project_configuration_validates_and_reports_what_was_not_checked(stand_in):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_terraform.py")], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hashicorp/aws 6.69.1 (cdktn-provider-aws==25.8.1): 1735 resource types, 685 data sources" in done.stdout
    assert ": valid, 0 errors, 0 warnings" in done.stdout
    not_checked = done.stdout.split("not checked:\n", 1)[1]
    assert "aws_wafv2_web_acl.this: rule.statement (3 blocks): flattened" in not_checked
    assert "rule is served as a list of blocks, not a set" in not_checked
    assert "values: the provider's own checks" in not_checked and "flags the bindings do not carry" in not_checked


DEFECTS = {
    "unknown argument": ('''
        resource "aws_sns_topic" "alerts" {
          name             = "alerts"
          no_such_argument = true
        }''', "Unsupported argument", 'An argument named "no_such_argument" is not expected here.'),
    "block written as an argument": ('''
        resource "aws_ecs_service" "api" {
          name                       = "api"
          deployment_circuit_breaker = { enable = true, rollback = true }
        }''', "Unsupported argument", 'Did you mean to define a block of type "deployment_circuit_breaker"?'),
    "argument written as a block": ('''
        resource "aws_sns_topic" "alerts" {
          name = "alerts"
          tags {
            Project = "objdetect"
          }
        }''', "Unsupported block type", 'Did you mean to define argument "tags"?'),
    "missing required argument": ('''
        resource "aws_iam_role" "task" {
          name = "task"
        }''', "Missing required argument", 'The argument "assume_role_policy" is required'),
    "reference to an attribute that does not exist": ('''
        resource "aws_sns_topic" "alerts" {
          name = "alerts"
        }
        output "topic" {
          value = aws_sns_topic.alerts.no_such_attribute
        }''', "Unsupported attribute", 'no argument, nested block, or exported attribute named "no_such_attribute"'),
    "computed-only attribute set": ('''
        resource "aws_sns_topic" "alerts" {
          name = "alerts"
          arn  = "arn:aws:sns:eu-west-1:123456789012:alerts"
        }''', "Value for unconfigurable attribute", 'Can\'t configure a value for "arn"'),
    "two of a block that takes one": ('''
        resource "aws_ecs_service" "api" {
          name = "api"
          deployment_circuit_breaker {
            enable   = true
            rollback = true
          }
          deployment_circuit_breaker {
            enable   = false
            rollback = false
          }
        }''', "Too many deployment_circuit_breaker blocks", 'No more than 1 "deployment_circuit_breaker" blocks are allowed'),
    "unknown resource type": ('''
        resource "aws_no_such_resource" "x" {
          name = "x"
        }''', "Invalid resource type", 'does not support resource type "aws_no_such_resource"'),
}


@pytest.mark.integration
@pytest.mark.parametrize("defect", DEFECTS)
def test_terraform_refuses_each_kind_of_defect(terraform, stand_in, tmp_path, defect):
    body, summary, detail = DEFECTS[defect]
    validation = terraform_validate.validate(configuration(tmp_path, body), stand_in, terraform)
    assert not validation.valid
    assert [error for error in validation.errors if error.startswith(summary) and detail in error], validation.report()


@pytest.mark.integration
def test_a_flattened_block_takes_what_is_written_and_is_reported_but_its_neighbours_are_checked(terraform, stand_in, tmp_path):
    waf = '''
        resource "aws_wafv2_web_acl" "waf" {
          name  = "waf"
          scope = "REGIONAL"
          default_action {
            allow {}
          }
          rule {
            name     = "geo"
            priority = 1
            action {
              block {}
            }
            statement {
              geo_match_statement {
                country_codes = ["KP"]
              }
            }
            visibility_config {
              cloudwatch_metrics_enabled = true
              metric_name                = "geo"
              sampled_requests_enabled   = true%s
            }
          }
          visibility_config {
            cloudwatch_metrics_enabled = true
            metric_name                = "waf"
            sampled_requests_enabled   = true
          }
        }'''
    valid = terraform_validate.validate(configuration(tmp_path / "valid", waf % ""), stand_in, terraform)
    assert valid.valid, valid.report()
    assert valid.not_checked[0].startswith("aws_wafv2_web_acl.waf: rule.statement (1 block): flattened")
    broken = terraform_validate.validate(configuration(tmp_path / "broken", waf % "\n              no_such_argument = 1"),
                                         stand_in, terraform)
    assert any('"no_such_argument" is not expected here' in error for error in broken.errors), broken.report()


@pytest.mark.integration
def test_the_stand_in_refuses_to_plan(terraform, stand_in, tmp_path):
    workdir = configuration(tmp_path, '''
        provider "aws" {
          region = "eu-west-1"
        }
        resource "aws_sns_topic" "alerts" {
          name = "alerts"
        }''')
    env = terraform_validate.terraform_env(TF_CLI_CONFIG_FILE=str(stand_in.cli_config), TF_DISABLE_PLUGIN_TLS="1")

    def run(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([terraform, *arguments, "-input=false", "-no-color"], cwd=workdir,
                              capture_output=True, text=True, env=env, timeout=120)

    init = run("init", "-backend=false")
    assert init.returncode == 0, init.stdout + init.stderr
    plan = run("plan", "-lock=false")
    assert plan.returncode != 0
    assert "Schema-only stand-in provider" in plan.stderr and "ConfigureProvider cannot run" in plan.stderr, plan.stderr


@pytest.mark.integration
def test_a_constraint_the_schema_version_does_not_satisfy_stops_before_terraform_runs(terraform, stand_in, tmp_path):
    workdir = configuration(tmp_path, 'resource "aws_sns_topic" "alerts" {}', constraint="~> 5.0")
    with pytest.raises(terraform_validate.SetupError, match=r'requires hashicorp/aws "~> 5.0", but the schema is '
                                                            r"hashicorp/aws 6\.69\.1"):
        terraform_validate.validate(workdir, stand_in, terraform)


# --- the parts, in this process -----------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("constraint, admitted", [
    ("~> 6.0", True), (">= 6.21, < 7.0", True), ("6.69.1", True), ("= 6.69.1", True), ("~> 6.69.0", True),
    ("~> 6", True), ("~> 5.0", False), ("~> 6.70", False), ("~> 6.21.0", False), (">= 7.0", False),
    ("!= 6.69.1", False), (">= 6.21, < 6.69", False),
])
def test_terraform_version_constraints(constraint, admitted):
    assert terraform_validate.version_satisfies("6.69.1", constraint) is admitted


@pytest.mark.unit
def test_the_shapes_of_what_a_configuration_writes_in_flattened_blocks():
    parsed = [hcl2.loads(textwrap.dedent('''
        resource "aws_thing" "one" {
          rule {
            statement {
              and_statement {
                statement { a = 1 }
                statement {
                  inner { b = "x" }
                }
              }
            }
          }
          rule {
            dynamic "statement" {
              for_each = [1]
              content { c = [statement.value] }
            }
          }
        }
        resource "aws_thing" "two" {
          rule {}
        }'''), serialization_options=hcl2.SerializationOptions(
        explicit_blocks=True, with_comments=False, strip_string_quotes=True))]
    schema = {"resource_schemas": {"aws_thing": {"block": {"block_types": {"rule": {"nesting_mode": "set", "block": {
        "attributes": {"statement": {"type": "dynamic", "optional": True, "flattened": True}}}}}}}}}
    shapes, not_checked = terraform_validate.flattened_usage(parsed, schema)
    assert shapes == {"resource_schemas": {"aws_thing": {"rule.statement": {"attributes": ["c"], "blocks": {
        "and_statement": {"attributes": [], "blocks": {"statement": {"attributes": ["a"], "blocks": {
            "inner": {"attributes": ["b"], "blocks": {}}}}}}}}}}}
    assert not_checked == ["aws_thing.one: rule.statement (2 blocks): flattened in the provider's CDK bindings, "
                           "so what is written in it is accepted unchecked; rule is served as a list of blocks, not a set"]


GENERATED_MODULE = '''\
function awsThingRuleToHclTerraform(struct) {
    const attrs = {
        name: {
            value: cdktn.stringToHclTerraform(struct.name),
            isBlock: false,
            type: "simple",
            storageClassType: "string",
        },
    };
    return attrs;
}
class AwsThingRuleOutputReference extends cdktn.ComplexObject {
    // name - computed: false, optional: false, required: true
    _name;
    get name() {
        return this.getStringAttribute('name');
    }
}
function awsThingPortToHclTerraform(struct) {
    const attrs = {
        from: {
            value: cdktn.numberToHclTerraform(struct.from),
            isBlock: false,
            type: "simple",
            storageClassType: "number",
        },
    };
    return attrs;
}
class AwsThingPortOutputReference extends cdktn.ComplexObject {
    // from - computed: false, optional: true, required: false
    _from;
    get from() {
        return this.getNumberAttribute('from');
    }
}
class AwsThingStatusOutputReference extends cdktn.ComplexObject {
    // state - computed: true, optional: false, required: false
    get state() {
        return this.getStringAttribute('state');
    }
}
class AwsThing extends cdktn.TerraformResource {
    static tfResourceType = "aws_thing";
    constructor(scope, id, config) {
        super(scope, id, { terraformGeneratorMetadata: { providerVersion: '6.69.1' } });
    }
    // arn - computed: true, optional: false, required: false
    get arn() {
        return this.getStringAttribute('arn');
    }
    // subnets - computed: true, optional: true, required: false
    _subnets;
    get subnets() {
        return cdktn.Fn.tolist(this.getListAttribute('subnets'));
    }
    // status - computed: true, optional: false, required: false
    _status = new AwsThingStatusList(this, "status", false);
    get status() {
        return this._status;
    }
    // rule - computed: false, optional: false, required: true
    _rule = new AwsThingRuleOutputReference(this, "rule");
    // port - computed: false, optional: true, required: false
    _port = new AwsThingPortList(this, "port", true);
    // ingress - computed: true, optional: true, required: false
    _ingress = new AwsThingPortList(this, "ingress", true);
    // statement - computed: false, optional: true, required: false
    _statement;
    get statement() {
        return this.interpolationForAttribute('statement');
    }
    synthesizeHclAttributes() {
        const attrs = {
            subnets: {
                value: cdktn.listMapperHcl(cdktn.stringToHclTerraform, false)(this._subnets),
                isBlock: false,
                type: "set",
                storageClassType: "stringList",
            },
            rule: {
                value: awsThingRuleToHclTerraform(this._rule.internalValue),
                isBlock: true,
                type: "list",
                storageClassType: "AwsThingRuleList",
            },
            port: {
                value: cdktn.listMapperHcl(awsThingPortToHclTerraform, true)(this._port.internalValue),
                isBlock: true,
                type: "set",
                storageClassType: "AwsThingPortList",
            },
            ingress: {
                value: cdktn.listMapperHcl(awsThingPortToHclTerraform, false)(this._ingress.internalValue),
                isBlock: true,
                type: "set",
                storageClassType: "AwsThingPortList",
            },
            statement: {
                value: cdktn.anyToHclTerraform(this._statement),
                isBlock: false,
                type: "simple",
                storageClassType: "any",
            },
        };
        return attrs;
    }
}
'''


@pytest.mark.unit
def test_the_schema_read_from_generated_bindings():
    bindings = terraform_schema.Bindings()
    terraform_schema.read_module(bindings, "thing", GENERATED_MODULE)
    [(kind, type_name, module, members, arguments)] = bindings.entities
    assert (kind, type_name, bindings.provider_versions) == ("resource_schemas", "aws_thing", {"6.69.1"})
    assert terraform_schema.block_schema(bindings, module, members, arguments) == {
        "attributes": {
            "arn": {"type": "string", "computed": True},
            "subnets": {"type": ["set", "string"], "optional": True, "computed": True},
            "status": {"type": ["list", ["object", {"state": "string"}]], "computed": True},
            "ingress": {"type": ["set", ["object", {"from": "number"}, ["from"]]], "optional": True, "computed": True},
            "statement": {"type": "dynamic", "optional": True, "flattened": True},
        },
        "block_types": {
            "rule": {"nesting_mode": "list", "min_items": 1, "max_items": 1,
                     "block": {"attributes": {"name": {"type": "string", "required": True}}}},
            "port": {"nesting_mode": "set", "block": {"attributes": {"from": {"type": "number", "optional": True}}}},
        },
    }


@pytest.mark.unit
def test_the_stand_in_refuses_every_rpc_it_does_not_answer():
    pb = terraform_stand_in.load_stubs(terraform_stand_in.generate_stubs(terraform_schema.CACHE_DIR))
    rpcs = {method.name for method in pb.DESCRIPTOR.services_by_name["Provider"].methods}
    answered = {"GetProviderSchema", "GetMetadata"} | terraform_stand_in.ANSWERED_EMPTY | set(terraform_stand_in.VALIDATED)
    refused = rpcs - answered
    assert {"ConfigureProvider", "PlanResourceChange", "ApplyResourceChange", "ReadResource", "ReadDataSource",
            "ImportResourceState", "OpenEphemeralResource", "CallFunction"} <= refused
    for rpc in refused:
        method = pb.DESCRIPTOR.services_by_name["Provider"].methods_by_name[rpc]
        response = terraform_stand_in.refusal(pb, rpc, message_factory.GetMessageClass(method.output_type))
        text = response.error.text if rpc == "CallFunction" else response.diagnostics[0].detail
        assert "schema-only stand-in" in text and rpc in text
