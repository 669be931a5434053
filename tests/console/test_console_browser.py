"""The web console in a real Chromium against a real `greenroom serve` with the tiny models
(issue 12, "Tests in a real browser"; helpers in `browser.py`).

One server and one browser for the module. The tests run in file order and build on each other's
state where that saves a rollout (each makes sure of what it needs through the API otherwise):
`docs` is the default deployment (tiny-1); it is deployed again with an override, rolled back,
then migrated to tiny-3 from the console. `notes` (tiny-1, a `<script>` in its description) shows
that a description is text, then fails a deploy (tiny-2 weights: not comparable) and is deleted.

Every page is screenshotted at 1280×800 (and the overview and a deployment page at 390×844 and in
dark mode) under the run's temporary directory, printed at the end (`pytest -s`); axe-core checks
every page: a serious or critical violation fails the test that looked at it (after the rest of
its scenario ran). No process is left behind: the server stops its replicas, Chromium is closed.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    FINAL,
    PHONE,
    TASK_DEADLINE_MS,
    Looks,
    Server,
    require_browser,
    serve,
)
from helpers import wait_until_sync
from servers import ADMIN_TOKEN

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

TASKS = "/internal/inference-deployment"
DEPLOYMENTS = "/apis/models/v2/workspaces/default/deployments"
CONFIGS = "/apis/models/v2/workspaces/default/deployment-configs"
MIGRATION = "/v1/migrations/default/docs"
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
DEPLOY_STEPS = [
    "snapshot",
    "start_green",
    "smoke_test",
    "compatibility_gate",
    "switch",
    "drain_blue",
    "finish",
]
WORDS_TEXT = """the quick brown fox jumps over the lazy dog search query document server vector
embedding words model happy sad weather rain sunny cold warm morning evening"""
WORDS = WORDS_TEXT.split()

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


# ----- fixtures: one server, one browser, one screenshot directory --------------------------


@pytest.fixture(scope="module", autouse=True)
def _browser_present() -> None:
    """Before anything is built or started: skip (fail under CI=true) without the browser."""
    require_browser()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("console-serve") / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    env = {
        "GREENROOM_ADMIN_TOKEN": ADMIN_TOKEN,
        "GREENROOM_DEFAULT_MODEL_ID": "docs",
        "GREENROOM_DEFAULT_MODEL_SOURCE": str(tiny_model_dir),
        "GREENROOM_DRAIN_GRACE_S": "1",
        # tiny random models map poorly onto each other: the thresholds are tested elsewhere
        "GREENROOM_ADAPTER_MIN_MEAN_COSINE": "0",
        "GREENROOM_ADAPTER_MIN_NEIGHBOUR_OVERLAP": "0",
        "GREENROOM_SHADOW_SUMMARY_INTERVAL_S": "0.5",
    }
    with serve(data_dir, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Browser]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("console-screenshots")
    yield directory
    taken = sorted(path.name for path in directory.glob("*.png"))
    print(f"\nconsole screenshots ({len(taken)}): {directory}\n  " + "\n  ".join(taken))


@pytest.fixture
def looks(shots_dir: Path) -> Looks:
    return Looks(shots_dir)


Open = Callable[..., "Page"]


@pytest.fixture
def open_console(browser: Browser, server: Server) -> Iterator[Open]:
    """Open the console in a fresh context (a tab of its own) signed in with `token`; uncaught
    JavaScript errors of any page fail the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_(
        token: str | None = ADMIN_TOKEN,
        *,
        viewport: dict[str, int] = DESKTOP,
        color_scheme: str = "light",
    ) -> Page:
        context = browser.new_context(
            viewport=viewport, color_scheme=color_scheme, base_url=server.url
        )
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        page.goto("/ui/")
        if token is not None:
            sign_in(page, token)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, "uncaught errors in the console:\n" + "\n".join(errors)


def sign_in(page: Page, token: str) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("signin-button").click()
    expect(page.get_by_test_id("whoami")).to_be_visible()


