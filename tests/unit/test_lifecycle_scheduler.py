"""Swap decisions (llama-swap's group semantics), as pure logic."""

from __future__ import annotations

from llamaswap_docker.config import load_config_text
from llamaswap_docker.lifecycle import models_to_evict

CONFIG = load_config_text("""
models:
  a: {image: x}
  b: {image: x}
  solo: {image: x}
  p1: {image: x}
  p2: {image: x}
  s1: {image: x}
  s2: {image: x}
  e1: {image: x}
groups:
  persistent:
    persistent: true
    swap: false
    exclusive: false
    members: [p1, p2]
  side_by_side:
    swap: false
    exclusive: false
    members: [s1, s2]
  exclusive_one:
    swap: true
    exclusive: true
    members: [e1]
""")


def test_ungrouped_models_swap_with_each_other() -> None:
    # a, b and solo share the implicit (default) group: swap + exclusive.
    assert models_to_evict("a", ["b", "solo"], CONFIG) == {"b", "solo"}


def test_default_group_is_exclusive_but_spares_persistent_groups() -> None:
    assert models_to_evict("a", ["p1", "s1", "b"], CONFIG) == {"s1", "b"}


def test_group_without_swap_keeps_its_members_together() -> None:
    assert models_to_evict("s2", ["s1"], CONFIG) == set()


def test_non_exclusive_group_leaves_other_groups_running() -> None:
    assert models_to_evict("s1", ["a", "p1"], CONFIG) == set()


def test_exclusive_group_stops_every_other_non_persistent_group() -> None:
    assert models_to_evict("e1", ["a", "s1", "s2", "p1", "p2"], CONFIG) == {"a", "s1", "s2"}


def test_the_target_itself_is_never_evicted() -> None:
    assert models_to_evict("a", ["a"], CONFIG) == set()
