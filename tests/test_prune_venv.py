"""Pruning the image's venv: what nothing can load goes, and a library something names is refused."""

import shutil
import subprocess
import sys

import pytest

from objdetect_tools import prune_venv


@pytest.fixture()
def fake_venv(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    lib = site / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcusolverMg.so.12").write_bytes(b"\x7fELF unreferenced")
    (lib / "libnvblas.so.13").write_bytes(b"\x7fELF unreferenced")
    (lib / "libcublas.so.13").write_bytes(b"\x7fELF needed")
    (site / "nvidia" / "cu13" / "include").mkdir()
    (site / "nvidia" / "cu13" / "include" / "cuda.h").write_text("/* header */")
    (lib / "libcudart_static.a").write_bytes(b"!<arch>")
    return tmp_path / "venv", site


@pytest.mark.integration
def test_prune_run_as_the_build_runs_it_removes_unreferenced_libraries_headers_and_static_archives(fake_venv):
    venv, site = fake_venv
    # The Dockerfile copies the file alone into the build stage: run a copy with no site-packages (-S).
    alone = shutil.copy(prune_venv.__file__, venv.parent / "prune_venv.py")
    subprocess.run([sys.executable, "-S", alone, str(venv), "--no-strip"], check=True, capture_output=True)
    remaining = sorted(p.name for p in site.rglob("*") if p.is_file())
    assert remaining == ["libcublas.so.13"]


@pytest.mark.unit
def test_prune_refuses_to_remove_a_library_something_names(fake_venv):
    venv, site = fake_venv
    (site / "torch").mkdir()
    (site / "torch" / "libtorch_cuda.so").write_bytes(b"\x7fELF ... dlopen(libcusolverMg.so.12) ...")
    with pytest.raises(SystemExit, match="torch/libtorch_cuda.so names libcusolverMg"):
        prune_venv.unreferenced_libraries(site)
    assert (site / "nvidia" / "cu13" / "lib" / "libcusolverMg.so.12").exists()