def go(page: Page, hash_path: str) -> None:
    page.goto(f"/ui/#{hash_path}")


# ----- the API side: what the pages are checked against -------------------------------------


def deployment(server: Server, name: str) -> dict[str, Any]:
    return server.call("GET", f"{DEPLOYMENTS}/{name}")


def latest_tasks(server: Server, name: str, limit: int = 20) -> list[dict[str, Any]]:
    return server.call("GET", f"{TASKS}/tasks", params={"embedding_model_id": name, "limit": limit})


def wait_task(server: Server, kind: str, task_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def final() -> bool:
        found.update(server.call("GET", f"{TASKS}/{kind}/{task_id}"))
        return found["status"] in FINAL

    wait_until_sync(final, deadline_s=TASK_DEADLINE_MS / 1000, what=f"{kind} {task_id} to end")
    return found


def ensure_deployed(server: Server, name: str, source: Path, description: str | None) -> None:
    """`name` registered from `source` (with `description`) and live."""
    if server.request("GET", f"/v1/embedding-models/{name}").status_code == 404:
        body = {"id": name, "source": str(source), "description": description}
        server.call("POST", "/v1/embedding-models", json=body)
    if deployment_live(server, name) is None:
        task = server.call("POST", f"{TASKS}/deploy", json={"embedding_model_id": name})
        assert wait_task(server, "deploy", task["id"])["status"] == "done"


def deployment_live(server: Server, name: str) -> str | None:
    response = server.request("GET", f"{DEPLOYMENTS}/{name}")
    if response.status_code == 404 or response.json()["status"] == "DELETED":
        return None
    return response.json()["live_revision_id"]


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    found: set[str] = set()
    while len(found) < count:
        found.add(" ".join(rng.choices(WORDS, k=rng.randint(4, 12))))
    return sorted(found)


class Traffic:
    """Embedding requests for a served name until stopped; every answer must be 200."""

    def __init__(self, server: Server, model: str) -> None:
        self.server, self.model = server, model
        self.failures: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        texts = sentences(64, seed=7)
        while not self._stop.is_set():
            body = {"model": self.model, "input": texts[self.sent % 60 : self.sent % 60 + 3]}
            response = self.server.request("POST", "/v1/embeddings", json=body)
            self.sent += 1
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text}")
            self._stop.wait(0.05)


# ----- the page side ------------------------------------------------------------------------


def confirm(page: Page, *, mentions: str) -> None:
    """The confirmation dialog says what will happen (naming `mentions`); confirm it."""
    from playwright.sync_api import expect

    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("confirm-text")).to_contain_text(mentions)
    page.get_by_test_id("confirm-ok").click()
    expect(dialog).to_have_count(0)


def task_page(page: Page, kind: str) -> str:
    """The page the console navigated to after an action: the new task's; its id."""
    from playwright.sync_api import expect

    page.wait_for_url(re.compile(rf"#/tasks/{kind}/[^/]+$"))
    expect(page.get_by_test_id("task-page")).to_be_visible()
    return page.url.rsplit("/", 1)[1]


def watch_task(page: Page, server: Server, kind: str, task_id: str) -> dict[str, Any]:
    """Wait on the task page until its status is final; the page's steps (names, statuses and
    order) and failure sentence must be the API's. Returns the API's task."""
    from playwright.sync_api import expect

    status = page.get_by_test_id("task-status")
    expect(status).to_have_text(re.compile("|".join(FINAL), re.I), timeout=TASK_DEADLINE_MS)
    task = server.call("GET", f"{TASKS}/{kind}/{task_id}")
    expect(status).to_contain_text(task["status"], ignore_case=True)
    steps = task["metadata"].get("steps") or []
    rows = page.get_by_test_id("step-row")
    expect(rows).to_have_count(len(steps))
    for row, step in zip(rows.all(), steps, strict=True):
        assert row.get_attribute("data-step") == step["name"]
        expect(row.get_by_test_id("step-status")).to_contain_text(step["status"], ignore_case=True)
    if task["status"] == "failed":
        expect(page.get_by_test_id("task-detail")).to_contain_text(task["detail"])
    expect(page.get_by_test_id("cancel-button")).to_have_count(0)  # final: nothing to cancel
    return task


