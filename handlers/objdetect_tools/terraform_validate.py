"""`make validate-terraform`: the real `terraform validate` on a copy of terraform/, offline.

`terraform validate` needs the hashicorp/aws provider, which `terraform init` downloads from
registry.terraform.io; where only package registries can be reached, it never ran. Here it runs
against a stand-in provider instead:

1. terraform_schema recovers the provider's schema from its prebuilt CDK bindings on PyPI (pinned:
   cdktn-provider-aws, built from hashicorp/aws 6.69.1), once, into .venv/terraform-schema/;
2. the version that schema reports must satisfy versions.tf's constraint on hashicorp/aws, or
   nothing runs;
3. terraform_stand_in, a provider that serves that schema and refuses everything else, is placed in
   a filesystem mirror that a CLI configuration file (TF_CLI_CONFIG_FILE) names for
   registry.terraform.io/hashicorp/aws;
4. `terraform init -backend=false` and `terraform validate` run on a copy of terraform/, so
   terraform itself checks every argument, block, nesting, required argument, reference and
   resource type against the schema.

What this cannot check is printed as "not checked": what the bindings flattened (the contents of
aws_wafv2_* `statement` and aws_quicksight_* `definition` blocks, and where the bindings nest a
block in itself), which the stand-in accepts as written; and the provider's own value checks
(allowed values, formats, conflicting arguments), which are in no schema.

    python scripts/validate_terraform.py                    # the stand-in (no registry needed)
    python scripts/validate_terraform.py --real-provider    # the real provider, where the registry is reachable
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import hcl2
from hcl2.const import IS_BLOCK

from objdetect_serving.paths import ROOT
from objdetect_tools import terraform_schema, terraform_stand_in

TERRAFORM_DIR = ROOT / "terraform"
PROVIDER_ADDRESS = "registry.terraform.io/hashicorp/aws"
ENTITY_KINDS = {"resource": "resource_schemas", "data": "data_source_schemas", "ephemeral": "ephemeral_resource_schemas"}
GO_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
COPY_IGNORED = shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate", "*.tfstate.*", "*.tfplan")
# What no configuration gets checked for: past the schema, and what the bindings leave out of it.
GENERAL_GAPS = [
    "values: the provider's own checks beyond the schema (allowed values, formats, conflicting or required-together "
    "arguments); the stand-in checks only that read-only attributes are not set",
    "flags the bindings do not carry: deprecations (terraform warns of none) and sensitivity (no attribute is "
    "marked sensitive)",
]


class SetupError(RuntimeError):
    """versions.tf's constraint on hashicorp/aws is missing, unreadable or excludes the schema's version:
    nothing was validated."""


@dataclass
class StandIn:
    """A prepared stand-in: its schema, and the CLI configuration that installs it from its mirror."""
    schema: dict
    cli_config: Path

    @property
    def version(self) -> str:
        return self.schema["provider_version"]


@dataclass
class Validation:
    """terraform's verdict on one configuration, with what it could not check."""
    valid: bool
    diagnostics: list[dict]  # terraform validate -json's, or init's failure as one error
    not_checked: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [f"{d['summary']}: {d.get('detail', '')}" for d in self.diagnostics if d["severity"] == "error"]

    def report(self) -> str:
        return "\n".join(describe(diagnostic) for diagnostic in self.diagnostics)


def prepare(log=print) -> StandIn:
    """The schema (built once), the stand-in's stubs, its mirror and a CLI configuration naming it."""
    schema_path = terraform_schema.ensure_schema(log)
    schema = json.loads(schema_path.read_text())
    cache = terraform_schema.CACHE_DIR
    stubs = terraform_stand_in.generate_stubs(cache)
    mirror = cache / "mirror"
    package = mirror / PROVIDER_ADDRESS / schema["provider_version"] / terraform_platform()
    launcher = package / f"terraform-provider-aws_v{schema['provider_version']}"
    command = shlex.join([sys.executable, "-m", terraform_stand_in.__name__, "--schema", str(schema_path), "--stubs", str(stubs)])
    handlers = shlex.quote(str(Path(terraform_stand_in.__file__).parents[1]))
    write_if_changed(launcher, f"#!/bin/sh\nPYTHONPATH={handlers} exec {command}\n", mode=0o755)
    cli_config = cache / "terraform-stand-in.tfrc"
    write_if_changed(cli_config, "provider_installation {\n  filesystem_mirror {\n"
                                 f"    path    = {json.dumps(str(mirror))}\n"
                                 f"    include = [{json.dumps(PROVIDER_ADDRESS)}]\n  }}\n}}\n")
    return StandIn(schema, cli_config)


