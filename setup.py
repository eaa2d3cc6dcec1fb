"""Build hook for the optional compiled kernel (everything else is in pyproject.toml).

``tflite_cluster._dp`` is plain C against the Python API (no numpy headers). It is optional: when
no compiler is available the build goes on without it and the package uses its numpy kernels.
"""

import sys

from setuptools import Extension, setup

posix = sys.platform != "win32"

setup(
    ext_modules=[
        Extension(
            "tflite_cluster._dp",
            sources=["tflite_cluster/_dp.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"] + (["-pthread"] if posix else []),
            extra_link_args=["-pthread"] if posix else [],
            optional=True,
        )
    ]
)
