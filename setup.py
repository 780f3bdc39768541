"""Builds `occ._C` from csrc/: the C++ (OpenMP) kernels always, the CUDA kernels whenever a CUDA
toolkit is found (CUDA_HOME pointing at the folder whose lib64 holds libcudart.so)."""
import glob
import os

from setuptools import find_packages, setup
from torch.utils import cpp_extension


def cuda_home():
    home = os.environ.get("CUDA_HOME", "")
    return home if home and os.path.exists(os.path.join(home, "lib64", "libcudart.so")) else None


def extension():
    sources = sorted(glob.glob("csrc/*.cpp"))
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-std=c++20"]  # -g0: no debug info, 3x faster builds
    if cuda_home():
        cpp_extension.CUDA_HOME = cuda_home()
        sources += sorted(glob.glob("csrc/*.cu"))
        return cpp_extension.CUDAExtension(
            "occ._C", sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"])
    return cpp_extension.CppExtension("occ._C", sources, extra_compile_args=cxx_flags,
                                      extra_link_args=["-fopenmp"])


setup(
    name="occ",
    version="0.1.0",
    description="Plain-PyTorch LiDAR-camera 3-D occupancy prediction (EFFOcc, FlashOcc, Occ-BEV)",
    # Only the library: the scripts and their data readers (datasets/, whose name would shadow the
    # Hugging Face `datasets` package in a user's environment) run from the repository root.
    packages=find_packages(include=["occ", "occ.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
