"""The migration commands of `greenroom` (deploy --stage, promote, migration …) against a fake
HTTP server that answers canned JSON and records what it was sent: the paths, the bodies, the
chunking of sample uploads, and the live view's frame from a canned migration state."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

import greenroom.cli
from greenroom.cli import app as cli
from greenroom.client import (
    MAX_SAMPLE_CHARS,
    MAX_SAMPLES_BODY_BYTES,
    MAX_SAMPLES_KEPT,
    MAX_SAMPLES_PER_CALL,
    migration_path,
    sample_chunks,
    samples_body,
)

TOKEN = "cli-migration-test-token"
TASKS = "/internal/inference-deployment"
Answer = tuple[int, Any]

STATE: dict[str, Any] = {
    "served_name": "docs",
    "stage": "staged",
    "live": {"revision_id": "1a2b3c4d-live", "embedding_space": "docs@1a2b3c4d5e6f/384/l2"},
    "staged": {
        "revision_id": "9f8e7d6c-staged",
        "embedding_space": "docs@9f8e7d6c5b4a/768/l2",
        "phase": "Running",
    },
    "shadow": {
        "fraction": 0.05,
        "requests": 1830,
        "inputs": 2210,
        "dropped": 41,
        "errors": 3,
        "latency_ms": {"live_p50": 9.1, "live_p99": 31.0, "staged_p50": 44.2, "staged_p99": 120.5},
        "mean_cosine": None,
        "neighbour_overlap_at_10": 0.41,
        "window": 2000,
        "processes": 2,
    },
    "adapter": {
        "kind": "procrustes",
        "pairs": 2400,
        "held_out": 480,
        "mean_cosine": 0.93,
        "neighbour_overlap_at_10": 0.52,
        "fitted_at": "2026-12-02T10:11:12Z",
    },
    "samples": 2400,
    "thresholds": {"adapter_mean_cosine": 0.8, "adapter_neighbour_overlap_at_10": 0.6},
}


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    raw_size: int
    authorization: str | None


@dataclass
class FakeGreenroom:
    """Routes (method, path) → (status, JSON) or a function of the request body."""

    url: str = ""
    routes: dict[tuple[str, str], Answer | Callable[[Any], Answer]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def answer(self, method: str, path: str, body: Any) -> Answer:
        route = self.routes.get((method, path))
        if route is None:
            return 404, {"detail": f"no route {method} {path} in the fake"}
        return route(body) if callable(route) else route

    def sent(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]


@pytest.fixture
def fake() -> Iterator[FakeGreenroom]:
    state = FakeGreenroom()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            state.requests.append(
                Recorded(self.command, self.path, body, len(raw), self.headers["Authorization"])
            )
            status, payload = state.answer(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def run(fake: FakeGreenroom, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli,
        [*args, "--server", fake.url],
        env={"GREENROOM_TOKEN": TOKEN, "COLUMNS": "200"},
        input=stdin,
    )
    return result.exit_code, result.stdout, result.stderr


def task(task_id: str, status: str = "pending", **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id, "task_id": task_id, "embedding_model_id": "docs", "status": status,
        "created_at": "2026-12-02T10:00:00Z", "updated_at": "2026-12-02T10:00:00Z", **extra,
    }  # fmt: skip


# ----- tasks: deploy --stage, promote, finish, abort --------------------------------------------


def test_deploy_stage_sends_the_staged_strategy(fake: FakeGreenroom) -> None:
    fake.routes[("POST", f"{TASKS}/deploy")] = (200, task("deploy-1"))
    code, out, err = run(fake, "deploy", "docs", "--stage", "--set", "replicas=2")
    assert code == 0, err
    assert out.split() == ["deploy-1"] and "--wait" in err
    (sent,) = fake.sent()
    assert sent.body == {
        "embedding_model_id": "docs",
        "config": {"replicas": 2},
        "strategy": "staged",
    }
    assert sent.authorization == f"Bearer {TOKEN}"
    run(fake, "deploy", "docs")
    assert "strategy" not in fake.sent()[-1].body  # a plain deploy stays green


@pytest.mark.parametrize(
    ("flags", "body"),
    [
        ([], {"mode": "raw"}),
        (["--adapted"], {"mode": "adapted"}),
        (["--allow-embedding-space-change"], {"mode": "raw", "allow_embedding_space_change": True}),
    ],
)
def test_promote_sends_the_mode(fake: FakeGreenroom, flags: list[str], body: dict) -> None:
    fake.routes[("POST", f"{TASKS}/promote")] = (200, task("promote-1"))
    code, out, err = run(fake, "promote", "team/docs", *flags)
    assert code == 0, err
    assert out.strip() == "promote-1"
    assert fake.sent()[0].body == {"embedding_model_id": "team/docs", **body}


def test_an_adapted_promotion_refuses_a_space_change_before_sending(fake: FakeGreenroom) -> None:
    code, _, err = run(fake, "promote", "docs", "--adapted", "--allow-embedding-space-change")
    assert code == 2 and "raw one" in err
    assert fake.sent() == []


def test_promote_wait_follows_the_steps_and_reports_the_end(fake: FakeGreenroom) -> None:
    steps = [
        {"name": name, "status": "done", "duration_ms": 1200, "message": None}
        for name in ("gate", "start_live", "switch", "drain_blue", "finish")
    ]
    fake.routes[("POST", f"{TASKS}/promote")] = (200, task("promote-7"))
    fake.routes[("GET", f"{TASKS}/promote/promote-7")] = (
        200,
        task("promote-7", "done", metadata={"steps": steps, "result": "promoted"}),
    )
    code, out, err = run(fake, "promote", "docs", "--adapted", "--wait")
    assert code == 0, err
    assert out.strip() == "promote-7"
    assert "start_live" in err and "drain_blue" in err and "promote-7 done" in err
    assert [r.path for r in fake.sent("GET")] == [f"{TASKS}/promote/promote-7"]


def test_wait_rereads_a_task_the_server_has_not_committed_yet(fake: FakeGreenroom) -> None:
    """The submission's answer can arrive before its commit: a first 404 is read again."""
    reads = iter([(404, {"detail": "Promote task with ID `promote-8` is not found"})] * 5)
    done = (200, task("promote-8", "done", metadata={"steps": [], "result": "promoted"}))
    fake.routes[("POST", f"{TASKS}/promote")] = (200, task("promote-8"))
    fake.routes[("GET", f"{TASKS}/promote/promote-8")] = lambda _: next(reads, done)
    code, _, err = run(fake, "promote", "docs", "--wait")
    assert code == 0, err
    assert "promote-8 done" in err


