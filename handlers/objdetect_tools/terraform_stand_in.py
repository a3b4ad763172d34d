"""A stand-in for the hashicorp/aws provider that knows its schema and nothing else (make validate-terraform).

`terraform validate` checks a configuration against the schema its providers report over gRPC
(plugin protocol 6, through HashiCorp's go-plugin). This process is such a provider: terraform
starts it from a filesystem mirror (terraform_validate builds one), and it serves

- GetProviderSchema: the schema terraform_schema recovered from the provider's CDK bindings.
  Where the bindings flattened a block (terraform_schema's "flattened"), it serves a block that
  takes what the configuration writes there (read by terraform_validate, in the file SHAPES_ENV
  names): those attributes, of any type, and those nested blocks; empty where nothing is written.
  Terraform allows values of any type in lists of blocks only, so a set of blocks that holds such
  a block is served as a list;
- GetMetadata: the lists of resource types, data sources and ephemeral resources;
- Validate*Config: the one check the provider SDKs make there from the schema alone: no value for a
  read-only (computed-only) attribute, which terraform itself lets through. The real provider's
  other checks there (allowed values, formats, conflicting arguments) are in no schema;
- ValidateProviderConfig, GetFunctions, StopProvider: answered with nothing;
- every other RPC (ConfigureProvider, ReadResource, PlanResourceChange, ApplyResourceChange,
  ImportResourceState, ReadDataSource, ...): an error diagnostic saying this is a schema-only
  stand-in. It holds no credentials and no AWS client: plan and apply cannot go anywhere.

go-plugin's side: TF_PLUGIN_MAGIC_COOKIE must hold terraform's cookie; the process prints
`1|6|tcp|127.0.0.1:<port>|grpc` and serves on loopback only, with the gRPC health service
("plugin" SERVING) and go-plugin's GRPCController.Shutdown. Terraform runs it with
TF_DISABLE_PLUGIN_TLS=1 (plain gRPC on loopback; otherwise terraform expects mutual TLS).
GRPCStdio and GRPCBroker are left unimplemented, which go-plugin tolerates.

The protocol's Python stubs are generated from the committed tfplugin6.proto into the cache
(generate_stubs; protoc from grpcio-tools), never committed.

    python -m objdetect_tools.terraform_stand_in --schema SCHEMA.json --stubs STUBS_DIR
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.resources
import json
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import google.protobuf
import grpc
import msgpack
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

PROTO = Path(__file__).with_name("tfplugin6.proto")
MAGIC_COOKIE_KEY = "TF_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2"
PROTOCOL_VERSION = 6
SHAPES_ENV = "OBJDETECT_TERRAFORM_SHAPES"
ANSWERED_EMPTY = {"ValidateProviderConfig", "GetFunctions", "StopProvider"}
VALIDATED = {"ValidateResourceConfig": "resource_schemas", "ValidateDataResourceConfig": "data_source_schemas",
             "ValidateEphemeralResourceConfig": "ephemeral_resource_schemas"}
REFUSAL = ("hashicorp/aws here is objdetect's schema-only stand-in for `terraform validate` "
           "(make validate-terraform): it has no credentials and no AWS client, so {rpc} cannot run. "
           "Use the real provider for plan and apply: a plain `terraform init`, with no TF_CLI_CONFIG_FILE "
           "pointing at the stand-in's mirror.")
DYNAMIC = json.dumps("dynamic").encode()
EMPTY_SHAPE = {"attributes": [], "blocks": {}}
UNKNOWN = object()  # cty's unknown values (msgpack extension types): set, not yet known
MAX_MESSAGE = 256 * 1024 * 1024


def generate_stubs(cache_dir: Path) -> Path:
    """tfplugin6_pb2 generated from the committed proto, once per proto and protobuf version."""
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:12]
    folder = cache_dir / f"stubs-{digest}-protobuf-{google.protobuf.__version__}"
    if not (folder / "tfplugin6_pb2.py").exists():
        from grpc_tools import protoc  # here only: the provider process never compiles
        folder.mkdir(parents=True, exist_ok=True)
        well_known = importlib.resources.files("grpc_tools") / "_proto"
        status = protoc.main(["protoc", f"-I{PROTO.parent}", f"-I{well_known}", f"--python_out={folder}", PROTO.name])
        if status != 0:
            raise RuntimeError(f"protoc could not compile {PROTO} (exit {status})")
    return folder


def load_stubs(folder: Path):
    sys.path.insert(0, str(folder))
    return importlib.import_module("tfplugin6_pb2")


def schema_message(pb, block: dict, shapes: dict, path: tuple[str, ...] = ()):
    """A Schema.Block from terraform_schema's JSON; flattened parts take the configuration's shapes."""
    message = pb.Schema.Block()
    for name, attribute in sorted(block.get("attributes", {}).items()):
        if attribute.get("flattened"):
            message.block_types.append(permissive_block(pb, name, shapes.get(".".join((*path, name)), EMPTY_SHAPE)))
            continue
        message.attributes.append(pb.Schema.Attribute(
            name=name, type=json.dumps(attribute["type"]).encode(), required=attribute.get("required", False),
            optional=attribute.get("optional", False), computed=attribute.get("computed", False),
            write_only=attribute.get("write_only", False)))
    for name, nested in sorted(block.get("block_types", {}).items()):
        nesting = nested["nesting_mode"]
        if nesting == "set" and any(key.startswith(".".join((*path, name, ""))) for key in shapes):
            nesting = "list"
        message.block_types.append(pb.Schema.NestedBlock(
            type_name=name, block=schema_message(pb, nested["block"], shapes, (*path, name)),
            nesting=pb.Schema.NestedBlock.NestingMode.Value(nesting.upper()),
            min_items=nested.get("min_items", 0), max_items=nested.get("max_items", 0)))
    return message


def permissive_block(pb, name: str, shape: dict):
    """A block that takes what the configuration writes in it: any attribute of any type, any nested block."""
    return pb.Schema.NestedBlock(
        type_name=name, nesting=pb.Schema.NestedBlock.NestingMode.LIST,
        block=pb.Schema.Block(
            attributes=[pb.Schema.Attribute(name=attribute, type=DYNAMIC, optional=True)
                        for attribute in sorted(shape["attributes"])],
            block_types=[permissive_block(pb, nested, nested_shape)
                         for nested, nested_shape in sorted(shape["blocks"].items())]))


def provider_schema(pb, schema: dict, shapes: dict):
    """GetProviderSchema's answer. `shapes`: {kind: {type: {"block.path": shape}}}, from terraform_validate."""
    response = pb.GetProviderSchema.Response(provider=pb.Schema(block=schema_message(pb, schema["provider"]["block"], {})))
    for kind in ("resource_schemas", "data_source_schemas", "ephemeral_resource_schemas"):
        target = getattr(response, kind)
        for type_name, entity in schema[kind].items():
            target[type_name].CopyFrom(pb.Schema(
                version=entity["version"],
                block=schema_message(pb, entity["block"], shapes.get(kind, {}).get(type_name, {}))))
    return response


