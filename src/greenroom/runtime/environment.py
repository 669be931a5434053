"""What a replica's environment may hold: an explicit minimum plus allow-listed variables.

Replicas never inherit the server's environment (it holds `GREENROOM_*` secrets, and variables
such as `PYTHONWARNINGS`, `LD_PRELOAD` or `BROWSER` turn into code execution). A deployment
config's `additional_envs` may only name the thread, BLAS, ONNX Runtime and CUDA device
variables below, or names the operator adds with `GREENROOM_EXTRA_ENV_NAMES`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Thread pools, BLAS back-ends and GPU device selection: numbers and device lists, never code.
ALLOWED_ENV_NAMES = frozenset(
    {
        "OMP_NUM_THREADS",
        "OMP_WAIT_POLICY",
        "OMP_PROC_BIND",
        "OMP_PLACES",
        "OMP_DYNAMIC",
        "OMP_MAX_ACTIVE_LEVELS",
        "MKL_NUM_THREADS",
        "MKL_DYNAMIC",
        "OPENBLAS_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "KMP_AFFINITY",
        "KMP_BLOCKTIME",
        "ORT_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "NVIDIA_VISIBLE_DEVICES",
        "TOKENIZERS_PARALLELISM",
    }
)
ENV_NAME_PATTERN = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
MAX_ENV_VARS = 32
MAX_ENV_VALUE_CHARS = 1024


def parse_env_names(value: str) -> frozenset[str]:
    """`GREENROOM_EXTRA_ENV_NAMES`: names separated by commas or spaces."""
    return frozenset(name for name in re.split(r"[,\s]+", value.strip()) if name)


def allowed_env_names(extra: Iterable[str] = ()) -> frozenset[str]:
    return ALLOWED_ENV_NAMES | frozenset(extra)


def env_problem(name: str, value: str, allowed: frozenset[str]) -> str | None:
    """Why `name=value` may not be set in a replica's environment (one sentence), or None."""
    if not ENV_NAME_PATTERN.fullmatch(name) or name not in allowed:
        return (
            f"The environment variable '{name[:128]}' is not allowed in additional_envs; "
            f"allowed: {', '.join(sorted(allowed))} (an operator may add names with "
            "GREENROOM_EXTRA_ENV_NAMES)."
        )
    if len(value) > MAX_ENV_VALUE_CHARS or "\0" in value:
        return (
            f"The value of '{name}' must be at most {MAX_ENV_VALUE_CHARS} characters "
            "without NUL bytes."
        )
    return None