def test_a_refused_or_failed_migration_task_exits_1_with_its_sentence(fake: FakeGreenroom) -> None:
    fake.routes[("POST", f"{TASKS}/finish")] = (
        409,
        {"detail": "`docs` is staged, not adapted: promote it with --adapted first"},
    )
    code, _, err = run(fake, "migration", "finish", "docs")
    assert code == 1 and "409" in err and "promote it with --adapted first" in err
    fake.routes[("POST", f"{TASKS}/abort")] = (
        200,
        task("abort-2", "failed", detail="the old revision's snapshot is gone"),
    )
    code, out, err = run(fake, "migration", "abort", "docs", "--no-wait")
    assert code == 1 and out.strip() == "abort-2" and "snapshot is gone" in err


def test_finish_and_abort_post_the_served_name(fake: FakeGreenroom) -> None:
    for kind in ("finish", "abort"):
        fake.routes[("POST", f"{TASKS}/{kind}")] = (200, task(f"{kind}-1"))
        code, out, err = run(fake, "migration", kind, "team/docs")
        assert code == 0, err
        assert out.strip() == f"{kind}-1"
        assert fake.sent()[-1].body == {"embedding_model_id": "team/docs"}
        assert fake.sent()[-1].path == f"{TASKS}/{kind}"


def test_cancel_finds_a_migration_task_whose_id_the_client_chose(fake: FakeGreenroom) -> None:
    fake.routes[("GET", f"{TASKS}/promote/nightly%20run")] = (200, task("nightly run"))
    fake.routes[("POST", f"{TASKS}/promote/nightly%20run/cancel")] = (
        200,
        task("nightly run", "canceled"),
    )
    code, out, err = run(fake, "cancel", "nightly run")
    assert code == 0, err
    assert "canceled" in out
    gets = [r.path for r in fake.sent("GET")]
    assert gets == [f"{TASKS}/{kind}/nightly%20run" for kind in ("deploy", "delete", "promote")]


