"""TorchServe's Java frontend on a Netty that carries the published fixes, and checks its requests.

TorchServe 0.12.0 (the last release; the project is archived) bundles Netty 4.1.53.Final (2020),
unshaded, inside `ts/frontend/model-server.jar`, and its frontend decodes form bodies itself with
Netty's HttpPostRequestDecoder: one 20 MiB `a&a&...` body filled its heap and stopped the whole
server (CVE-2024-29025), and later Netty CVEs apply as well. Nobody upstream will ship a newer jar.

`install` rewrites the jar in place:
- without its Netty (classes, native libraries, version file), with Debian 12's `libnetty-java`
  beside it (4.1.48 with every Netty fix since backported: docs/security.md lists them) and the
  JCTools it depends on. TorchServe's launcher puts every jar of that folder on the classpath, so
  the frontend runs on Debian's Netty alone (with no native epoll library, on Java NIO). The gRPC
  server's own shaded Netty (`io/grpc/netty/shaded`) stays: gRPC listens on loopback only;
- with `HttpRequestHandler.java` (beside this file) compiled in place of TorchServe's own: the
  checks it adds before any handler reads a body are listed at its top, and a /ping that says
  Healthy only while the marker files named in SERVING_MARKER_ENV and DRAIN_MARKER_ENV say the
  server serves (torchserve.py sets them).
`install` refuses when a field or method that TorchServe's classes refer to in Netty is not in
Debian's Netty (it was compiled against 4.1.53: a missing one would fail only when that code path
runs). `problem` is what the server checks before it starts (torchserve.py), so a frontend without
any of them never serves.

    python -m objdetect_serving.frontend install [--netty-jars /usr/share/java]
    python -m objdetect_serving.frontend check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

DEBIAN_PACKAGE = "libnetty-java"
# The first Debian 12 revision with the CVE-2024-29025 fix (and the 2025 Netty fixes).
MIN_DEBIAN_VERSION = "1:4.1.48-7+deb12u2"
NETTY_VERSION = "4.1.48.Final"
# Debian's modules that provide every Netty class model-server.jar's frontend refers to.
MODULES = ("buffer", "codec", "codec-http", "common", "handler", "resolver", "transport",
           "transport-native-unix-common", "transport-native-epoll", "transport-native-kqueue")
JCTOOLS = "jctools-core.jar"  # Debian builds Netty against JCTools instead of shading it
STAMP = "objdetect-netty.json"  # what install put there: the Debian package and its version
BUNDLED_PREFIXES = ("io/netty/", "META-INF/native/libnetty_", "META-INF/io.netty.versions.properties")
HANDLER_SOURCE = Path(__file__).with_name("HttpRequestHandler.java")
HANDLER_CLASS = "org/pytorch/serve/http/HttpRequestHandler.class"
HANDLER_MARK = b"multipart/form-data needs a boundary"  # a string only the compiled patch holds
# The marker files /ping answers from (HttpRequestHandler.java reads these variables): their names
# are in the compiled class too, so `problem` also finds a frontend without that /ping.
SERVING_MARKER_ENV = "OBJDETECT_SERVING_MARKER"
DRAIN_MARKER_ENV = "OBJDETECT_DRAIN_MARKER"


def frontend_dir() -> Path:
    import ts  # TorchServe's Python package: the launcher runs the jars in its frontend folder
    return Path(ts.__file__).parent / "frontend"


def install(frontend: Path, netty_jars: Path = Path("/usr/share/java")) -> dict:
    """Replaces the bundled Netty in `frontend` with Debian's; idempotent. Returns the stamp."""
    version = debian_version()
    if version is None or not version_at_least(version, MIN_DEBIAN_VERSION):
        raise SystemExit(f"frontend: Debian's {DEBIAN_PACKAGE} >= {MIN_DEBIAN_VERSION} is needed to replace the "
                         f"Netty of 2020 that TorchServe bundles (found: {version or 'not installed'}); "
                         f"apt-get install {DEBIAN_PACKAGE}")
    jars = [netty_jars / f"netty-{module}-{NETTY_VERSION}.jar" for module in MODULES] + [netty_jars / JCTOOLS]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if missing:
        raise SystemExit(f"frontend: {', '.join(missing)} not found ({DEBIAN_PACKAGE} {version})")
    for jar in jars:
        shutil.copyfile(jar, frontend / jar.name)
    server_jar = frontend / "model-server.jar"
    unresolved = unresolved_netty_references([server_jar], [frontend / jar.name for jar in jars])
    if unresolved:
        raise SystemExit(f"frontend: TorchServe refers to Netty members that {DEBIAN_PACKAGE} {version} lacks: "
                         + ", ".join(unresolved[:20]))
    with tempfile.TemporaryDirectory() as classes:
        # Debian's jars first: javac resolves each class at the first classpath entry that has it.
        _compile(HANDLER_SOURCE, [frontend / jar.name for jar in jars] + [server_jar], Path(classes))
        _rewrite(server_jar, Path(classes))
    stamp = {"package": DEBIAN_PACKAGE, "version": version, "jars": sorted(jar.name for jar in jars)}
    (frontend / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return stamp


def problem(frontend: Path) -> str | None:
    """Why the frontend in `frontend` must not serve, or None when it runs on Debian's Netty with
    the request checks and the readiness /ping compiled in."""
    fix = f"run `make setup`, or `python -m objdetect_serving.frontend install` ({frontend})"
    with zipfile.ZipFile(frontend / "model-server.jar") as jar:
        if any(name.startswith(BUNDLED_PREFIXES) for name in jar.namelist()):
            return ("TorchServe's frontend still carries its bundled Netty 4.1.53 (2020; CVE-2024-29025 lets "
                    f"one form body stop the server): {fix}")
        handler = jar.read(HANDLER_CLASS)
        if HANDLER_MARK not in handler:
            return f"TorchServe's frontend lacks objdetect's request checks (HttpRequestHandler.java): {fix}"
        if not all(name.encode() in handler for name in (SERVING_MARKER_ENV, DRAIN_MARKER_ENV)):
            return ("TorchServe's frontend lacks objdetect's readiness /ping, which keeps the load balancer "
                    f"from a server whose model still loads (HttpRequestHandler.java): {fix}")
    stamp = frontend / STAMP
    jars = json.loads(stamp.read_text())["jars"] if stamp.is_file() else []
    if not jars or not all((frontend / jar).is_file() for jar in jars):
        return f"TorchServe's frontend has no Netty: {fix}"
    return None


def _compile(source: Path, classpath: list[Path], out: Path) -> None:
    javac = Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin" / "javac"
    javac = str(javac) if javac.is_file() else shutil.which("javac")
    if javac is None:
        raise SystemExit("frontend: a JDK's javac is needed to compile objdetect's request checks into "
                         "TorchServe's frontend: apt-get install openjdk-17-jdk-headless")
    # Java 8 bytecode, as the rest of model-server.jar.
    subprocess.run([javac, "--release", "8", "-nowarn", "-Xlint:-options", "-encoding", "UTF-8", "-d", str(out),
                    "-cp", os.pathsep.join(map(str, classpath)), str(source)], check=True)


def _rewrite(jar_path: Path, classes: Path) -> None:
    """The jar without its bundled Netty, and with the compiled classes in `classes` in place of its own."""
    compiled = {path.relative_to(classes).as_posix(): path.read_bytes() for path in classes.rglob("*.class")}
    rewritten = jar_path.with_suffix(".rewritten")
    with zipfile.ZipFile(jar_path) as jar, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as out:
        for item in jar.infolist():
            if not item.filename.startswith(BUNDLED_PREFIXES) and item.filename not in compiled:
                out.writestr(item, jar.read(item))
        for name, data in sorted(compiled.items()):
            out.writestr(name, data)
    rewritten.replace(jar_path)


class JavaClass(NamedTuple):
    """What the resolution of a field or method reference needs of a class file (JVMS 4)."""

    name: str
    superclass: str | None
    interfaces: list[str]
    members: set[tuple[str, str]]  # (name, descriptor) of its fields and methods
    references: list[tuple[str, str, str]]  # (class, name, descriptor) of the fields and methods it uses


def unresolved_netty_references(users: list[Path], netty_jars: list[Path]) -> list[str]:
    """The Netty fields and methods that classes in `users` (org/pytorch only) refer to and that no
    class in `netty_jars` declares or inherits, as `class.name descriptor`."""
    netty = {java.name: java for jar in netty_jars for java in _classes(jar, ("io/netty/", "org/jctools/"))}

    def declares(owner: str, member: tuple[str, str]) -> bool | None:  # None: decided outside Netty (the JDK)
        java = netty.get(owner)
        if java is None:
            return None if not owner.startswith("io/netty/") else False
        if member in java.members:
            return True
        for parent in filter(None, [java.superclass, *java.interfaces]):
            found = declares(parent, member)
            if found or (found is None and not parent.startswith("io/netty/")):
                return True if found else None
        return False

    return sorted({f"{owner}.{name} {descriptor}" for jar in users for java in _classes(jar, ("org/pytorch/",))
                   for owner, name, descriptor in java.references
                   if owner.startswith("io/netty/") and declares(owner, (name, descriptor)) is False})


def _classes(jar_path: Path, prefixes: tuple[str, ...]):
    with zipfile.ZipFile(jar_path) as jar:
        for name in jar.namelist():
            if name.endswith(".class") and name.startswith(prefixes):
                yield _read_class(jar.read(name))


def _read_class(data: bytes) -> JavaClass:
    """A class file's names, members and member references (JVMS 4.4); its attributes are skipped."""
    (count,) = struct.unpack_from(">H", data, 8)
    pool: list[tuple[int, object] | None] = [None] * count  # (tag, a UTF-8 string or constant pool indexes)
    at, index = 10, 1
    while index < count:
        tag = data[at]
        if tag == 1:  # UTF-8
            (length,) = struct.unpack_from(">H", data, at + 1)
            pool[index] = (tag, data[at + 3:at + 3 + length].decode("utf-8", "replace"))
            at += 3 + length
        elif tag in (7, 8, 16, 19, 20):  # class, string, method type, module, package: one index
            pool[index] = (tag, struct.unpack_from(">H", data, at + 1))
            at += 3
        elif tag in (3, 4, 9, 10, 11, 12, 17, 18):  # numbers, member refs, name-and-type, dynamic: two
            pool[index] = (tag, struct.unpack_from(">HH", data, at + 1))
            at += 5
        elif tag in (5, 6):  # long, double: eight bytes, two slots
            at += 9
            index += 1
        elif tag == 15:  # method handle
            at += 4
        else:
            raise ValueError(f"constant pool tag {tag}")
        index += 1

    def utf8(i: int) -> str:
        return pool[i][1]

    def class_name(i: int) -> str:
        return utf8(pool[i][1][0])

    _, this, superclass, interface_count = struct.unpack_from(">HHHH", data, at)
    at += 8
    interfaces = [class_name(struct.unpack_from(">H", data, at + 2 * i)[0]) for i in range(interface_count)]
    at += 2 * interface_count
    members = set()
    for _ in ("fields", "methods"):
        (member_count,) = struct.unpack_from(">H", data, at)
        at += 2
        for _ in range(member_count):
            _, name, descriptor, attribute_count = struct.unpack_from(">HHHH", data, at)
            at += 8
            members.add((utf8(name), utf8(descriptor)))
            for _ in range(attribute_count):
                at += 6 + struct.unpack_from(">I", data, at + 2)[0]
    references = []
    for entry in pool:
        if entry and entry[0] in (9, 10, 11):  # field, method, interface method reference
            owner, name_and_type = entry[1]
            name, descriptor = pool[name_and_type][1]
            references.append((class_name(owner), utf8(name), utf8(descriptor)))
    return JavaClass(class_name(this), class_name(superclass) if superclass else None, interfaces, members,
                     references)


def debian_version(package: str = DEBIAN_PACKAGE) -> str | None:
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except FileNotFoundError:  # not a Debian system
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def version_at_least(version: str, minimum: str) -> bool:
    """Debian's version order (dpkg --compare-versions)."""
    return subprocess.run(["dpkg", "--compare-versions", version, "ge", minimum]).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install_parser = commands.add_parser("install", help="replace the bundled Netty with Debian's")
    install_parser.add_argument("--netty-jars", type=Path, default=Path("/usr/share/java"),
                                help="where Debian's libnetty-java put its jars (default /usr/share/java)")
    commands.add_parser("check", help="exit 1 unless the frontend runs on Debian's Netty")
    args = parser.parse_args(argv)
    frontend = frontend_dir()
    if args.command == "install":
        stamp = install(frontend, args.netty_jars)
        print(f"frontend: {frontend} runs on {stamp['package']} {stamp['version']}")
        return 0
    why = problem(frontend)
    print(why or f"frontend: {frontend} runs on {json.loads((frontend / STAMP).read_text())['version']}")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
