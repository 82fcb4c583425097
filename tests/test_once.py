"""once(): a per-frame cache entry is computed by one thread, however many ask together."""

from __future__ import annotations

import threading
import time

import pytest

from rewardscope.science.once import _KEY_LOCKS, once


def test_threads_asking_together_compute_the_entry_once_and_read_the_same_value():
    cache: dict = {}
    calls: list[int] = []
    start = threading.Barrier(6)
    got: list[object] = []

    def compute() -> object:
        calls.append(1)
        time.sleep(0.05)  # long enough that the others arrive while it runs
        return object()

    def ask() -> None:
        start.wait()
        got.append(once(cache, "k", compute))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(got) == 6 and all(g is got[0] for g in got)
    assert cache["k"] is got[0]
    assert not _KEY_LOCKS  # no lock outlives its waiters


def test_different_keys_do_not_wait_for_each_other():
    cache: dict = {}
    inside = threading.Event()
    release = threading.Event()

    def slow() -> str:
        inside.set()
        release.wait(5)
        return "slow"

    t = threading.Thread(target=lambda: once(cache, "a", slow))
    t.start()
    assert inside.wait(5)
    assert once(cache, "b", lambda: "fast") == "fast"  # not blocked by "a"
    release.set()
    t.join()
    assert cache == {"a": "slow", "b": "fast"}


def test_a_failed_compute_raises_to_its_caller_and_the_next_caller_computes_afresh():
    cache: dict = {}

    def boom() -> int:
        raise RuntimeError("bad candidate")

    with pytest.raises(RuntimeError, match="bad candidate"):
        once(cache, "k", boom)
    assert "k" not in cache
    assert once(cache, "k", lambda: 7) == 7
    assert once(cache, "k", lambda: 8) == 7  # cached now


def test_no_cache_computes_every_time():
    n = []
    assert once(None, "k", lambda: n.append(1) or len(n)) == 1
    assert once(None, "k", lambda: n.append(1) or len(n)) == 2
