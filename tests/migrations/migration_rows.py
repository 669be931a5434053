"""Rows the migrations tests build: revisions of a served name whose weights are a model
directory on disk (only what `inspect_model` reads, no weights)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from factories import add_live_revision
from sqlalchemy.orm import Session

from greenroom.workloads.models import Revision

OTHER_CONTENT_HASH = "9f" * 32


def fake_model_dir(path: Path, *, dimension: int, normalize: bool) -> Path:
    """A sentence-transformers directory as far as `inspect_model` reads it (no weights)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"hidden_size": dimension, "vocab_size": 100}))
    kinds = ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    folders = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize"}
    modules = [
        {
            "idx": i,
            "name": str(i),
            "path": folders[kind],
            "type": f"sentence_transformers.models.{kind}",
        }
        for i, kind in enumerate(kinds)
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dimension, "pooling_mode_mean_tokens": True})
    )
    (path / "tokenizer.json").write_text("{}")
    return path


def add_revisions(db_session: Session, root: Path, served_name: str = "docs") -> tuple[str, str]:
    """(live, staged) revision ids of `served_name`: a live 8-d normalised revision and a
    Running 12-d one beside it (not yet recorded staged)."""
    live = add_live_revision(db_session, embedding_model_id=served_name, served_name=served_name)
    live.model_path = str(fake_model_dir(root / f"{served_name}-live", dimension=8, normalize=True))
    staged = Revision(
        id=str(uuid.uuid4()),
        deployment_id=live.deployment_id,
        served_name=served_name,
        embedding_model_id=served_name,
        source="/models/new",
        model_path=str(fake_model_dir(root / f"{served_name}-new", dimension=12, normalize=False)),
        content_hash=OTHER_CONTENT_HASH,
        engine="onnx",
        phase="Running",
    )
    db_session.add(staged)
    db_session.flush()
    return live.id, staged.id
