"""The Grafana dashboard and the sample Prometheus configuration in deploy/: the dashboard parses,
asks its data source through the `${DS_PROMETHEUS}` input, and queries only metrics that
greenroom exposes (names as they appear on `/metrics`: counters with `_total`, histograms with
`_bucket`, `_sum` and `_count`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from servers import ADMIN_HEADERS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "greenroom.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bgreenroom_[a-z0-9_]+")  # digits too: ..._overlap_at_10
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# the sample names of a metric family on /metrics, by its type
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@pytest.fixture(scope="module")
def exposed(client: TestClient) -> set[str]:
    """Every sample name a greenroom process can put on `/metrics`: from the families of the
    app's registry (`greenroom.metrics.Metrics`, its scrape-time collector included), so a
    labelled metric that has seen nothing yet counts too."""
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that query something (rows hold none; nested row panels included)."""
    found = []
    for panel in dashboard["panels"]:
        found.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            exprs.append(query)
    return exprs


def test_the_registry_read_here_is_the_one_served_on_metrics(
    client: TestClient, exposed: set[str]
) -> None:
    text = client.get("/metrics", headers=ADMIN_HEADERS).text
    typed = set(re.findall(r"^# TYPE (greenroom_[a-z0-9_]+) ", text, flags=re.MULTILINE))
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    families = {family.name for family in registry.collect()}
    # a counter without labels shows its creation time as a gauge family of its own
    created = {n for n in typed if n.endswith("_created") and n[: -len("_created")] in families}
    shown = {name.removesuffix("_total") for name in typed - created}
    assert families and shown == families, text[:500]
    assert "greenroom_embedding_requests_total" in exposed
    assert "greenroom_embedding_request_duration_seconds_bucket" in exposed
    assert "greenroom_queue_depth" in exposed  # from the collector run at scrape time


def test_every_metric_the_dashboard_queries_is_exposed(
    dashboard: dict[str, Any], exposed: set[str]
) -> None:
    exprs = queries(dashboard)
    assert len(exprs) >= 20
    queried = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    unknown = sorted(queried - exposed)
    assert not unknown, f"queried but not exposed by greenroom.metrics: {unknown}"
    for expr in exprs:
        assert METRIC_NAME.search(expr), expr  # each one reads a greenroom metric


def test_the_dashboard_covers_every_greenroom_metric_family(
    dashboard: dict[str, Any], client: TestClient
) -> None:
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    families = {family.name for family in registry.collect()}
    text = " ".join(queries(dashboard))
    missing = sorted(name for name in families if not re.search(rf"\b{name}(_|\b)", text))
    assert not missing, f"no panel shows: {missing}"


def test_quantiles_are_taken_over_histogram_buckets_by_le(dashboard: dict[str, Any]) -> None:
    for expr in queries(dashboard):
        if "histogram_quantile" not in expr:
            continue
        assert "_bucket" in expr, expr
        for clause in re.findall(r"by \(([^)]*)\)", expr):
            assert "le" in [label.strip() for label in clause.split(",")], expr


def test_the_dashboard_asks_its_data_source_through_the_import_input(
    dashboard: dict[str, Any],
) -> None:
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36


def test_the_sample_scrape_config_reads_metrics_with_a_token_file() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "greenroom"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"]
    assert "credentials" not in job["authorization"]  # never a token in the file itself
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