def terraform_platform() -> str:
    """The mirror's platform folder: linux_amd64 and the like."""
    machine = platform.machine().lower()
    return f"{platform.system().lower()}_{GO_ARCHITECTURES.get(machine, machine)}"


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.chmod(mode)
        partial.replace(path)


def validate(config_dir: Path, stand_in: StandIn, terraform: str = "terraform") -> Validation:
    """`terraform init -backend=false` and `terraform validate` on a copy of config_dir, against the stand-in."""
    parsed = parse_configuration(config_dir)
    check_provider_constraint(parsed, stand_in.version)
    shapes, not_checked = flattened_usage(parsed, stand_in.schema)
    with tempfile.TemporaryDirectory(prefix="validate-terraform-") as scratch:
        workdir = Path(scratch) / config_dir.name
        shutil.copytree(config_dir, workdir, ignore=COPY_IGNORED)
        shapes_file = Path(scratch) / "flattened-shapes.json"
        shapes_file.write_text(json.dumps(shapes))
        env = terraform_env(TF_CLI_CONFIG_FILE=str(stand_in.cli_config), TF_DISABLE_PLUGIN_TLS="1",
                            **{terraform_stand_in.SHAPES_ENV: str(shapes_file)})
        init = subprocess.run([terraform, "init", "-backend=false", "-input=false", "-no-color"], cwd=workdir,
                              capture_output=True, text=True, env=env, timeout=300)
        if init.returncode != 0:
            return Validation(False, [{"severity": "error", "summary": "terraform init failed",
                                       "detail": init.stdout + init.stderr}], not_checked)
        done = subprocess.run([terraform, "validate", "-json", "-no-color"], cwd=workdir,
                              capture_output=True, text=True, env=env, timeout=300)
    try:
        verdict = json.loads(done.stdout)
    except json.JSONDecodeError:
        return Validation(False, [{"severity": "error", "summary": "terraform validate failed",
                                   "detail": done.stdout + done.stderr}], not_checked)
    return Validation(verdict["valid"], verdict["diagnostics"], not_checked + GENERAL_GAPS)


def terraform_env(**settings: str) -> dict[str, str]:
    """This environment without the user's TF_* settings (CLI arguments, data dir, CLI config) but logging."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TF_") or k.startswith("TF_LOG")}
    return {**inherited, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", **settings}


def describe(diagnostic: dict) -> str:
    where = diagnostic.get("range")
    location = f"\n  on {where['filename']} line {where['start']['line']}" if where else ""
    return f"{diagnostic['severity'].capitalize()}: {diagnostic['summary']}{location}\n  {diagnostic.get('detail', '')}"


# --- the configuration, as python-hcl2 reads it ------------------------------------------------

def parse_configuration(config_dir: Path) -> list[dict]:
    options = hcl2.SerializationOptions(explicit_blocks=True, with_comments=False, strip_string_quotes=True)
    parsed = []
    for path in sorted(config_dir.glob("*.tf")):
        with open(path) as handle:
            parsed.append(hcl2.load(handle, serialization_options=options))
    return parsed


def check_provider_constraint(parsed: list[dict], version: str) -> None:
    """The stand-in's version must be one versions.tf admits, as the real provider's would be."""
    constraints = [requirement["version"]
                   for document in parsed for settings in document.get("terraform", [])
                   for providers in settings.get("required_providers", [])
                   for local_name, requirement in providers.items()
                   if local_name != IS_BLOCK and requirement.get("source") == "hashicorp/aws" and "version" in requirement]
    if not constraints:
        raise SetupError("no version constraint for hashicorp/aws in required_providers (versions.tf)")
    for constraint in constraints:
        if not version_satisfies(version, constraint):
            raise SetupError(f'versions.tf requires hashicorp/aws "{constraint}", but the schema is hashicorp/aws '
                             f"{version} ({terraform_schema.BINDINGS}=={terraform_schema.BINDINGS_VERSION}): "
                             "change the constraint, or pin bindings built from a version it admits "
                             "(terraform_schema.BINDINGS_VERSION)")


def version_satisfies(version: str, constraint: str) -> bool:
    """Terraform's version constraints: comma-separated =, !=, >, >=, <, <= and ~> (the last number may rise)."""
    actual = numbers(version)
    for part in constraint.split(","):
        match = re.fullmatch(r"\s*(!=|>=|<=|~>|=|>|<)?\s*v?(\d+(?:\.\d+){0,2})\s*", part)
        if match is None:
            raise SetupError(f"cannot read the version constraint {constraint!r}")
        operator, bound = match.group(1) or "=", numbers(match.group(2))
        fixed = match.group(2).count(".")  # ~> 6.21 fixes the 6; ~> 6.21.0 fixes 6.21
        ok = {"=": actual == bound, "!=": actual != bound, ">": actual > bound, ">=": actual >= bound,
              "<": actual < bound, "<=": actual <= bound,
              "~>": actual >= bound and actual[:max(fixed, 1)] == bound[:max(fixed, 1)]}[operator]
        if not ok:
            return False
    return True