# ----- the migration state: the live view and the shadow fraction --------------------------------


def test_the_live_view_prints_one_frame_of_the_state(fake: FakeGreenroom) -> None:
    fake.routes[("GET", "/v1/migrations/default/docs")] = (200, STATE)
    code, out, err = run(fake, "migration", "docs", "--once")
    assert code == 0, err
    for expected in (
        "migration of docs · stage staged",
        "1a2b3c4d-live", "docs@1a2b3c4d5e6f/384/l2",
        "9f8e7d6c-staged", "docs@9f8e7d6c5b4a/768/l2", "Running",
        "5%", "1,830", "2,210", "41", "live 9.1 · staged 44.2", "live 31.0 · staged 120.5",
        "— (dimensions differ)", "0.410", "2,000",
        "adapter: procrustes", "0.930", "≥ 0.80", "0.520", "≥ 0.60", "2,400", "480",
        "2026-12-02 10:11", "sample texts stored: 2,400", "greenroom promote docs --adapted",
    ):  # fmt: skip
        assert expected in out, expected
    cosine = next(line for line in out.splitlines() if "0.930" in line)
    overlap = next(line for line in out.splitlines() if "0.520" in line)
    assert "✓" in cosine and "✗" in overlap  # each measure against its threshold


def test_the_live_view_of_a_workspace_name_and_of_an_ended_migration(fake: FakeGreenroom) -> None:
    ended = {
        "served_name": "team/samples", "stage": "none", "live": STATE["live"], "staged": None,
        "shadow": None, "adapter": None, "samples": 0, "thresholds": STATE["thresholds"],
    }  # fmt: skip
    fake.routes[("GET", "/v1/migrations/team/samples")] = (200, ended)
    code, out, err = run(fake, "migration", "show", "team/samples", "--once")
    assert code == 0, err
    assert "stage none" in out and "shadow traffic: none" in out and "none fitted" in out
    assert "greenroom deploy team/samples --stage" in out


