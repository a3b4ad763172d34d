"""Pruning the image's venv: what nothing can load goes, and a library something names is refused."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import openvino
import pytest

from objdetect_serving.archive import build_mar
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


@pytest.mark.integration
def test_openvino_pruned_as_the_image_prunes_it_still_runs_an_archives_parts(tmp_path):
    """The cpu image keeps of OpenVINO what serving an archive's IR needs; proven here on a copy of
    this venv's OpenVINO, pruned, running the three parts of a real archive in a fresh process."""
    site = tmp_path / "site-packages"
    shutil.copytree(Path(openvino.__file__).parent, site / "openvino")
    removed = prune_venv.openvino_extras(site)
    assert {p.name for p in removed} >= {"libopenvino_intel_gpu_plugin.so", "libopenvino_intel_npu_plugin.so",
                                         "tools", "pytorch"}
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) < 110e6  # of 180 MB

    with zipfile.ZipFile(build_mar("shapes", tmp_path, "detector", "1.0")) as archive:
        archive.extractall(tmp_path / "unpacked", [n for n in archive.namelist() if n.startswith("openvino/")])
    script = (
        "import sys, numpy as np, openvino as ov\n"
        "assert ov.__file__.startswith(sys.argv[1]), ov.__file__\n"
        "core = ov.Core()\n"
        "model = core.compile_model(core.read_model(sys.argv[2] + '/backbone.xml'), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})\n"
        "out = model.create_infer_request().infer([np.full((1, 3, 320, 416), 0.5, np.float32)])\n"
        "np.save(sys.argv[3], out[model.outputs[0]])\n")
    done = subprocess.run([sys.executable, "-c", script, str(site), str(tmp_path / "unpacked" / "openvino"),
                           str(tmp_path / "pruned.npy")], env={**os.environ, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    core = openvino.Core()
    full = core.compile_model(core.read_model(tmp_path / "unpacked" / "openvino" / "backbone.xml"), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32"})
    expected = full.create_infer_request().infer([np.full((1, 3, 320, 416), 0.5, np.float32)])[full.outputs[0]]
    assert np.array_equal(np.load(tmp_path / "pruned.npy"), expected)