def metadata(pb, schema: dict):
    Metadata = pb.GetMetadata
    return Metadata.Response(
        resources=[Metadata.ResourceMetadata(type_name=name) for name in schema["resource_schemas"]],
        data_sources=[Metadata.DataSourceMetadata(type_name=name) for name in schema["data_source_schemas"]],
        ephemeral_resources=[Metadata.EphemeralMetadata(type_name=name) for name in schema["ephemeral_resource_schemas"]])


def validate_config(pb, entities: dict, response_class, request, context):
    """Validate*Config: a value set for a read-only attribute is an error, as in the provider SDKs."""
    config = msgpack.unpackb(request.config.msgpack, raw=False, ext_hook=lambda code, data: UNKNOWN)
    return response_class(diagnostics=read_only_values(pb, entities[request.type_name]["block"], config, []))


def read_only_values(pb, block: dict, config, path: list) -> list:
    if not isinstance(config, dict):
        return []
    found = []
    for name, attribute in block.get("attributes", {}).items():
        settable = attribute.get("optional") or attribute.get("required")
        if attribute.get("computed") and not settable and config.get(name) is not None:
            found.append(pb.Diagnostic(
                severity=pb.Diagnostic.ERROR, summary="Value for unconfigurable attribute",
                detail=f'Can\'t configure a value for "{name}": its value will be decided automatically '
                       "based on the result of applying this configuration.",
                attribute=pb.AttributePath(steps=[*path, pb.AttributePath.Step(attribute_name=name)])))
    for name, nested in block.get("block_types", {}).items():
        value, step = config.get(name), pb.AttributePath.Step(attribute_name=name)
        if isinstance(value, dict) and nested["nesting_mode"] == "map":
            items = [([*path, step, pb.AttributePath.Step(element_key_string=key)], item) for key, item in value.items()]
        elif isinstance(value, list) and nested["nesting_mode"] == "list":
            items = [([*path, step, pb.AttributePath.Step(element_key_int=index)], item) for index, item in enumerate(value)]
        elif isinstance(value, list):  # a set: its elements have no address
            items = [([*path, step], item) for item in value]
        else:
            items = [([*path, step], value)]
        for item_path, item in items:
            found.extend(read_only_values(pb, nested["block"], item, item_path))
    return found


