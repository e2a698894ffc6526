"""Build of cosmos-kernels.

`cosmos_kernels._C` is built from csrc/ through CMake (pybind11, ninja). The host (C++) part
always builds when a C++ compiler and CMake are present; the CUDA part builds when `nvcc` is
found, for sm_90a. A machine with no compiler gets the pure-Python package: Triton and the
PyTorch references still work, and the `cuda` backend reports itself unavailable.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = shutil.which("cmake")
        if cmake is None:
            self._skip("cmake was not found", ext)
            return
        try:
            import pybind11
        except ImportError:
            self._skip("pybind11 is not installed", ext)
            return
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if shutil.which("ninja"):
            args.append("-GNinja")
        if os.environ.get("COSMOS_KERNELS_NO_CUDA") == "1":
            args.append("-DCOSMOS_KERNELS_CUDA=OFF")
        try:
            subprocess.run([cmake, str(ROOT), *args], cwd=build_dir, check=True)
            subprocess.run([cmake, "--build", ".", "-j", str(os.cpu_count() or 2)], cwd=build_dir, check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            if os.environ.get("COSMOS_KERNELS_REQUIRE_EXT") == "1":
                raise
            self._skip(f"the build of csrc/ failed ({exc})", ext)

    skipped: set = set()  # the extensions whose build was skipped (no cmake or pybind11, or it failed)

    def copy_extensions_to_source(self):
        # a skipped extension has nothing to copy into the tree (an editable install copies each built
        # extension, and a missing one stopped the pure-Python install the skip promises)
        self.extensions = [e for e in self.extensions if e.name not in self.skipped]
        super().copy_extensions_to_source()

    def _skip(self, why, ext=None):
        if ext is not None:
            self.skipped.add(ext.name)
        self._say_skip(why)

    @staticmethod
    def _say_skip(why):
        print(
            f"\n*** cosmos-kernels: {why}; installing the pure-Python package without "
            "cosmos_kernels._C (backend 'cuda' will be unavailable; 'triton' and 'torch' work). "
            "Set COSMOS_KERNELS_REQUIRE_EXT=1 to make this an error. ***\n",
            file=sys.stderr,
        )


VIDEO = ["av>=12,<20", "opencv-python-headless>=4.8,<6"]  # video files; edge/blur controls
VAE = ["diffusers>=0.42,<1"]                                # the WAN2.1 VAE (AutoencoderKLWan)
TEXT = ["transformers>=4.51,<6"]                            # the Reason1 / Qwen2.5-VL text encoder
LORA = ["peft>=0.15,<1"]
LOGGING = ["tensorboard>=2.15,<3"]
CLI = ["tqdm>=4.60,<5"]                                     # progress bars
BENCH = ["matplotlib>=3.8,<4"]                              # the chart of `cosmos bench kernels --chart`
ALL = VIDEO + VAE + TEXT + LORA + LOGGING + CLI + BENCH


setup(
    name="cosmos-kernels",
    version="0.1.0",
    description="Kernel-first training, distillation and sampling for Cosmos-Predict2.5 video world models",
    packages=find_packages(include=["cosmos_kernels*", "cosmos_models*", "bench*"]),
    python_requires=">=3.10",
    # Ranges, not pins: from the oldest pair we test (torch 2.11 + Triton 3.6, e.g. a GPU image) to the
    # newest on the registry (torch 2.15 + Triton 3.9); newer APIs are used behind feature checks.
    # Everything else is optional and imported where a feature needs it (cosmos_models/_deps.py), so
    # `import cosmos_kernels`, `cosmos selfcheck` and the benchmarks run with only these.
    install_requires=[
        "torch>=2.11,<2.16",
        "triton>=3.6,<3.10",
        "numpy>=1.26,<3",
        "safetensors>=0.4,<1",
    ],
    extras_require={
        "video": VIDEO,
        "vae": VAE,
        "text": TEXT,
        "lora": LORA,
        "logging": LOGGING,
        "cli": CLI,
        "bench": BENCH,
        # the full pipeline on the CPU: the README's main command
        "all": ALL,
        "test": ALL + ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "pytest-xdist>=3.5,<4", "hypothesis>=6.100,<7"],
    },
    ext_modules=[CMakeExtension("cosmos_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["cosmos=cosmos_models.cli:main"]},
)
