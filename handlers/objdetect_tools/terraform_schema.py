"""The AWS provider's schema, recovered from its prebuilt CDK bindings on PyPI (make validate-terraform).

`terraform validate` needs the provider's schema, and the provider comes from registry.terraform.io,
which a machine with only package registries cannot reach. The CDK bindings `cdktn-provider-aws`
are generated from that provider's schema and published on PyPI; their wheel carries a jsii
assembly whose generated JavaScript (lib/<type>/index.js) states, for every resource, data source
and ephemeral resource:

- each argument's Terraform name and shape, in the `*ToHclTerraform` functions and the classes'
  `synthesizeHclAttributes`: `isBlock`, `type` (simple, list, set, map, struct) and
  `storageClassType` (string, stringList, numberMap, ..., or the nested struct);
- whether a nested block holds at most one item (its struct is mapped alone, not through
  `listMapperHcl`), and whether a list of objects is a block (`listMapperHcl(f, true)`) or an
  attribute of object type (`listMapperHcl(f, false)`: written either way in HCL);
- each argument's and readable attribute's flags, in comments the generator writes above the
  getters: `// arn - computed: true, optional: false, required: false`, and the readable
  attributes' types in the getters (`getStringAttribute`, `new XList(this, "x", true)`, ...).

build() turns that into a compact schema in the format of `terraform providers schema -json`
(per type: {"block": {"attributes": ..., "block_types": ...}}), plus "provider_version" and
"generated_from". It is generated from the pinned wheel, never edited, and cached under .venv
(gitignored): named after this module's own hash, so a change here rebuilds it.

Where the bindings lost the schema, the schema says so: a few deeply nested blocks are flattened
to "any" (aws_wafv2_* `statement`, aws_quicksight_* `definition`); they are written as dynamic
attributes with "flattened": true, and the stand-in provider accepts whatever the configuration
writes there (terraform_validate reports it as not checked). Descriptions, sensitivity and
deprecations are not in the bindings and not in this schema; validation does not need them.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from objdetect_serving.paths import ROOT

BINDINGS = "cdktn-provider-aws"
BINDINGS_VERSION = "25.8.1"  # built from hashicorp/aws 6.69.1
CACHE_DIR = ROOT / ".venv" / "terraform-schema"

# A member of a generated class: its flags' comment, followed by its getter.
MEMBER = re.compile(r"^    // (\w+) - computed: (true|false), optional: (true|false), required: (true|false)\n", re.M)
# The arguments a *ToHclTerraform function or synthesizeHclAttributes writes, and one of them.
ATTRS = re.compile(r"const attrs = \{\n(.*?)\n\s*\};", re.S)
HCL_ENTRY = re.compile(r'^ {8,}(\w+): \{\n\s+value: (.*),\n\s+isBlock: (true|false),\n'
                       r'\s+type: "(\w+)",\n\s+storageClassType: "(\w+)",\n', re.M)
# Top-level classes and functions of a generated module; their bodies end at a column-0 brace.
CLASS = re.compile(r"^class (\w+) extends cdktn\.(\w+) \{\n(.*?)^\}", re.M | re.S)
HCL_FUNCTION = re.compile(r"^function (\w+)ToHclTerraform\(struct\) \{\n(.*?)^\}", re.M | re.S)
INTERFACE = re.compile(r"^export interface (\w+) \{\n(.*?)^\}", re.M | re.S)
REQUIRED_FIELD = re.compile(r"^    readonly (\w+): ", re.M)
TERRAFORM_TYPE = re.compile(r'static tfResourceType = "(\w+)";')
PROVIDER_VERSION = re.compile(r"providerVersion: '([\d.]+)'")
# A nested struct named in an argument's value: `fooBarToHclTerraform`, maybe from another module.
STRUCT_MAPPER = re.compile(r"(?<![\w.])(?:\(0, )?(?:\w+_\d+\.)?(\w+)ToHclTerraform")
# How a readable attribute is read, in its getter: the first pattern found gives its type.
READERS = (
    (re.compile(r'new (?:\w+_\d+\.)?(\w+)List\(this, "\w+", (true|false)\)'), "object_list"),
    (re.compile(r'new (?:\w+_\d+\.)?(\w+)Map\(this, "\w+"\)'), "object_map"),
    (re.compile(r'new (?:\w+_\d+\.)?(\w+)OutputReference\(this, "\w+"\)'), "object"),
    (re.compile(r"new cdktn\.(String|Number|Boolean)Map\(this"), "map"),
    (re.compile(r"this\.get(String|Number|Boolean)MapAttribute\("), "map"),
    (re.compile(r"cdktn\.Fn\.tolist\(this\.get(Number|)ListAttribute\("), "set"),  # getListAttribute: strings
    (re.compile(r"this\.get(Number|)ListAttribute\("), "list"),
    (re.compile(r"this\.get(String|Number|Boolean)Attribute\("), "primitive"),
    (re.compile(r"this\.(interpolationForAttribute)\("), "dynamic"),
)
PRIMITIVES = {"string": "string", "number": "number", "boolean": "bool"}
ENTITY_KINDS = {"TerraformResource": "resource_schemas", "TerraformDataSource": "data_source_schemas",
                "TerraformEphemeralResource": "ephemeral_resource_schemas", "TerraformProvider": "provider"}


class SchemaError(RuntimeError):
    pass


class WheelUnavailable(SchemaError):
    """pip could not download the bindings (PyPI unreachable)."""


@dataclass
class Member:
    """An attribute or block as a class's comment describes it, and how its getter reads it."""
    name: str
    computed: bool
    optional: bool
    required: bool
    reader: tuple[str, tuple[str, ...]] | None  # (kind, captured names), None for plain accessors


