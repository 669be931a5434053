"""What a replica's environment may hold: an explicit minimum plus allow-listed variables.

Replicas never inherit the server's environment (it holds `GREENROOM_*` secrets, and variables
such as `PYTHONWARNINGS`, `LD_PRELOAD` or `BROWSER` turn into code execution). A deployment
config's `additional_envs` may only name the thread, BLAS, ONNX Runtime and CUDA device
variables of `greenroom.schemas.ALLOWED_ENV_NAMES`, or names the operator adds with
`GREENROOM_EXTRA_ENV_NAMES`.

`replica_environment` builds the whole environment of a replica for every backend; the
processes a private Ray starts get none of the server's secrets (`without_server_secrets`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping

from greenroom.config import ALLOWED_ENV_NAMES
from greenroom.schemas import env_problem

log = logging.getLogger("greenroom.runtime.environment")


def allowed_env_names(extra: Iterable[str] = ()) -> frozenset[str]:
    return ALLOWED_ENV_NAMES | frozenset(extra)


# ----- the environment a replica starts with ------------------------------------------------
# Models load from the model directory only: no hub, no downloads.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
THREAD_ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DEFAULT_LANG = "C.UTF-8"
# Names of the server's own environment that no process greenroom starts may inherit.
SERVER_SECRET_PREFIXES = ("GREENROOM_",)


def base_environment() -> dict[str, str]:
    """What any child process needs from the server's environment: where programs are, the
    home directory and the locale. Nothing else of it (never a `GREENROOM_*` secret)."""
    env = {"PATH": os.environ.get("PATH") or os.defpath, "LANG": os.environ.get("LANG", "")}
    env["LANG"] = env["LANG"] or DEFAULT_LANG
    for name in ("HOME", "LC_ALL"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def allowed_environment(
    requested: Mapping[str, str], allowed: frozenset[str], *, revision_id: str = ""
) -> dict[str, str]:
    """The variables of a config's `additional_envs` that `env_problem` accepts; the others are
    dropped (and logged by name). The config write refuses them already: defence in depth."""
    kept: dict[str, str] = {}
    for name, value in requested.items():
        if env_problem(str(name), str(value), allowed) is None and not is_server_secret(name):
            kept[name] = value
        else:
            log.warning(
                "revision %s: the environment variable %r is not allowed; not set",
                revision_id,
                str(name)[:128],
            )
    return kept


def replica_environment(
    requested: Mapping[str, str],
    allowed: frozenset[str],
    *,
    threads: int,
    revision_id: str = "",
    inherit_base: bool = True,
) -> dict[str, str]:
    """The whole environment of a replica: the base (PATH, HOME, locale), the engine's thread
    variables, TOKENIZERS_PARALLELISM=false, the allowed variables of the config and the offline
    switches, which a config cannot turn off. Every backend builds it here: local replica
    processes get exactly this (`inherit_base`), Ray Serve replicas get the rest of it as
    `runtime_env.env_vars` on top of the raylet's (secret-free) environment."""
    env = base_environment() if inherit_base else {}
    env.update({name: str(max(threads, 1)) for name in THREAD_ENV_NAMES})
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(allowed_environment(requested, allowed, revision_id=revision_id))
    env.update(OFFLINE_ENV)
    return env


def child_environment() -> dict[str, str]:
    """For helper processes a replica or the server starts (the ONNX export): base and offline."""
    return {**base_environment(), **OFFLINE_ENV}


def is_server_secret(name: str) -> bool:
    return name.startswith(SERVER_SECRET_PREFIXES)


@contextlib.contextmanager
def without_server_secrets() -> Iterator[None]:
    """Remove the server's secrets from `os.environ` for the block, for a library that spawns
    long-lived processes from it (`ray.init`); restored afterwards. Brief on purpose: other
    threads of the process see the reduced environment meanwhile."""
    removed = {name: os.environ.pop(name) for name in list(os.environ) if is_server_secret(name)}
    try:
        yield
    finally:
        os.environ.update(removed)
