"""The Ray replica side: the spec as the backend hands it to its Serve replicas (and keeps it
for adoption). The replica itself runs in the Ray conformance suite (`test_runtime_ray.py`)."""

from __future__ import annotations

from pathlib import Path

import orjson

from greenroom.runtime.base import RevisionSpec
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
        secret=SECRET,
    )
    raw = spec_to_json(spec)
    assert SECRET not in raw.decode() and "secret" not in orjson.loads(raw)
    again = spec_from_json(raw)
    assert again == spec  # the secret takes no part in comparing specs
    assert again.secret == "" and again.model_path == Path("/models/m")
