"""The Ray replica side: the spec as the backend hands it to its Serve replicas (and keeps it
for adoption), and the CPUs a replica asks of Ray. The replica itself runs in the Ray
conformance suite (`test_runtime_ray.py`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson

from greenroom.config import Settings
from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.ray import RayRuntime
from greenroom.runtime.ray_replica import spec_from_json, spec_to_json

SECRET = "5e" * 32


def test_a_spec_survives_its_json_less_its_secret() -> None:
    spec = RevisionSpec(
        "rev-1",
        Path("/models/m"),
        "ab" * 32,
        quantization="int8",
        replicas=2,
        threads=3,
        environment={"OMP_PROC_BIND": "true"},
        runtime="ray",
        max_batch_size=8,
        priority="low",
        secret=SECRET,
    )
    raw = spec_to_json(spec)
    assert SECRET not in raw.decode() and "secret" not in orjson.loads(raw)
    again = spec_from_json(raw)
    assert again == spec  # the secret takes no part in comparing specs
    assert again.secret == "" and again.model_path == Path("/models/m")


def test_a_spec_kept_before_priorities_existed_reads_as_normal() -> None:
    """An application adopted from an older greenroom keeps running: no redeploy for it."""
    values = orjson.loads(spec_to_json(RevisionSpec("rev-1", Path("/models/m"), "ab" * 32)))
    del values["priority"]
    assert spec_from_json(orjson.dumps(values)).priority == "normal"


def test_a_low_priority_replica_asks_ray_for_half_the_cpus(tmp_path: Path) -> None:
    spec = RevisionSpec("rev-1", Path("/models/m"), "ab" * 32, threads=1)
    runtime = RayRuntime(Settings(data_dir=tmp_path, runtime="ray"))
    normal = runtime.replica_num_cpus(spec)
    assert normal > 0
    assert runtime.replica_num_cpus(replace(spec, priority="low")) == round(normal / 2, 3)
    runtime.settings = Settings(data_dir=tmp_path, runtime="ray", ray_replica_num_cpus=1.0)
    assert runtime.replica_num_cpus(spec) == 1.0
    assert runtime.replica_num_cpus(replace(spec, priority="low")) == 0.5