def numbers(version: str) -> tuple[int, int, int]:
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def flattened_usage(parsed: list[dict], schema: dict) -> tuple[dict, list[str]]:
    """What the configuration writes where the schema is flattened: the shapes the stand-in accepts
    there ({kind: {type: {"block.path": shape}}}), and one "not checked" line per use."""
    shapes: dict = {}
    not_checked = []
    for document in parsed:
        for keyword, kind in ENTITY_KINDS.items():
            address_prefix = "" if keyword == "resource" else f"{keyword}."
            for labelled in document.get(keyword, []):
                for type_name, named in without_marker(labelled).items():
                    entity = schema[kind].get(type_name)  # an unknown type is terraform's to report
                    paths = list(flattened_paths(entity["block"])) if entity else []
                    for name, body in without_marker(named).items():
                        for path in paths:
                            bodies = blocks_at(body, path)
                            if not bodies:
                                continue
                            key = ".".join(path)
                            per_type = shapes.setdefault(kind, {}).setdefault(type_name, {})
                            per_type[key] = merge(per_type.get(key), *map(shape_of, bodies))
                            count = f"{len(bodies)} block{'s' if len(bodies) != 1 else ''}"
                            as_lists = "".join(f"; {'.'.join(path[:depth])} is served as a list of blocks, not a set"
                                               for depth in set_blocks_along(entity["block"], path))
                            not_checked.append(f"{address_prefix}{type_name}.{name}: {key} ({count}): flattened in the "
                                               f"provider's CDK bindings, so what is written in it is accepted unchecked"
                                               f"{as_lists}")
    return shapes, not_checked


def set_blocks_along(block: dict, path: tuple[str, ...]) -> list[int]:
    """How deep the sets of blocks on the way to a flattened part are (the stand-in serves them as lists)."""
    depths = []
    for depth, name in enumerate(path[:-1], start=1):
        nested = block["block_types"][name]
        if nested["nesting_mode"] == "set":
            depths.append(depth)
        block = nested["block"]
    return depths


def flattened_paths(block: dict, prefix: tuple[str, ...] = ()):
    for name, attribute in block.get("attributes", {}).items():
        if attribute.get("flattened"):
            yield (*prefix, name)
    for name, nested in block.get("block_types", {}).items():
        yield from flattened_paths(nested["block"], (*prefix, name))


def blocks_at(body: dict, path: tuple[str, ...]) -> list[dict]:
    bodies = [body]
    for name in path:
        bodies = [child for parent in bodies for child in child_blocks(parent, name)]
    return bodies


def child_blocks(body: dict, name: str) -> list[dict]:
    """The blocks `name { ... }` in body, and the content of `dynamic "name" { content { ... } }`."""
    written = body.get(name)
    found = [b for b in written if is_block(b)] if isinstance(written, list) else []
    for dynamic in body.get("dynamic", []):
        for label, generator in without_marker(dynamic).items():
            if label == name:
                found.extend(generator.get("content", []))
    return found


