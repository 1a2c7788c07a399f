"""ddm_fast: fused kernels for denoising diffusion models on geophysical grids.

``pip install .`` installs the Python package and the Triton kernels. The C++
and CUDA backends of ``csrc/`` build into ``ddm_fast._C`` once they exist
(see ``csrc/README.md``); until then the package is pure Python.
"""
from setuptools import find_packages, setup

setup(
    name="ddm_fast",
    version="0.1.0",
    description="Fused kernels for denoising diffusion models on geophysical grids",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ (the Triton kernels) installs as the subpackage ddm_fast.kernels
    packages=find_packages(include=["ddm_fast", "ddm_fast.*"])
    + ["ddm_fast.kernels"],
    package_dir={"ddm_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.6",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "triton": ["triton>=3.5"],
        "test": ["pytest", "pytest-benchmark", "scipy", "triton>=3.5"],
    },
)
