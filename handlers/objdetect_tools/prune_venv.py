"""Remove from a virtual environment what serving never loads; run in the image's build stage.

    python prune_venv.py /opt/venv

The Dockerfile copies this file alone into the build stage (before the project, so the venv layer
stays cached), so it imports nothing of the project.

Only what can be shown unused is removed (docs/image.md gives the measured list):
- C/C++ headers, CMake files and static libraries: only compilers read them, and serving compiles
  nothing (no torch.compile, no C++ extensions); torch's C++ unit-test programs and protoc
  (torch/test, torch/bin but torch_shm_manager): programs that serving never runs;
- CUDA libraries that no library and no Python file of the environment names, so nothing can
  load them: not as a dependency (ELF NEEDED), not by dlopen (the name would appear in a
  binary), not by torch's own preloading (a Python name pattern). The check runs on every
  build: if a future wheel starts naming one, the build fails instead of shipping a broken image;
- OpenVINO's GPU and NPU plugins, its frontends but the IR one, and its tools (OPENVINO_UNUSED);
- the symbol tables of torch's three largest libraries (`strip --strip-unneeded`): the dynamic
  symbols, which loading and linking use, stay.
Then `import torch, torchvision` and a prediction run in the build (Dockerfile) as the proof.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

# CUDA libraries the wheels carry that inference does not need, if nothing names them.
UNREFERENCED_CANDIDATES = (
    "libcusolverMg",  # multi-GPU cuSOLVER
    "libnvrtc.alt", "libnvrtc-builtins.alt",  # an alternative NVRTC build; torch loads libnvrtc.so
    "libnvblas",  # BLAS drop-in for CPU programs
    "libcufftw",  # FFTW-compatible interface
    "libnvperf_target", "libpcsamplingutil", "libcheckpoint",  # profiling tools
)
# OpenVINO (the cpu flavor): what serving archives' parts on a CPU does not load. The plugins and
# frontends are found by file name at run time, so "nothing names them" cannot show this; the
# build's prediction with the pruned venv does (Dockerfile), and tests/test_prune_venv.py runs an
# archive's parts on a pruned copy. Kept: libopenvino, the CPU plugin and the IR frontend (archives
# carry IR, converted at build time with a full OpenVINO beside the venv), TBB, the Python bindings.
OPENVINO_UNUSED = (
    "openvino/libs/libopenvino_intel_gpu_plugin.so", "openvino/libs/libopenvino_intel_npu_plugin.so",
    "openvino/libs/cache.json",  # the GPU plugin's kernel tuning cache
    *(f"openvino/libs/libopenvino_{name}_frontend.so*"
      for name in ("pytorch", "onnx", "tensorflow", "tensorflow_lite", "paddle", "jax", "gguf")),
    *(f"openvino/frontend/{name}" for name in ("pytorch", "onnx", "tensorflow", "paddle", "jax")),
    "openvino/tools",  # model conversion (ovc) and benchmark_app
)
# Libraries whose symbol tables go: PyTorch's own, built with their symbol tables and never patched
# afterwards, and all loaded by `import torch` (on a CPU too), so the build's proof exercises the
# stripped files. Libraries vendored by auditwheel (the *.libs folders) were rewritten by patchelf,
# and strip corrupts them (numpy's OpenBLAS no longer loaded when we tried).
STRIPPED = ("libtorch_cpu.so", "libtorch_cuda.so", "libtorch_python.so")
# A catalogue of every CUDA library name (cuda-pathfinder's lookup table); naming is not loading.
CATALOGUES = ("cuda/pathfinder/_dynamic_libs/descriptor_catalog.py",)


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"prune_venv: no single site-packages under {venv}")
    return found[0]


def remove_build_files(site: Path) -> list[Path]:
    """Header folders and files, CMake files, static libraries and C++ test executables (license files stay)."""
    folders = [d for d in site.rglob("include") if d.is_dir() and ".dist-info" not in str(d)]
    folders += [d for pattern in ("torch/share/cmake", "torch/test") for d in site.glob(pattern) if d.is_dir()]
    folders = [d for d in folders if not any(parent in folders for parent in d.parents)]
    files = [f for pattern in ("*.h", "*.hpp", "*.cuh", "*.a") for f in site.rglob(pattern)
             if f.is_file() and ".dist-info" not in str(f) and not any(parent in folders for parent in f.parents)]
    # torch/bin holds C++ test programs and protoc, and torch_shm_manager, which `import torch` requires.
    programs = [f for f in site.glob("torch/bin/*") if f.is_file() and f.name != "torch_shm_manager"]
    return folders + files + programs


def unreferenced_libraries(site: Path) -> list[Path]:
    """The candidate files present, after checking that no other file names them."""
    candidates = [f for name in UNREFERENCED_CANDIDATES for f in site.rglob(f"{name}.so*") if f.is_file()]
    scanned = [f for f in site.rglob("*") if f.is_file() and (".so" in f.name or f.suffix == ".py")
               and f not in candidates and not any(str(f).endswith(c) for c in CATALOGUES)]
    references = []
    for path in scanned:
        data = path.read_bytes()
        for candidate in candidates:
            stem = candidate.name.split(".so")[0].encode()
            if stem in data:
                references.append(f"{path.relative_to(site)} names {stem.decode()}")
    if references:
        raise SystemExit("prune_venv: refusing to remove libraries that are named elsewhere:\n  "
                         + "\n  ".join(references))
    return candidates


def openvino_extras(site: Path) -> list[Path]:
    """What of OPENVINO_UNUSED is present (nothing where OpenVINO is not installed)."""
    return sorted(path for pattern in OPENVINO_UNUSED for path in site.glob(pattern))


def strip_symbols(site: Path) -> int:
    """Strips the symbol tables of torch's own large libraries; returns the bytes saved."""
    saved = 0
    for path in (site / "torch" / "lib" / name for name in STRIPPED):
        if path.is_file():
            before = path.stat().st_size
            subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
            saved += before - path.stat().st_size
    return saved


def size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("venv", type=Path)
    parser.add_argument("--no-strip", action="store_true")
    args = parser.parse_args()
    site = site_packages(args.venv)

    for label, paths in (("headers, CMake files, static libraries, test executables", remove_build_files(site)),
                         ("unreferenced CUDA libraries", unreferenced_libraries(site)),
                         ("OpenVINO's GPU and NPU plugins, frontends and tools", openvino_extras(site))):
        total = 0
        for path in paths:
            total += size(path)
            print(f"prune_venv: remove {path.relative_to(site)} ({size(path) / 1e6:.1f} MB)")
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"prune_venv: {label}: {total / 1e6:.0f} MB")
    if not args.no_strip:
        print(f"prune_venv: symbol tables stripped: {strip_symbols(site) / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
