"""affinity.py: conversation keys, and the bounded LRU table with a TTL."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from addon.affinity import Affinity, client_key, conversation_key, header_conversation_key
from addon.state import Conversation

NOW = 1_800_000_000.0


# -- keys ------------------------------------------------------------------------------------


def test_the_conversation_comes_from_the_headers_first() -> None:
    headers = {"session-id": "thread-1", "x-codex-turn-state": "turn-9"}
    assert header_conversation_key(headers) == conversation_key(headers, "cache-key")
    # Codex's prompt_cache_key is the thread id: by header or by body, one conversation.
    assert conversation_key(headers) == conversation_key({}, "thread-1")


def test_without_a_header_the_body_cache_key_then_the_turn_state_name_it() -> None:
    assert header_conversation_key({}) is None
    assert conversation_key({}, "thread-1") == conversation_key({"x": "y"}, "thread-1")
    by_turn = conversation_key({"x-codex-turn-state": "turn-9"})
    assert by_turn is not None and by_turn != conversation_key({}, "turn-9")
    assert conversation_key({}) is None


def test_keys_are_hashes_that_hold_nothing_readable() -> None:
    key = conversation_key({"session-id": "thread-secret-1"})
    client = client_key({"chatgpt-account-id": "acct-secret"})
    assert key is not None and client is not None
    assert "secret" not in key + client
    assert len(key) == len(client) == 32
    assert client_key({}) is None


# -- the table -------------------------------------------------------------------------------


def test_an_entry_lives_until_its_ttl() -> None:
    table = Affinity(ttl=60)
    table.set("c", "acct-a", NOW)
    assert table.get("c", NOW + 60) == "acct-a"
    assert table.get("c", NOW + 61) is None
    assert "c" not in table.table  # an expired entry is dropped when found


def test_the_least_recently_set_entry_goes_first() -> None:
    table = Affinity(capacity=3)
    for key in "abc":
        table.set(key, "acct-a", NOW)
    table.set("a", "acct-b", NOW + 1)  # set again: now the most recent
    table.set("d", "acct-a", NOW + 2)
    assert list(table.table) == ["c", "a", "d"]
    assert table.get("a", NOW + 2) == "acct-b"


def test_a_large_table_evicts_its_oldest_entries_in_batches_and_keeps_its_bound() -> None:
    table = Affinity(capacity=6400)
    assert table.evict_batch == 100
    for i in range(6400):
        table.set(f"k{i}", "acct-a", NOW + i)
    table.set("new", "acct-a", NOW + 6400)
    assert len(table.table) == 6400 - 99  # 100 oldest gone at once
    assert "k99" not in table.table and "k100" in table.table and "new" in table.table


@given(st.lists(st.integers(0, 40), max_size=300), st.integers(1, 12))
def test_the_table_stays_bounded_and_keeps_the_most_recent_keys(
    keys: list[int], capacity: int
) -> None:
    table = Affinity(capacity=capacity)
    for step, key in enumerate(keys):
        table.set(str(key), "acct-a", NOW + step)
    assert len(table.table) <= capacity
    newest_first = list(dict.fromkeys(str(k) for k in reversed(keys)))
    # Everything kept is among the most recently set; the very latest key is always kept.
    assert set(table.table) <= set(newest_first[:capacity])
    assert list(table.table) == [k for k in reversed(newest_first) if k in table.table]
    if keys:
        assert str(keys[-1]) in table.table


def test_only_a_new_owner_or_an_old_entry_counts_as_a_change() -> None:
    table = Affinity()
    table.set("c", "acct-a", NOW)
    table.set("c", "acct-a", NOW + 30)  # seen again soon: not worth a save
    assert table.changes == 1
    table.set("c", "acct-a", NOW + 100)  # seen again after a minute
    table.set("c", "acct-b", NOW + 101)  # moved
    assert table.changes == 3


def test_load_keeps_the_newest_fresh_entries_in_order() -> None:
    table = Affinity(capacity=2, ttl=100)
    saved = [
        Conversation(key="old", account_id="acct-a", seen_at=NOW - 50),
        Conversation(key="expired", account_id="acct-a", seen_at=NOW - 500),
        Conversation(key="newest", account_id="acct-b", seen_at=NOW - 1),
        Conversation(key="middle", account_id="acct-a", seen_at=NOW - 10),
    ]
    table.load(saved, NOW)
    assert table.table == {"middle": ("acct-a", NOW - 10), "newest": ("acct-b", NOW - 1)}
    assert list(table.table) == ["middle", "newest"]
    assert [c.key for c in table.export()] == ["middle", "newest"]


def test_trim_brings_a_table_filled_from_outside_back_within_its_capacity() -> None:
    table = Affinity(capacity=3)
    table.table.update({f"k{i}": ("acct-a", NOW + i) for i in range(10)})
    table.trim()
    assert list(table.table) == ["k7", "k8", "k9"]