def shape_of(body: dict) -> dict:
    """Which attributes and nested blocks a block body writes, nested blocks' shapes merged by name."""
    attributes, blocks = set(), {}
    for key, value in without_marker(body).items():
        if key == "dynamic":
            for dynamic in value:
                for label, generator in without_marker(dynamic).items():
                    blocks[label] = merge(blocks.get(label), *map(shape_of, generator.get("content", [])))
        elif isinstance(value, list) and value and all(is_block(item) for item in value):
            blocks[key] = merge(blocks.get(key), *map(shape_of, value))
        else:
            attributes.add(key)
    return {"attributes": sorted(attributes), "blocks": blocks}


def merge(*shapes: dict | None) -> dict:
    attributes, blocks = set(), {}
    for shape in filter(None, shapes):
        attributes.update(shape["attributes"])
        for name, nested in shape["blocks"].items():
            blocks[name] = merge(blocks.get(name), nested)
    return {"attributes": sorted(attributes), "blocks": blocks}


def is_block(value) -> bool:
    return isinstance(value, dict) and value.get(IS_BLOCK) is True


def without_marker(parsed: dict) -> dict:
    return {key: value for key, value in parsed.items() if key != IS_BLOCK}


# --- the command -------------------------------------------------------------------------------

def terraform_version(terraform: str) -> str:
    done = subprocess.run([terraform, "version", "-json"], capture_output=True, text=True, env=terraform_env(), timeout=60)
    return json.loads(done.stdout)["terraform_version"]


def validate_with_real_provider(config_dir: Path, terraform: str) -> int:
    """Plain `terraform init -backend=false && terraform validate` on a copy: the registry's provider."""
    with tempfile.TemporaryDirectory(prefix="validate-terraform-") as scratch:
        workdir = Path(scratch) / config_dir.name
        shutil.copytree(config_dir, workdir, ignore=COPY_IGNORED)
        for step in (["init", "-backend=false", "-input=false"], ["validate"]):
            print(f"$ terraform {' '.join(step)}", flush=True)
            done = subprocess.run([terraform, *step], cwd=workdir, env={**os.environ, "CHECKPOINT_DISABLE": "1"})
            if done.returncode != 0:
                return done.returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="terraform validate on a copy of terraform/, offline: against a stand-in hashicorp/aws that serves "
                    "the provider's schema, recovered from its CDK bindings on PyPI (cached under .venv/terraform-schema/).",
        epilog="Where registry.terraform.io is reachable, --real-provider runs plain `terraform init -backend=false && "
               "terraform validate` on a copy, with the real provider, instead (make validate-terraform "
               "VALIDATE_TERRAFORM_ARGS=--real-provider).")
    parser.add_argument("--terraform-dir", type=Path, default=TERRAFORM_DIR, help="the configuration (default: terraform/)")
    parser.add_argument("--terraform", default="terraform", help="the terraform binary (default: from PATH)")
    parser.add_argument("--real-provider", action="store_true",
                        help="validate with the real provider from the registry (needs registry.terraform.io)")
    arguments = parser.parse_args(argv)
    terraform = shutil.which(arguments.terraform)
    if terraform is None:
        print(f"{arguments.terraform} not found: install terraform >= 1.11", file=sys.stderr)
        return 2
    if arguments.real_provider:
        return validate_with_real_provider(arguments.terraform_dir, terraform)
    started = time.monotonic()
    try:
        stand_in = prepare()
        print(f"provider schema: {terraform_schema.summary(stand_in.schema)}")
        print(f"stand-in provider: {PROVIDER_ADDRESS} {stand_in.version} (schema only; refuses plan, apply and reads)")
        validation = validate(arguments.terraform_dir, stand_in, terraform)
    except (SetupError, terraform_schema.SchemaError) as error:
        print(f"validate-terraform: {error}", file=sys.stderr)
        return 2
    errors = sum(d["severity"] == "error" for d in validation.diagnostics)
    warnings = len(validation.diagnostics) - errors
    print(f"terraform {terraform_version(terraform)} validate on a copy of {arguments.terraform_dir}: "
          f"{'valid' if validation.valid else 'INVALID'}, {errors} errors, {warnings} warnings "
          f"({time.monotonic() - started:.1f} s)")
    if validation.diagnostics:
        print(validation.report())
    print("not checked:")
    for part in validation.not_checked:
        print(f"  - {part}")
    return 0 if validation.valid else 1