def actions(page: Page) -> Locator:
    return page.locator("[data-action]")


def assert_no_enabled_action(page: Page, where: str) -> int:
    """Every `[data-action]` on the page is disabled; how many there are."""
    buttons = actions(page)
    enabled = [b.get_attribute("data-action") for b in buttons.all() if b.is_enabled()]
    assert enabled == [], f"{where}: a read token sees enabled actions {enabled}"
    return buttons.count()


def no_horizontal_overflow(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.evaluate("window.innerWidth")
    assert width <= viewport, f"{page.url}: the page is {width}px wide in a {viewport}px viewport"


# ----- the scenarios ------------------------------------------------------------------------


def test_sign_in_refuses_a_wrong_token_then_accepts_the_admin_token(
    open_console: Open, looks: Looks
) -> None:
    from playwright.sync_api import expect

    page = open_console(None)
    expect(page.get_by_test_id("token-input")).to_be_visible()
    page.get_by_test_id("token-input").fill("not-a-token-" + "x" * 40)
    page.get_by_test_id("signin-button").click()
    expect(page.get_by_test_id("signin-error")).to_have_text(
        "This token is unknown, revoked or expired."
    )
    looks.look(page, "01-sign-in")
    # signed out, the header offers nothing but the brand
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    expect(page.get_by_test_id("signout-button")).to_be_hidden()
    sign_in(page, ADMIN_TOKEN)
    expect(page.get_by_test_id("whoami")).to_contain_text("admin")
    # the token stays in this tab only: never in the address, a reload keeps the tab signed in
    assert ADMIN_TOKEN not in page.url
    page.reload()
    expect(page.get_by_test_id("whoami")).to_contain_text("admin")
    page.get_by_test_id("signout-button").click()
    expect(page.get_by_test_id("token-input")).to_be_visible()
    expect(page.get_by_test_id("signout-button")).to_be_hidden()
    looks.assert_accessible()


def test_the_overview_shows_the_default_deployment(
    open_console: Open, server: Server, looks: Looks
) -> None:
    from playwright.sync_api import expect

    live = deployment(server, "docs")["live_revision_id"]
    page = open_console()
    row = page.locator('[data-testid="overview-row"][data-name="docs"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text(live[:8])  # a short id; the deployment page has it all
    expect(page.get_by_test_id("readyz")).to_have_text("ready")
    expect(row.locator("canvas").first).to_be_attached()  # the 15-minute sparklines
    looks.look(page, "02-overview")
    row.locator('a[href="#/deployments/default/docs"]').first.click()
    expect(page.get_by_test_id("deployment-page")).to_be_visible()
    expect(page.get_by_test_id("live-revision")).to_contain_text(live)
    looks.assert_accessible()


def test_a_deploy_from_the_console_reaches_done(
    open_console: Open, server: Server, looks: Looks
) -> None:
    from playwright.sync_api import expect

    before = deployment(server, "docs")["live_revision_id"]
    page = open_console()
    go(page, "/deployments/default/docs")
    expect(page.get_by_test_id("deployment-page")).to_be_visible()
    expect(page.get_by_test_id("version-row").first).to_be_visible()
    page.get_by_test_id("deploy-overrides").fill("max_batch_size=8\nmax_queue=512")
    page.get_by_test_id("deploy-strategy").select_option("green")
    page.get_by_test_id("deploy-button").click()
    confirm(page, mentions="docs")
    task_id = task_page(page, "deploy")
    task = watch_task(page, server, "deploy", task_id)
    assert task["status"] == "done", task
    assert [step["name"] for step in task["metadata"]["steps"]] == DEPLOY_STEPS
    config = server.call("GET", f"{CONFIGS}/docs")["executor_config"]
    assert (config["max_batch_size"], config["max_queue"]) == (8, 512)  # as numbers
    green = task["metadata"]["revision_id"]
    assert green != before
    expect(page.get_by_test_id("gate-result")).to_contain_text(
        re.compile(r"\d\.\d")  # the gate's mean cosine
    )
    looks.look(page, "04-task")

    go(page, "/deployments/default/docs")
    expect(page.get_by_test_id("live-revision")).to_contain_text(green)
    expect(
        page.locator(f'[data-testid="revision-row"][data-revision-id="{before}"]')
    ).to_be_visible()
    expect(page.locator(f'[data-testid="task-row"][data-task-id="{task_id}"]')).to_be_visible()
    looks.look(page, "03-deployment")
    looks.assert_accessible()


def test_a_rollback_from_the_console(open_console: Open, server: Server) -> None:
    from playwright.sync_api import expect

    tasks = [t for t in latest_tasks(server, "docs") if t["status"] == "done"]
    revisions = [t["metadata"]["revision_id"] for t in tasks if "revision_id" in t["metadata"]]
    if len(set(revisions)) < 2:  # run alone: one more revision first
        body = {"embedding_model_id": "docs", "config": {"max_batch_size": 16}}
        task = server.call("POST", f"{TASKS}/deploy", json=body)
        assert wait_task(server, "deploy", task["id"])["status"] == "done"
    live = deployment(server, "docs")["live_revision_id"]

    page = open_console()
    go(page, "/deployments/default/docs")
    expect(page.get_by_test_id("live-revision")).to_contain_text(live)
    live_row = page.locator(f'[data-testid="revision-row"][data-revision-id="{live}"]')
    expect(live_row).to_be_visible()
    expect(live_row.get_by_test_id("rollback-button")).to_have_count(0)  # not on the live one
    target_row = page.locator(
        f'[data-testid="revision-row"]:not([data-revision-id="{live}"])'
    ).first
    target = target_row.get_attribute("data-revision-id")
    assert target
    target_row.get_by_test_id("rollback-button").click()
    confirm(page, mentions=target[:8])
    task_id = task_page(page, "deploy")
    task = watch_task(page, server, "deploy", task_id)
    assert task["status"] == "done", task
    assert task["metadata"]["rollback_of"] == target
    assert deployment(server, "docs")["live_revision_id"] == task["metadata"]["revision_id"]


def test_a_script_in_a_description_does_not_run(
    open_console: Open, server: Server, tiny_model_dir: Path, looks: Looks
) -> None:
    from playwright.sync_api import expect

    ensure_deployed(server, "notes", tiny_model_dir, PAYLOAD)
    page = open_console()
    row = page.locator('[data-testid="overview-row"][data-name="notes"]')
    expect(row.get_by_test_id("overview-description")).to_have_text(PAYLOAD)
    go(page, "/deployments/default/notes")
    expect(page.get_by_test_id("model-description")).to_have_text(PAYLOAD)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator('img[src="x"]').count() == 0  # no element made from the text
    assert page.locator("main script").count() == 0
    looks.look(page, "03-deployment-notes")
    looks.assert_accessible()


def test_a_failed_deploy_shows_its_sentence(
    open_console: Open,
    server: Server,
    tiny_model_dir: Path,
    tiny_model_2_dir: Path,
    looks: Looks,
) -> None:
    from playwright.sync_api import expect

    ensure_deployed(server, "notes", tiny_model_dir, PAYLOAD)
    live = deployment(server, "notes")["live_revision_id"]
    # other weights under the same name: the compatibility gate fails the deploy
    server.call("PUT", "/v1/embedding-models/notes", json={"source": str(tiny_model_2_dir)})
    page = open_console()
    go(page, "/deployments/default/notes")
    expect(page.get_by_test_id("deployment-page")).to_be_visible()
    page.get_by_test_id("deploy-button").click()
    confirm(page, mentions="notes")
    task_id = task_page(page, "deploy")
    task = watch_task(page, server, "deploy", task_id)
    assert task["status"] == "failed", task
    assert "not comparable" in task["detail"]
    assert task["metadata"]["allow_embedding_space_change"] is False
    expect(page.get_by_test_id("task-detail")).to_be_visible()
    assert deployment(server, "notes")["live_revision_id"] == live  # untouched
    looks.look(page, "04-task-failed")
    gate = page.get_by_test_id("gate-result")
    expect(gate).to_contain_text(f"{task['metadata']['compatibility']['mean_cosine']:.3f}")
    expect(gate).not_to_contain_text("allowed")  # the request did not allow a space change
    looks.assert_accessible()


def test_a_delete_from_the_console(
    open_console: Open, server: Server, tiny_model_dir: Path
) -> None:
    from playwright.sync_api import expect

    ensure_deployed(server, "notes", tiny_model_dir, PAYLOAD)
    live = deployment(server, "notes")["live_revision_id"]
    page = open_console()
    go(page, "/deployments/default/notes")
    expect(page.get_by_test_id("live-revision")).to_contain_text(live)
    page.get_by_test_id("delete-button").click()
    confirm(page, mentions="notes")
    delete_id = task_page(page, "delete")
    assert watch_task(page, server, "delete", delete_id)["status"] == "done"
    assert deployment(server, "notes")["status"] == "DELETED"
    # the model stays registered: its row says nothing is live any more
    go(page, "/")
    row = page.locator('[data-testid="overview-row"][data-name="notes"]')
    expect(row).to_be_visible()
    expect(row).not_to_contain_text(live[:8])
    go(page, "/deployments/default/notes")
    expect(page.get_by_test_id("live-revision")).not_to_contain_text(live)
    expect(page.get_by_test_id("version-row").first).to_contain_text("DELETED")


def test_a_read_token_sees_and_cannot_press(open_console: Open, server: Server) -> None:
    from playwright.sync_api import expect

    reader = server.call("POST", "/v1/tokens", json={"name": "reader", "scopes": ["read"]})
    task = latest_tasks(server, "docs", limit=1)[0]
    page = open_console(reader["token"])
    expect(page.get_by_test_id("whoami")).to_contain_text("reader")
    for link in ("#/tokens", "#/audit"):  # admin pages are not offered
        expect(page.locator(f'nav a[href="{link}"]')).to_be_hidden()

    expect(page.locator('[data-testid="overview-row"][data-name="docs"]')).to_be_visible()
    assert_no_enabled_action(page, "overview")
    go(page, "/deployments/default/docs")
    expect(page.get_by_test_id("revision-row").first).to_be_visible()
    expect(page.get_by_test_id("deploy-button")).to_be_disabled()
    assert assert_no_enabled_action(page, "deployment") >= 3  # deploy, delete, rollbacks
    go(page, f"/tasks/deploy/{task['id']}")
    expect(page.get_by_test_id("step-row").first).to_be_visible()
    assert_no_enabled_action(page, "task")
    go(page, "/traffic")
    expect(page.get_by_test_id("traffic-page")).to_be_visible()
    assert_no_enabled_action(page, "traffic")
    for hash_path, title, row in (
        ("/tokens", "Tokens", "token-row"),
        ("/audit", "Audit", "audit-row"),
    ):
        go(page, hash_path)
        expect(page.locator("main h1")).to_have_text(title)
        expect(page.locator("main .loading")).to_have_count(0)  # rendered, not loading
        expect(page.get_by_test_id(row)).to_have_count(0)
        assert_no_enabled_action(page, hash_path)
    server.call("DELETE", f"/v1/tokens/{reader['id']}")


def test_a_migration_from_the_console(
    open_console: Open, server: Server, tiny_model_3_dir: Path, looks: Looks, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    # tiny-3 under the served name: another tokenizer and dimension, staged from the console
    server.call("PUT", "/v1/embedding-models/docs", json={"source": str(tiny_model_3_dir)})
    page = open_console()
    go(page, "/deployments/default/docs")
    expect(page.get_by_test_id("deployment-page")).to_be_visible()
    page.get_by_test_id("deploy-strategy").select_option("staged")
    page.get_by_test_id("deploy-button").click()
    confirm(page, mentions="docs")
    staged_id = task_page(page, "deploy")
    staged = watch_task(page, server, "deploy", staged_id)
    assert staged["status"] == "done", staged
    assert staged["metadata"]["result"] == "staged"

    with Traffic(server, "docs") as traffic:
        go(page, "/deployments/default/docs")
        page.get_by_test_id("migration-link").click()
        page.wait_for_url(re.compile(r"#/migrations/default/docs$"))
        expect(page.get_by_test_id("migration-page")).to_be_visible()
        expect(page.get_by_test_id("migration-stage")).to_contain_text("staged")

        page.get_by_test_id("shadow-fraction").fill("1")
        page.get_by_test_id("shadow-fraction-save").click()
        wait_until_sync(
            lambda: (server.call("GET", MIGRATION)["shadow"] or {}).get("fraction") == 1.0,
            what="the shadow fraction to be 1",
        )
        wait_until_sync(
            lambda: (server.call("GET", MIGRATION)["shadow"] or {}).get("inputs", 0) >= 20,
            deadline_s=60,
            what="shadow traffic to be reported",
        )
        expect(page.get_by_test_id("shadow-report")).to_contain_text(re.compile(r"\d"))
        expect(page.get_by_test_id("overlap-chart")).to_be_visible()

        samples = tmp_path / "samples.txt"
        texts = sentences(250, seed=1)
        samples.write_text("\n".join(texts) + "\n")
        page.get_by_test_id("samples-file").set_input_files(samples)
        page.get_by_test_id("samples-upload").click()
        expect(page.get_by_test_id("migration-notice")).to_contain_text("250")
        assert server.call("GET", MIGRATION)["samples"] >= 250

        page.get_by_test_id("fit-button").click()
        evaluation = page.get_by_test_id("adapter-evaluation")
        expect(evaluation).to_contain_text(re.compile("ridge|mlp"), timeout=60_000)
        adapter = server.call("GET", MIGRATION)["adapter"]
        expect(evaluation).to_contain_text(adapter["kind"])
        looks.look(page, "05-migration")

        # a read token sees the migration's actions and cannot press any
        reader = server.call("POST", "/v1/tokens", json={"name": "reader-2", "scopes": ["read"]})
        other = open_console(reader["token"])
        go(other, "/migrations/default/docs")
        expect(other.get_by_test_id("fit-button")).to_be_visible()
        assert assert_no_enabled_action(other, "migration") >= 6
        other.context.close()
        server.call("DELETE", f"/v1/tokens/{reader['id']}")

        page.get_by_test_id("promote-adapted-button").click()
        confirm(page, mentions="docs")
        promote_id = task_page(page, "promote")
        promoted = watch_task(page, server, "promote", promote_id)
        assert promoted["status"] == "done", promoted
        assert promoted["metadata"]["mode"] == "adapted"

        go(page, "/migrations/default/docs")
        expect(page.get_by_test_id("migration-stage")).to_contain_text("adapted")
        page.get_by_test_id("finish-button").click()
        confirm(page, mentions="docs")
        finish_id = task_page(page, "finish")
        assert watch_task(page, server, "finish", finish_id)["status"] == "done"
    assert traffic.sent > 10
    assert traffic.failures == []
    assert server.request("GET", MIGRATION).status_code == 404
    body = {"model": "docs", "input": "hello"}
    assert len(server.call("POST", "/v1/embeddings", json=body)["data"][0]["embedding"]) == 48

    go(page, "/migrations/default/docs")  # no migration: it says so and offers no action
    expect(page.get_by_test_id("migration-page")).to_be_visible()
    expect(actions(page)).to_have_count(0)
    looks.assert_accessible()


def test_the_traffic_page_charts_each_revision(
    open_console: Open, server: Server, looks: Looks
) -> None:
    from playwright.sync_api import expect

    for text in ("one", "two", "three"):
        server.call("POST", "/v1/embeddings", json={"model": "docs", "input": text})
    live = deployment(server, "docs")["live_revision_id"]
    page = open_console()
    go(page, "/traffic")
    expect(page.get_by_test_id("traffic-page")).to_be_visible()
    card = page.locator(
        f'[data-testid="traffic-series"][data-name="docs"][data-revision-id="{live}"]'
    )
    expect(card).to_be_visible()
    expect(card.locator("canvas")).not_to_have_count(0)
    assert card.locator("canvas").count() >= 4  # requests, latency, two histograms
    looks.look(page, "06-traffic")
    looks.assert_accessible()


def test_tokens_create_shows_the_secret_once_then_revoke(
    open_console: Open, server: Server, looks: Looks
) -> None:
    from playwright.sync_api import expect

    page = open_console()
    go(page, "/tokens")
    expect(page.get_by_test_id("tokens-table")).to_be_visible()
    page.get_by_test_id("token-name").fill("from-the-console")
    page.get_by_test_id("token-scope-read").check()
    page.get_by_test_id("token-create-button").click()
    created = page.get_by_test_id("token-created-value")
    expect(created).to_have_text(re.compile(r"\S{40,}"))
    secret = created.inner_text().strip()
    me = server.call("GET", "/v1/tokens/self", token=secret)
    assert me["name"] == "from-the-console" and me["scopes"] == ["read"]
    row = page.locator(f'[data-testid="token-row"][data-token-id="{me["id"]}"]')
    expect(row).to_be_visible()
    looks.look(page, "07-tokens")

    go(page, "/audit")
    go(page, "/tokens")
    expect(row).to_be_visible()
    expect(page.get_by_test_id("token-created-value")).to_have_count(0)  # shown once
    assert secret not in page.content()

    row.get_by_test_id("token-revoke-button").click()
    confirm(page, mentions="from-the-console")
    expect(row).to_have_attribute("data-revoked", "true")  # listed, marked revoked
    expect(row.get_by_test_id("token-state")).to_have_text("revoked")
    expect(row.get_by_test_id("token-revoke-button")).to_have_count(0)
    assert server.request("GET", "/v1/tokens/self", token=secret).status_code == 401
    looks.assert_accessible()


def test_the_audit_page_lists_the_writes(open_console: Open, server: Server, looks: Looks) -> None:
    from playwright.sync_api import expect

    made = server.call("POST", "/v1/tokens", json={"name": "audited", "scopes": ["read"]})
    server.call("DELETE", f"/v1/tokens/{made['id']}")
    page = open_console()
    go(page, "/audit")
    rows = page.get_by_test_id("audit-row")
    expect(rows.first).to_be_visible()
    expect(rows.first).to_contain_text("DELETE")  # newest first: the revocation
    expect(rows.first).to_contain_text(f"/v1/tokens/{made['id']}")
    expect(page.get_by_test_id("audit-prev")).to_be_visible()
    expect(page.get_by_test_id("audit-next")).to_be_visible()
    looks.look(page, "08-audit")
    looks.assert_accessible()


def test_a_phone_and_the_dark_theme(open_console: Open, looks: Looks) -> None:
    from playwright.sync_api import expect

    phone = open_console(viewport=PHONE)
    expect(phone.locator('[data-testid="overview-row"][data-name="docs"]')).to_be_visible()
    looks.look(phone, "09-phone-overview")
    no_horizontal_overflow(phone)
    go(phone, "/deployments/default/docs")
    expect(phone.get_by_test_id("revision-row").first).to_be_visible()
    looks.look(phone, "09-phone-deployment")
    no_horizontal_overflow(phone)

    dark = open_console(color_scheme="dark")
    expect(dark.locator('[data-testid="overview-row"][data-name="docs"]')).to_be_visible()
    background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in re.findall(r"\d+", background)[:3])
    assert red + green + blue < 3 * 96, f"the dark theme's background is {background}"
    looks.look(dark, "10-dark-overview")
    go(dark, "/deployments/default/docs")
    expect(dark.get_by_test_id("revision-row").first).to_be_visible()
    looks.look(dark, "10-dark-deployment")
    looks.assert_accessible()
