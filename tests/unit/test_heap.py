"""heap.py: what is alive when the router settles is left out of later collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from addon import heap
from tests.unit.conftest import scanned


class Node:
    me: Node | None = None


@pytest.fixture
def no_automatic_collections() -> Iterator[None]:
    """Only the collections the test asks for (an automatic one would decide the outcome)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        heap.release()
        if was:
            gc.enable()


def test_settled_objects_are_not_scanned_until_released(no_automatic_collections: None) -> None:
    node = Node()
    assert scanned(node)
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert not scanned(node)
    heap.release()
    assert gc.get_freeze_count() == 0
    assert scanned(node)


def test_settling_after_a_collection_does_not_keep_garbage_cycles(
    no_automatic_collections: None,
) -> None:
    node = Node()
    node.me = node  # a cycle: only a collection frees it
    dead = weakref.ref(node)
    del node
    heap.settle(collect=True)
    assert dead() is None


def test_settling_without_a_collection_keeps_a_garbage_cycle_until_released(
    no_automatic_collections: None,
) -> None:
    node = Node()
    node.me = node
    dead = weakref.ref(node)
    del node
    heap.settle()
    gc.collect()
    assert dead() is not None  # why the first settle collects first
    heap.release()
    gc.collect()
    assert dead() is None