def refusal(pb, rpc: str, response_class):
    text = REFUSAL.format(rpc=rpc)
    fields = response_class.DESCRIPTOR.fields_by_name
    if "diagnostics" in fields:
        return response_class(diagnostics=[pb.Diagnostic(severity=pb.Diagnostic.ERROR,
                                                         summary="Schema-only stand-in provider", detail=text)])
    return response_class(error=pb.FunctionError(text=text))  # CallFunction


def provider_handler(pb, schema: dict, shapes: dict) -> grpc.GenericRpcHandler:
    """Every RPC of the Provider service: the schema, the metadata and the validations answered,
    StopProvider and GetFunctions answered empty, the rest refused."""
    service = pb.DESCRIPTOR.services_by_name["Provider"]
    fixed = {"GetProviderSchema": provider_schema(pb, schema, shapes), "GetMetadata": metadata(pb, schema)}
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        if method.name in VALIDATED:
            answer = functools.partial(validate_config, pb, schema[VALIDATED[method.name]], response_class)
        elif method.name in fixed:
            answer = always(fixed[method.name])
        elif method.name in ANSWERED_EMPTY:
            answer = always(response_class())
        else:
            answer = always(refusal(pb, method.name, response_class))
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=request_class.FromString, response_serializer=response_class.SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def always(response):
    """An RPC's behaviour that answers every request with the same response."""
    return lambda request, context: response


def controller_handler(server: grpc.Server) -> grpc.GenericRpcHandler:
    """go-plugin's GRPCController: Shutdown (an empty message each way) stops the server."""
    def shutdown(request: bytes, context) -> bytes:
        threading.Thread(target=server.stop, args=(1,), daemon=True).start()
        return b""
    same = lambda data: data  # noqa: E731 - plugin.Empty is zero bytes on the wire
    return grpc.method_handlers_generic_handler("plugin.GRPCController", {
        "Shutdown": grpc.unary_unary_rpc_method_handler(shutdown, request_deserializer=same, response_serializer=same)})


def serve(schema_path: Path, stubs: Path) -> int:
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE:
        print("This is a Terraform provider (objdetect's schema-only stand-in for hashicorp/aws): "
              "terraform starts it, it is not meant to be run directly.", file=sys.stderr)
        return 1
    offered = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", str(PROTOCOL_VERSION)).split(",")
    if str(PROTOCOL_VERSION) not in offered:
        print(f"terraform offers plugin protocols {offered}; this stand-in speaks {PROTOCOL_VERSION} only",
              file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # terraform handles Ctrl-C, then stops its providers
    pb = load_stubs(stubs)
    schema = json.loads(schema_path.read_text())
    shapes = json.loads(Path(os.environ[SHAPES_ENV]).read_text()) if os.environ.get(SHAPES_ENV) else {}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", MAX_MESSAGE)])
    server.add_generic_rpc_handlers([provider_handler(pb, schema, shapes), controller_handler(server)])
    health_service = health.HealthServicer()
    health_service.set("plugin", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"1|{PROTOCOL_VERSION}|tcp|127.0.0.1:{port}|grpc", flush=True)
    server.wait_for_termination()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schema", type=Path, required=True, help="terraform_schema's JSON")
    parser.add_argument("--stubs", type=Path, required=True, help="the folder generate_stubs wrote")
    arguments = parser.parse_args(argv)
    return serve(arguments.schema, arguments.stubs)


if __name__ == "__main__":
    sys.exit(main())
