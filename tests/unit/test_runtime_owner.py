"""Who owns an instance: the liveness check of a recorded owner (no engine needed here)."""

from __future__ import annotations

import dataclasses

from llamaswap_docker.runtime.owner import Owner, _alive


def test_a_live_process_on_this_machine_is_alive_and_a_dead_one_is_not() -> None:
    me = Owner.current("127.0.0.1:8080")
    other = dataclasses.replace(me, token="other")  # this very process, as another proxy
    assert _alive(None, other, me) is True  # type: ignore[arg-type]
    gone = dataclasses.replace(other, pid="999999999")
    assert _alive(None, gone, me) is False  # type: ignore[arg-type]
    restarted = dataclasses.replace(other, pidstart="1")  # the pid was reused since
    assert _alive(None, restarted, me) is False  # type: ignore[arg-type]


def test_an_owner_that_cannot_be_checked_from_here_counts_as_unknown() -> None:
    me = Owner.current("127.0.0.1:8080")
    elsewhere = dataclasses.replace(me, token="other", pidns="pid:[1]")
    assert _alive(None, elsewhere, me) is None  # type: ignore[arg-type]


def test_the_record_round_trips_through_labels() -> None:
    me = Owner.current("0.0.0.0:8080")
    labels = me.labels("demo")
    assert labels["io.llamaswap.instance"] == "demo" and labels["io.llamaswap.managed"] == "true"
    assert Owner.from_labels(labels) == me
    assert "pid " in me.describe() and "0.0.0.0:8080" in me.describe()