def test_the_live_view_refreshes_until_ctrl_c_and_survives_a_failed_refresh(
    fake: FakeGreenroom, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([(200, STATE), (200, {**STATE, "samples": 7}), (503, {"detail": "restarting"})])
    fake.routes[("GET", "/v1/migrations/default/docs")] = lambda _: next(answers)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the refresh interval; the third is a Ctrl-C
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(greenroom.cli, "time", SimpleNamespace(sleep=sleep))
    code, out, err = run(fake, "migration", "docs", "--interval", "0.5")
    assert code == 0, err  # Ctrl-C ends the view quietly
    assert sleeps == [0.5, 0.5, 0.5] and len(fake.sent("GET")) == 3
    # off a terminal only the last frame is printed: the newest state, and why it is not newer
    assert "sample texts stored: 7" in out
    assert "refresh failed: 503: restarting" in out


def test_the_live_view_of_an_unknown_name_exits_1(fake: FakeGreenroom) -> None:
    code, _, err = run(fake, "migration", "nope", "--once")
    assert code == 1 and "404" in err
    assert fake.sent()[0].path == "/v1/migrations/default/nope"


@pytest.mark.parametrize(("given", "share"), [("0.2", 0.2), ("5%", 0.05), ("0", 0.0), ("1", 1.0)])
def test_shadow_puts_the_fraction(fake: FakeGreenroom, given: str, share: float) -> None:
    fake.routes[("PUT", "/v1/migrations/team/docs/shadow")] = lambda body: (
        200,
        {"served_name": "team/docs", "fraction": body["fraction"]},
    )
    code, out, err = run(fake, "migration", "shadow", "team/docs", given)
    assert code == 0, err
    assert fake.sent()[0].body == {"fraction": pytest.approx(share)}
    assert "shadow traffic of team/docs" in out


@pytest.mark.parametrize("given", ["1.5", "-0.1", "120%", "lots", "nan"])
def test_shadow_refuses_what_is_not_a_share(fake: FakeGreenroom, given: str) -> None:
    code, _, err = run(fake, "migration", "shadow", "docs", given)
    assert code == 2 and ("not a share" in err or given.startswith("-"))  # -0.1: an option
    assert fake.sent() == []


# ----- the adapter: fit ----------------------------------------------------------------------


def test_fit_prints_the_evaluation_against_the_thresholds(fake: FakeGreenroom) -> None:
    fake.routes[("POST", "/v1/migrations/default/docs/adapter")] = (200, STATE["adapter"])
    fake.routes[("GET", "/v1/migrations/default/docs")] = (200, STATE)
    code, out, err = run(fake, "migration", "fit", "docs")
    assert code == 0, err
    assert "adapter: procrustes" in out and "0.520" in out and "≥ 0.60" in out
    assert "below the thresholds" in err  # the overlap falls short


def test_fit_with_too_few_pairs_says_how_many_are_needed(fake: FakeGreenroom) -> None:
    fake.routes[("POST", "/v1/migrations/default/docs/adapter")] = (
        409,
        {"detail": "An adapter needs 200 pairs; `docs` has 12: add sample texts"},
    )
    code, _, err = run(fake, "migration", "fit", "docs")
    assert code == 1 and "needs 200 pairs" in err


# ----- sample texts: reading the file, chunking the upload --------------------------------------


def accept_samples(fake: FakeGreenroom, path: str = "/v1/migrations/default/docs") -> list[str]:
    """Answer sample uploads as the server does; returns every text it got, in order."""
    stored: list[str] = []

    def store(body: Any) -> Answer:
        stored.extend(body["texts"])
        kept = min(len(stored), MAX_SAMPLES_KEPT)
        return 200, {"served_name": "docs", "samples": kept, "added": len(body["texts"])}

    fake.routes[("POST", f"{path}/samples")] = store
    return stored


def test_samples_are_uploaded_in_chunks_of_at_most_2048(
    fake: FakeGreenroom, tmp_path: Path
) -> None:
    stored = accept_samples(fake)
    texts = [f"sample text number {i}" for i in range(5000)]
    (tmp_path / "texts.txt").write_text(
        "\n".join(texts[:2500]) + "\n\n  \n" + "\n".join(texts[2500:])
    )
    code, out, err = run(fake, "migration", "samples", "docs", str(tmp_path / "texts.txt"))
    assert code == 0, err
    assert [len(r.body["texts"]) for r in fake.sent("POST")] == [2048, 2048, 904]
    assert stored == texts  # in order, blank lines skipped
    assert "5000 sample texts kept for docs" in out
    assert "sent 5000 of 5000" in err


def test_large_texts_are_chunked_under_8_mib_and_cut_to_8192_characters(
    fake: FakeGreenroom, tmp_path: Path
) -> None:
    stored = accept_samples(fake, "/v1/migrations/team/docs")
    long_texts = [f"{i:04d}" + "é" * (MAX_SAMPLE_CHARS + 100) for i in range(600)]
    (tmp_path / "long.txt").write_text("\n".join(long_texts), encoding="utf-8")
    code, _, err = run(fake, "migration", "samples", "team/docs", str(tmp_path / "long.txt"))
    assert code == 0, err
    sizes = [r.raw_size for r in fake.sent("POST")]
    assert len(sizes) == 2 and all(size <= MAX_SAMPLES_BODY_BYTES for size in sizes)
    assert stored == [text[:MAX_SAMPLE_CHARS] for text in long_texts]
    assert "600 texts were cut to 8192 characters" in err


def test_jsonl_samples_are_read_as_strings(fake: FakeGreenroom, tmp_path: Path) -> None:
    stored = accept_samples(fake)
    texts = ["a line\nwith a break", 'a "quoted" one', "ünïcode ✓"]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps(t) for t in texts) + '\n""\n')
    code, out, err = run(fake, "migration", "samples", "docs", str(tmp_path / "texts.jsonl"))
    assert code == 0, err
    assert stored == texts and "3 sample texts kept" in out
    stored.clear()
    # auto: a .txt file whose first line is a JSON string is JSONL too; `-` is standard input
    code, _, err = run(
        fake, "migration", "samples", "docs", "-", stdin=(tmp_path / "texts.jsonl").read_text()
    )
    assert code == 0, err
    assert stored == texts
    stored.clear()
    code, _, err = run(
        fake, "migration", "samples", "docs", str(tmp_path / "texts.jsonl"), "--format", "text"
    )
    assert code == 0, err
    assert stored == [json.dumps(t) for t in texts] + ['""']


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('"one"\n{"text": "two"}\n', "texts.jsonl:2 is not a JSON string"),
        ('"one"\n"nul \\u0000 inside"\n', "texts.jsonl:2 holds a NUL character"),
        ('"lone \\ud800 surrogate"\n', "texts.jsonl:1 is not valid UTF-8 text"),
    ],
)
def test_a_bad_sample_line_sends_nothing(
    fake: FakeGreenroom, tmp_path: Path, content: str, why: str
) -> None:
    accept_samples(fake)
    (tmp_path / "texts.jsonl").write_text(content)
    code, _, err = run(fake, "migration", "samples", "docs", str(tmp_path / "texts.jsonl"))
    assert code == 2 and why in err and "nothing was sent" in err
    assert fake.sent() == []