@dataclass
class Argument:
    """An argument as the *ToHclTerraform code writes it."""
    name: str
    value: str
    is_block: bool
    kind: str  # simple, list, set, map, struct
    storage: str  # string, stringList, ..., any, or the nested struct's list/map/class name


@dataclass
class Bindings:
    """What the generated modules say. Structs are keyed by (module, name): a module is one folder
    of lib/ (its index.js and, in large ones, index-structs/*.js), and two modules may use the same
    struct name (aws_wafv2_web_acl's rule and the aws_wafv2_web_acl_rule resource)."""
    classes: dict[tuple[str, str], list[Member]] = field(default_factory=dict)  # OutputReference classes
    arguments: dict[tuple[str, str], list[Argument]] = field(default_factory=dict)  # *ToHclTerraform
    required_fields: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # camelCase (provider)
    entities: list[tuple[str, str, str, list[Member], list[Argument]]] = field(default_factory=list)
    provider_versions: set[str] = field(default_factory=set)


def cached_schema_path() -> Path:
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return CACHE_DIR / f"aws-{BINDINGS}-{BINDINGS_VERSION}-{digest}.json"


def ensure_schema(log=print) -> Path:
    """The cached schema, built first when missing (downloads the 70 MB wheel: about 10 s in all)."""
    path = cached_schema_path()
    if not path.exists():
        wheel = download_wheel(CACHE_DIR / "wheels")
        log(f"building the provider schema from {wheel.name} (once: about 10 s)")
        schema = build(wheel)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True))
        partial.replace(path)
        for stale in CACHE_DIR.glob(f"aws-{BINDINGS}-*.json"):
            if stale != path:
                stale.unlink()
    return path


