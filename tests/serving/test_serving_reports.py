"""serving/reports.py: whether every router with a fresh heartbeat agrees."""

from __future__ import annotations

from datetime import timedelta

from greenroom.serving.models import RouterReport
from greenroom.serving.reports import ROUTER_FRESH_S, fresh_reports, routers_agree
from greenroom.store.db import Store, utcnow


def _report(router_id: str, live: dict[str, str], *, age_s: float = 0.0) -> RouterReport:
    return RouterReport(
        router_id=router_id,
        live=live,
        in_flight={},
        heartbeat_at=utcnow() - timedelta(seconds=age_s),
    )


def _serves_green(report: RouterReport) -> bool:
    return report.live.get("m") == "green"


def test_routers_agree_when_every_fresh_router_satisfies_the_condition(store: Store) -> None:
    with store.session_scope() as session:
        session.add_all([_report("a", {"m": "green"}), _report("b", {"m": "green"})])
    with store.session_scope() as session:
        assert routers_agree(session, condition=_serves_green) is True


def test_one_fresh_router_that_disagrees_holds_it_up(store: Store) -> None:
    with store.session_scope() as session:
        session.add_all([_report("a", {"m": "green"}), _report("b", {"m": "blue"})])
    with store.session_scope() as session:
        assert routers_agree(session, condition=_serves_green) is False


def test_a_stale_router_is_gone(store: Store) -> None:
    with store.session_scope() as session:
        session.add_all(
            [_report("a", {"m": "green"}), _report("b", {"m": "blue"}, age_s=ROUTER_FRESH_S + 5)]
        )
    with store.session_scope() as session:
        assert [r.router_id for r in fresh_reports(session)] == ["a"]
        assert routers_agree(session, condition=_serves_green) is True
        # a longer freshness window sees the old router again
        assert routers_agree(session, condition=_serves_green, fresh_s=3600) is False


def test_no_router_at_all_agrees(store: Store) -> None:
    with store.session_scope() as session:
        assert routers_agree(session, condition=_serves_green) is True