def test_an_empty_or_unreadable_sample_file_sends_nothing(
    fake: FakeGreenroom, tmp_path: Path
) -> None:
    (tmp_path / "empty.txt").write_text("\n \n")
    code, _, err = run(fake, "migration", "samples", "docs", str(tmp_path / "empty.txt"))
    assert code == 2 and "has no texts" in err
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    code, _, err = run(fake, "migration", "samples", "docs", str(tmp_path / "latin1.txt"))
    assert code == 2 and "cannot read" in err
    code, _, err = run(fake, "migration", "samples", "docs", str(tmp_path / "missing.txt"))
    assert code == 2
    assert fake.sent() == []


def test_only_the_texts_the_server_keeps_are_sent(fake: FakeGreenroom, tmp_path: Path) -> None:
    stored = accept_samples(fake)
    count = MAX_SAMPLES_KEPT + 500
    (tmp_path / "many.txt").write_text("\n".join(f"t{i}" for i in range(count)))
    code, out, err = run(fake, "migration", "samples", "docs", str(tmp_path / "many.txt"))
    assert code == 0, err
    assert stored == [f"t{i}" for i in range(500, count)]
    assert f"only the last {MAX_SAMPLES_KEPT} are sent" in err
    assert f"{MAX_SAMPLES_KEPT} sample texts kept" in out


def test_sample_chunks_bound_texts_and_bytes() -> None:
    wide = "\U0001f600" * MAX_SAMPLE_CHARS  # 4 bytes a character
    chunks = list(sample_chunks([wide] * 300 + ["x"] * 5000))
    assert [t for chunk in chunks for t in chunk] == [wide] * 300 + ["x"] * 5000
    for chunk in chunks:
        assert len(chunk) <= MAX_SAMPLES_PER_CALL
        assert len(samples_body(chunk)) <= MAX_SAMPLES_BODY_BYTES
        assert json.loads(samples_body(chunk)) == {"texts": chunk}
    assert len(chunks[0]) == 255  # as many 32 KiB texts as fit in 8 MiB
    assert list(sample_chunks([])) == []


def test_migration_paths_name_the_workspace() -> None:
    assert migration_path("docs") == "/v1/migrations/default/docs"
    assert migration_path("team/docs") == "/v1/migrations/team/docs"
    assert migration_path("team/a b") == "/v1/migrations/team/a%20b"


def test_every_migration_command_and_flag_has_help() -> None:
    commands = [
        ["deploy"], ["promote"], ["migration"], ["migration", "show"], ["migration", "samples"],
        ["migration", "fit"], ["migration", "finish"], ["migration", "abort"],
        ["migration", "shadow"],
    ]  # fmt: skip
    for command in commands:
        result = CliRunner().invoke(cli, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output
    promote = CliRunner().invoke(cli, ["promote", "--help"], env={"COLUMNS": "200"}).output
    assert "--adapted" in promote and "--no-wait" in promote and "Raw only" in promote
    deploy = CliRunner().invoke(cli, ["deploy", "--help"], env={"COLUMNS": "200"}).output
    assert "--stage" in deploy and "without live traffic" in deploy
