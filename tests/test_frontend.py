"""TorchServe's frontend as `make setup` leaves it (objdetect_serving/frontend.py): on Debian's Netty,
with objdetect's request checks compiled in; and the server refuses to start on anything else.
What the checks answer is tested against a real server in test_http_api.py."""

import json
import shutil
import subprocess
import zipfile

import pytest

from objdetect_serving import frontend
from objdetect_serving.torchserve import ServerError, TorchServe

pytestmark = pytest.mark.integration  # dpkg and javac run as subprocesses


def manifest_version(jar) -> str:
    with zipfile.ZipFile(jar) as archive:
        manifest = archive.read("META-INF/MANIFEST.MF").decode()
    return next(line.split(":", 1)[1].strip() for line in manifest.splitlines()
                if line.startswith("Implementation-Version"))


def test_the_installed_frontend_runs_on_debians_netty_with_the_fixes():
    installed = frontend.frontend_dir()
    assert frontend.problem(installed) is None
    with zipfile.ZipFile(installed / "model-server.jar") as jar:
        names = jar.namelist()
        assert not [name for name in names if name.startswith("io/netty/")]  # 4.1.53 is gone
        assert frontend.HANDLER_MARK in jar.read(frontend.HANDLER_CLASS)
    stamp = json.loads((installed / frontend.STAMP).read_text())
    dpkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnetty-java"], capture_output=True, text=True)
    assert stamp["version"] == dpkg.stdout and frontend.version_at_least(dpkg.stdout, "1:4.1.48-7+deb12u2")
    netty_jars = [installed / name for name in stamp["jars"] if name.startswith("netty-")]
    assert netty_jars and {manifest_version(jar) for jar in netty_jars} == {"4.1.48.Final"}
    for jar in netty_jars:  # the very files Debian's package installed, not copies of something else
        assert jar.read_bytes() == (frontend.Path("/usr/share/java") / jar.name).read_bytes()


def test_every_netty_member_torchserve_uses_is_in_debians_netty():
    """TorchServe was compiled against Netty 4.1.53 and runs on 4.1.48: each field and method its
    classes refer to must be declared or inherited there, or its code path fails when it runs."""
    installed = frontend.frontend_dir()
    jars = [installed / name for name in json.loads((installed / frontend.STAMP).read_text())["jars"]]
    assert frontend.unresolved_netty_references([installed / "model-server.jar"], jars) == []
    without_http = [jar for jar in jars if "codec-http" not in jar.name]  # the check can see a gap
    unresolved = frontend.unresolved_netty_references([installed / "model-server.jar"], without_http)
    assert any(line.startswith("io/netty/handler/codec/http/HttpUtil.getMimeType ") for line in unresolved)


@pytest.fixture()
def bundled_frontend(tmp_path):
    """A copy of the installed frontend with a Netty class put back into its jar, as TorchServe ships it."""
    copy = tmp_path / "frontend"
    shutil.copytree(frontend.frontend_dir(), copy)
    with zipfile.ZipFile(copy / "model-server.jar", "a") as jar:
        jar.writestr("io/netty/util/Version.class", b"\xca\xfe\xba\xbe")
        jar.writestr("META-INF/native/libnetty_transport_native_epoll_x86_64.so", b"\x7fELF")
    return copy


def test_install_strips_the_bundled_netty_and_compiles_the_checks_in(bundled_frontend):
    assert "bundled Netty 4.1.53" in frontend.problem(bundled_frontend)
    frontend.install(bundled_frontend)
    assert frontend.problem(bundled_frontend) is None
    with zipfile.ZipFile(bundled_frontend / "model-server.jar") as jar:
        assert not [name for name in jar.namelist() if name.startswith(frontend.BUNDLED_PREFIXES)]
        assert jar.testzip() is None


def test_a_frontend_without_the_checks_is_named(bundled_frontend):
    frontend.install(bundled_frontend)
    jar_path = bundled_frontend / "model-server.jar"
    with zipfile.ZipFile(jar_path) as jar, zipfile.ZipFile(jar_path.with_suffix(".new"), "w") as out:
        for item in jar.infolist():
            out.writestr(item, b"\xca\xfe\xba\xbe" if item.filename == frontend.HANDLER_CLASS else jar.read(item))
    jar_path.with_suffix(".new").replace(jar_path)
    assert "request checks" in frontend.problem(bundled_frontend)


def test_a_frontend_without_the_readiness_ping_is_named(bundled_frontend):
    """The request checks compiled in, but a /ping that reads no marker: what the load balancer
    would send traffic through while the model loads."""
    frontend.install(bundled_frontend)
    jar_path = bundled_frontend / "model-server.jar"
    with zipfile.ZipFile(jar_path) as jar, zipfile.ZipFile(jar_path.with_suffix(".new"), "w") as out:
        for item in jar.infolist():
            data = jar.read(item)
            if item.filename == frontend.HANDLER_CLASS:  # the variable's name, renamed in place
                assert frontend.SERVING_MARKER_ENV.encode() in data
                data = data.replace(frontend.SERVING_MARKER_ENV.encode(), b"OBJDETECT_SERVING_MARKEX")
            out.writestr(item, data)
    jar_path.with_suffix(".new").replace(jar_path)
    assert "readiness /ping" in frontend.problem(bundled_frontend)


def test_the_server_refuses_to_start_on_a_frontend_with_the_bundled_netty(bundled_frontend, monkeypatch, model_store):
    monkeypatch.setattr(frontend, "frontend_dir", lambda: bundled_frontend)
    with pytest.raises(ServerError, match="bundled Netty 4.1.53"):
        TorchServe(model_store, {"detector": "detector-v1.0.mar"}).launch()
