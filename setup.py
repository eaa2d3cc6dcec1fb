"""Build hook for the optional compiled kernel (everything else is in pyproject.toml).

``tflite_cluster._dp`` is plain C against the Python API (no numpy headers). It is optional: when
no compiler is available the build goes on without it and the package uses its numpy kernels.
"""

import hashlib
import sys
from pathlib import Path

from setuptools import Extension, setup

posix = sys.platform != "win32"
# the source's hash, compiled in (``_dp.SOURCE_SHA256``): a test tells a stale build (an edit whose
# rebuild failed, which an optional extension does silently) from a current one
source = Path(__file__).resolve().parent / "tflite_cluster" / "_dp.c"
sha = hashlib.sha256(source.read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "tflite_cluster._dp",
            sources=["tflite_cluster/_dp.c"],
            define_macros=[("DP_SOURCE_SHA256", f'"{sha}"')],
            extra_compile_args=["-O3", "-ffp-contract=off"] + (["-pthread"] if posix else []),
            extra_link_args=["-pthread"] if posix else [],
            optional=True,
        )
    ]
)