def download_wheel(folder: Path) -> Path:
    """The pinned bindings' wheel, alone (--no-deps: no cdktn or jsii runtime is needed)."""
    wheels = sorted(folder.glob(f"{BINDINGS.replace('-', '_')}-{BINDINGS_VERSION}-*.whl"))
    if wheels:
        return wheels[0]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           f"{BINDINGS}=={BINDINGS_VERSION}", "-d", str(folder)],
                          capture_output=True, text=True, timeout=600)
    wheels = sorted(folder.glob(f"{BINDINGS.replace('-', '_')}-{BINDINGS_VERSION}-*.whl"))
    if done.returncode != 0 or not wheels:
        raise WheelUnavailable(f"pip could not download {BINDINGS}=={BINDINGS_VERSION} (is PyPI reachable?):\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wheels[0]


def build(wheel: Path) -> dict:
    """The provider's schema from the bindings' wheel."""
    bindings = read_bindings(wheel)
    if len(bindings.provider_versions) != 1:
        raise SchemaError(f"the bindings name several provider versions: {sorted(bindings.provider_versions)}")
    schema = {"format_version": "1.0", "generated_from": f"{BINDINGS}=={BINDINGS_VERSION}",
              "provider_version": bindings.provider_versions.pop(),
              "resource_schemas": {}, "data_source_schemas": {}, "ephemeral_resource_schemas": {}}
    for kind, terraform_type, module, members, arguments in bindings.entities:
        entity = {"version": 0, "block": block_schema(bindings, module, members, arguments)}
        if kind == "provider":
            schema["provider"] = entity
        else:
            schema[kind][terraform_type] = entity
    return schema


def read_bindings(wheel: Path) -> Bindings:
    """Every generated module of the wheel's jsii assembly, read without unpacking it to disk."""
    bindings = Bindings()
    with zipfile.ZipFile(wheel) as archive:
        assembly = next(name for name in archive.namelist() if name.endswith(".jsii.tgz"))
        with archive.open(assembly) as packed, tarfile.open(fileobj=packed, mode="r|gz") as tar:
            for entry in tar:
                if not entry.isfile() or not entry.name.startswith("package/lib/"):
                    continue
                module = entry.name.split("/")[2]
                if entry.name.endswith(".js"):  # index.js, and index-structs/structs*.js in large modules
                    read_module(bindings, module, tar.extractfile(entry).read().decode("utf-8"))
                elif entry.name == "package/lib/provider/index.d.ts":
                    # The provider's nested structs have no classes, so no flag comments:
                    # their required fields are those the typings do not mark optional.
                    typings = tar.extractfile(entry).read().decode("utf-8")
                    for name, body in INTERFACE.findall(typings):
                        bindings.required_fields[module, name] = set(REQUIRED_FIELD.findall(body))
    if not bindings.entities:
        raise SchemaError(f"{wheel.name} holds no generated resources: not the bindings this code reads")
    return bindings


def read_module(bindings: Bindings, module: str, text: str) -> None:
    for struct, body in HCL_FUNCTION.findall(text):
        bindings.arguments[module, struct[0].upper() + struct[1:]] = hcl_arguments(body)
    for name, base, body in CLASS.findall(text):
        if base == "ComplexObject" and name.endswith("OutputReference"):
            bindings.classes[module, name.removesuffix("OutputReference")] = read_members(body)
        elif base in ENTITY_KINDS:
            bindings.entities.append((ENTITY_KINDS[base], TERRAFORM_TYPE.search(body).group(1), module, read_members(body),
                                      hcl_arguments(body.split("synthesizeHclAttributes()", 1)[1])))
            bindings.provider_versions.update(PROVIDER_VERSION.findall(body))


def read_members(class_body: str) -> list[Member]:
    found = []
    for match in MEMBER.finditer(class_body):
        end = class_body.find("\n    //", match.end())  # the getter ends at the next comment or section
        getter = class_body[match.end():end if end >= 0 else len(class_body)]
        name, computed, optional, required = match.groups()
        found.append(Member(name, computed == "true", optional == "true", required == "true", reader(getter)))
    return found


def reader(getter_code: str) -> tuple[str, tuple[str, ...]] | None:
    for pattern, kind in READERS:
        match = pattern.search(getter_code)
        if match:
            return kind, match.groups()
    return None


def hcl_arguments(code: str) -> list[Argument]:
    attrs = ATTRS.search(code)
    return [Argument(name, value, is_block == "true", kind, storage)
            for name, value, is_block, kind, storage in HCL_ENTRY.findall(attrs.group(1) if attrs else "")]


def block_schema(bindings: Bindings, module: str, members: list[Member], arguments: list[Argument],
                 required_fields: set[str] | None = None, path: tuple[str, ...] = ()) -> dict:
    """A block's schema: each argument as the code writes it, each readable-only attribute as its
    getter reads it. `path` holds the structs this block is nested in."""
    flags = {member.name: member for member in members}
    attributes, block_types = {}, {}
    for argument in arguments:
        member = flags.get(argument.name)
        if member is not None:
            required, computed = member.required, member.computed
        else:
            required, computed = argument_camel_name(argument) in (required_fields or ()), False
        if argument.is_block:
            shaped = nested_argument(bindings, module, argument, required, path)
            if "nesting_mode" in shaped:
                block_types[argument.name] = shaped
                continue
            if computed and not required:
                shaped["computed"] = True
            attributes[argument.name] = shaped
            continue
        attribute = {"type": argument_type(argument)}
        if argument.storage == "any":
            attribute["flattened"] = True
        if "markWriteOnlyAttribute" in argument.value:
            attribute["write_only"] = True
        attribute.update({"required": True} if required else {"optional": True})
        if computed and not required:
            attribute["computed"] = True
        attributes[argument.name] = attribute
    for member in members:
        if member.name not in attributes and member.name not in block_types:
            if member.optional or member.required:
                raise SchemaError(f"{member.name}: an argument that no *ToHclTerraform code writes")
            attributes[member.name] = {"type": read_type(bindings, module, member), "computed": True}
    return {key: value for key, value in (("attributes", attributes), ("block_types", block_types)) if value}


def argument_camel_name(argument: Argument) -> str:
    match = re.search(r"struct\.(\w+)", argument.value)
    return match.group(1) if match else ""


def nested_argument(bindings: Bindings, module: str, argument: Argument, required: bool, path: tuple[str, ...]) -> dict:
    """A nested struct: a block, nesting list or set (at most one item when mapped alone), or single
    for `timeouts`; or an attribute of object type: lists of objects mapped as non-blocks
    (aws_security_group's ingress), maps of objects, and other single structs (aws_s3tables_table's
    maintenance_configuration). A struct nested in itself (aws_wafv2_web_acl_rule's statement) is
    where the bindings stopped following the provider's finite nesting: from there on it counts as
    flattened."""
    match = STRUCT_MAPPER.search(argument.value)
    if match is None:
        raise SchemaError(f"{argument.name}: no nested struct in {argument.value}")
    struct = module, match.group(1)[0].upper() + match.group(1)[1:]
    if struct[1] in path:
        return {"type": "dynamic", "optional": True, "flattened": True}
    nested = block_schema(bindings, module, bindings.classes.get(struct, []), bindings.arguments[struct],
                          bindings.required_fields.get(struct), (*path, struct[1]))
    listed = re.search(r"listMapperHcl\([\w.]+ToHclTerraform, (true|false)\)", argument.value)
    if argument.kind == "struct":
        if argument.storage.endswith("Timeouts"):
            return {"nesting_mode": "single", "block": nested}
        return attribute_of(object_type(nested), required)
    if argument.kind == "map":
        return attribute_of(["map", object_type(nested)], required)
    if listed and listed.group(1) == "false":
        return attribute_of([argument.kind, object_type(nested)], required)
    block = {"nesting_mode": argument.kind, "block": nested}
    if required:
        block["min_items"] = 1
    if not listed:
        block["max_items"] = 1
    return block


def attribute_of(type_: list, required: bool) -> dict:
    return {"type": type_, "required": True} if required else {"type": type_, "optional": True}


def object_type(block: dict) -> list:
    """A block's schema as a cty object type; what is not required may be left out."""
    attributes = {name: attribute["type"] for name, attribute in block.get("attributes", {}).items()}
    for name, nested in block.get("block_types", {}).items():
        inner = object_type(nested["block"])
        attributes[name] = inner if nested["nesting_mode"] == "single" else [nested["nesting_mode"], inner]
    required = {name for name, attribute in block.get("attributes", {}).items() if attribute.get("required")}
    required |= {name for name, nested in block.get("block_types", {}).items() if nested.get("min_items")}
    optional = sorted(set(attributes) - required)
    return ["object", attributes, optional] if optional else ["object", attributes]


def argument_type(argument: Argument) -> str | list:
    """stringList in a set is ["set","string"]; stringMapList is ["list",["map","string"]]; any is dynamic."""
    if argument.storage == "any":
        return "dynamic"
    match = re.fullmatch(r"(string|number|boolean)((?:List|Map)*)", argument.storage)
    if match is None:
        raise SchemaError(f"{argument.name}: unknown storage class {argument.storage}")
    type_: str | list = PRIMITIVES[match.group(1)]
    containers = re.findall(r"List|Map", match.group(2))
    for position, container in enumerate(containers):
        outermost = position == len(containers) - 1
        collection = argument.kind if outermost and argument.kind in ("list", "set", "map") else container.lower()
        type_ = [collection, type_]
    return type_


def read_type(bindings: Bindings, module: str, member: Member) -> str | list:
    """A readable-only attribute's type, from its getter; nested objects from their classes."""
    if member.reader is None:
        raise SchemaError(f"{member.name}: no getter this code knows")
    kind, names = member.reader
    if kind == "primitive":
        return PRIMITIVES[names[0].lower()]
    if kind in ("list", "set", "map"):
        return [kind, PRIMITIVES[(names[0] or "string").lower()]]
    if kind == "dynamic":
        return "dynamic"
    element = ["object", {nested.name: read_type(bindings, module, nested) for nested in bindings.classes[module, names[0]]}]
    if kind == "object_list":
        return ["set" if names[1] == "true" else "list", element]
    if kind == "object_map":
        return ["map", element]
    return element


def summary(schema: dict) -> str:
    return (f"hashicorp/aws {schema['provider_version']} ({schema['generated_from']}): "
            f"{len(schema['resource_schemas'])} resource types, {len(schema['data_source_schemas'])} data sources, "
            f"{len(schema['ephemeral_resource_schemas'])} ephemeral resources")
