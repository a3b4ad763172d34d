"""The operators' model-version commands, through TorchServe's management API (scripts/models.py).

    python scripts/models.py list
    python scripts/models.py describe detector [2.0]
    python scripts/models.py register model_store/detector-v2.0.mar --name detector --version 2.0 \\
        [--workers 1] [--batch-size 4 --max-batch-delay 5] [--set-default]
    python scripts/models.py set-default detector 2.0
    python scripts/models.py rollback detector
    python scripts/models.py scale detector [2.0] --min-workers 2 [--max-workers 4]
    python scripts/models.py unregister detector 1.0 [--force]

The management API listens on loopback only (http://127.0.0.1:8081; in ECS, reach it with ECS
Exec). With TorchServe token authorization on, pass --token or --key-file (key_file.json).
`rollback` returns to the default before the last `set-default` this tool made (remembered in
--state), or else to the highest version below the current default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

from .management import DEFAULT_URL, Management, ManagementError

DEFAULT_STATE = Path(os.environ.get("OBJDETECT_STATE", Path.home() / ".objdetect" / "model-defaults.json"))


def archive_manifest(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as error:
        raise ManagementError(f"{path} is not a readable model archive: {error}") from None


def version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in version.replace("-", ".").split("."))


class DefaultHistory:
    """Which default each set-default replaced, per management URL and model, for rollback."""

    def __init__(self, path: Path, url: str):
        self.path, self.url = path, url

    def _load(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def push(self, name: str, previous: str) -> None:
        data = self._load()
        data.setdefault(self.url, {}).setdefault(name, []).append(previous)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=2))

    def pop(self, name: str) -> str | None:
        data = self._load()
        stack = data.get(self.url, {}).get(name, [])
        if not stack:
            return None
        previous = stack.pop()
        self.path.write_text(json.dumps(data, indent=2))
        return previous


def workers_summary(description: dict) -> str:
    workers = description.get("workers", [])
    states = ", ".join(f"{w['status']} (pid {w.get('pid', '?')})" for w in workers) or "none"
    return f"{len(workers)} worker(s): {states}"


def cmd_list(api: Management, args) -> None:
    names = api.models()
    if not names:
        print("no models registered")
    for name in names:
        default = api.default_version(name)
        for described in sorted(api.versions(name), key=lambda d: version_key(d["modelVersion"])):
            marker = " (default)" if described["modelVersion"] == default else ""
            print(f"{name} {described['modelVersion']}{marker}: {workers_summary(described)}")


def cmd_describe(api: Management, args) -> None:
    default = api.default_version(args.name)
    for described in api.describe(args.name, args.version):
        described["isDefault"] = described["modelVersion"] == default
        print(json.dumps(described, indent=2))


def cmd_register(api: Management, args) -> None:
    archive = Path(args.archive)
    manifest = archive_manifest(archive) if archive.exists() else None
    if manifest and args.version and manifest["modelVersion"] != args.version:
        raise ManagementError(f"{archive} holds version {manifest['modelVersion']}, not {args.version}: "
                              f"rebuild it with `make mar VERSION={args.version}`")
    name = args.name or (manifest or {}).get("modelName")
    version = args.version or (manifest or {}).get("modelVersion")
    if not name or not version:
        raise ManagementError("give --name and --version (the archive is not readable from here)")
    if name in api.models() and any(d["modelVersion"] == version for d in api.versions(name)):
        raise ManagementError(f"{name} {version} is already registered; unregister it first or stamp a new version")
    params = {"url": archive.name if args.model_store_relative else str(archive), "model_name": name,
              "initial_workers": args.workers, "synchronous": "true"}
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    if args.max_batch_delay is not None:
        params["max_batch_delay"] = args.max_batch_delay
    try:
        api.call("POST", "/models", **params)
        described = api.describe(name, version)[0]
        if not any(w["status"] == "READY" for w in described.get("workers", [])):
            raise ManagementError(f"{name} {version} registered but no worker is READY: {workers_summary(described)}")
    except ManagementError as error:
        _unregister_quietly(api, name, version)
        raise ManagementError(f"{error}\n{name} {version} did not load and was unregistered "
                              "(its worker log, model_log.log, has the traceback)") from None
    print(f"registered {name} {version}: {workers_summary(described)}")
    if args.set_default:
        _set_default(api, name, version, args.history)


def _unregister_quietly(api: Management, name: str, version: str) -> None:
    try:
        api.call("DELETE", f"/models/{name}/{version}")
    except ManagementError:
        pass  # it may never have been registered


def _set_default(api: Management, name: str, version: str, history: DefaultHistory) -> None:
    previous = api.default_version(name)
    if previous == version:
        print(f"{name} {version} is already the default")
        return
    api.call("PUT", f"/models/{name}/{version}/set-default")
    history.push(name, previous)
    print(f"{name}: default version {previous} -> {version}")


def cmd_set_default(api: Management, args) -> None:
    _set_default(api, args.name, args.version, args.history)


def cmd_rollback(api: Management, args) -> None:
    current = api.default_version(args.name)
    registered = {d["modelVersion"] for d in api.versions(args.name)}
    previous = args.history.pop(args.name)
    how = "the default before the last set-default"
    if previous is None or previous not in registered or previous == current:
        lower = sorted((v for v in registered if version_key(v) < version_key(current)), key=version_key)
        if not lower:
            raise ManagementError(f"{args.name}: nothing to roll back to from {current} "
                                  f"(registered: {', '.join(sorted(registered, key=version_key))})")
        previous, how = lower[-1], "the highest version below it (no set-default recorded)"
    api.call("PUT", f"/models/{args.name}/{previous}/set-default")
    print(f"{args.name}: rolled back {current} -> {previous} ({how})")


def cmd_scale(api: Management, args) -> None:
    path = f"/models/{args.name}/{args.version}" if args.version else f"/models/{args.name}"
    params = {"min_worker": args.min_workers, "synchronous": "true"}
    if args.max_workers is not None:
        if args.max_workers < args.min_workers:
            raise ManagementError("--max-workers must not be below --min-workers")
        params["max_worker"] = args.max_workers
    api.call("PUT", path, **params)
    described = api.describe(args.name, args.version or api.default_version(args.name))[0]
    print(f"{args.name} {described['modelVersion']}: min {described['minWorkers']}, max {described['maxWorkers']}, "
          f"{workers_summary(described)}")


def cmd_unregister(api: Management, args) -> None:
    versions = {d["modelVersion"] for d in api.describe(args.name, args.version)}
    if args.version not in versions:
        raise ManagementError(f"{args.name} has no version {args.version}")
    others = [d["modelVersion"] for d in api.versions(args.name) if d["modelVersion"] != args.version]
    if api.default_version(args.name) == args.version and others and not args.force:
        raise ManagementError(f"{args.name} {args.version} is the default and {', '.join(others)} remain: "
                              f"set another default first, or pass --force")
    if api.default_version(args.name) == args.version and others:
        # TorchServe refuses to remove a default version while others exist: move the default first.
        _set_default(api, args.name, max(others, key=version_key), args.history)
    api.call("DELETE", f"/models/{args.name}/{args.version}")
    print(f"unregistered {args.name} {args.version}")


def read_token(args) -> str | None:
    if args.token:
        return args.token
    if args.key_file:
        try:
            return json.loads(Path(args.key_file).read_text())["management"]["key"]
        except (OSError, KeyError, ValueError) as error:
            raise ManagementError(f"cannot read the management key from {args.key_file}: {error}") from None
    return os.environ.get("OBJDETECT_MANAGEMENT_TOKEN")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(top)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_server_commands(commands)
    return top


def add_server_options(top) -> None:
    """How to reach one TorchServe's management API (on a parser or an argument group: objdetect_tools.releases
    adds them to its own CLI)."""
    top.add_argument("--url", default=os.environ.get("OBJDETECT_MANAGEMENT_URL", DEFAULT_URL),
                     help="management API (default %(default)s)")
    top.add_argument("--token", help="management token, when TorchServe token authorization is on")
    top.add_argument("--key-file", help="TorchServe's key_file.json, to read the management token from")
    top.add_argument("--state", type=Path, default=DEFAULT_STATE, help="where set-default history is kept")


def add_server_commands(commands, rollback: bool = True) -> None:
    """The one-server verbs. `rollback=False` leaves `rollback` to a caller that gives it more to do
    (objdetect_tools.releases: the ECS service's rollback too); its NAME then runs `cmd_rollback`."""
    commands.add_parser("list", help="models, versions, defaults and workers").set_defaults(run=cmd_list)
    describe = commands.add_parser("describe", help="one model's versions in full")
    describe.add_argument("name")
    describe.add_argument("version", nargs="?")
    describe.set_defaults(run=cmd_describe)
    register = commands.add_parser("register", help="register an archive as a new version and wait for READY")
    register.add_argument("archive", help="a .mar in TorchServe's model store (or its file name there)")
    register.add_argument("--name")
    register.add_argument("--version")
    register.add_argument("--workers", type=int, default=1)
    register.add_argument("--batch-size", type=int)
    register.add_argument("--max-batch-delay", type=int, help="milliseconds")
    register.add_argument("--set-default", action="store_true")
    register.add_argument("--absolute-url", dest="model_store_relative", action="store_false",
                          help="send the archive's path rather than its name in the model store")
    register.set_defaults(run=cmd_register)
    set_default = commands.add_parser("set-default", help="make VERSION the default")
    set_default.add_argument("name")
    set_default.add_argument("version")
    set_default.set_defaults(run=cmd_set_default)
    if rollback:
        rollback_ = commands.add_parser("rollback", help="back to the previous default")
        rollback_.add_argument("name")
        rollback_.set_defaults(run=cmd_rollback)
    scale = commands.add_parser("scale", help="set the worker range (the default version without VERSION)")
    scale.add_argument("name")
    scale.add_argument("version", nargs="?")
    scale.add_argument("--min-workers", type=int, required=True)
    scale.add_argument("--max-workers", type=int)
    scale.set_defaults(run=cmd_scale)
    unregister = commands.add_parser("unregister", help="remove a version")
    unregister.add_argument("name")
    unregister.add_argument("version")
    unregister.add_argument("--force", action="store_true", help="also the default version while others remain")
    unregister.set_defaults(run=cmd_unregister)


def run(args: argparse.Namespace) -> int:
    """Runs a parsed one-server command against the management API: 0, or 1 with one line on stderr."""
    try:
        api = Management(args.url, read_token(args))
        args.history = DefaultHistory(args.state, api.url)
        args.run(api, args)
    except ManagementError as error:
        print(f"models: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))
