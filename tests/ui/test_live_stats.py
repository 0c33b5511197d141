"""The dashboard's in-memory pieces on their own, with controlled clocks: the live-stats
ring buffers and the cookie session store."""

from __future__ import annotations

import pytest

from cumulo.errors import Unauthorized
from cumulo.gateway.ui import SessionStore, csrf_ok, session_cookie
from cumulo.observability.live_stats import LiveStats
from cumulo.observability.outcomes import Outcome
from cumulo.security.auth import Authenticator
from cumulo.security.keys import KeyHasher, generate_key, key_id
from cumulo.store.base import ApiKeyRecord

T0 = 1_800_000_000


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def outcome(at: float, ms: float, status: int = 200, cold: bool = False, fn: str = "f") -> Outcome:
    return Outcome("id", "default", fn, 1, status, "ok", cold, at - ms / 1000, ms / 1000)


def test_buckets_per_second_with_percentiles() -> None:
    clock = Clock(T0 + 0.5)
    stats = LiveStats(window=10, clock=clock)
    for ms in range(1, 101):  # 1..100 ms in one second
        stats.observe(outcome(T0 + 0.2, ms, status=500 if ms % 10 == 0 else 200, cold=ms == 1))
    stats.observe(outcome(T0 - 3 + 0.1, 5))
    series = stats.series("default", "f", 5)
    assert [b["t"] for b in series["buckets"]] == list(range(T0 - 4, T0 + 1))
    assert [b["count"] for b in series["buckets"]] == [0, 1, 0, 0, 100]
    last = series["buckets"][-1]
    assert (last["errors"], last["cold"]) == (10, 1)
    # Histogram percentiles: within one bin (2^(1/4), about ±9%) of the exact ones.
    for name, exact in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
        assert abs(last[name] - exact) / exact < 0.1, (name, last[name])
    assert series["buckets"][0]["p50_ms"] is None
    assert series["total"]["count"] == 101
    assert stats.series("default", "other")["total"] == {
        "count": 0,
        "errors": 0,
        "cold": 0,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
    }


def test_ring_reuses_buckets_and_drops_what_is_older_than_the_window() -> None:
    clock = Clock(T0)
    stats = LiveStats(window=10, clock=clock)
    stats.observe(outcome(T0, 1))
    clock.now = T0 + 10  # the same slot in the ring, ten seconds later
    stats.observe(outcome(T0 + 10, 2))
    stats.observe(outcome(T0, 1))  # late report of an overwritten second: dropped
    series = stats.series("default", "f")
    assert series["total"]["count"] == 1
    assert series["buckets"][-1]["count"] == 1
    clock.now = T0 + 30
    assert stats.series("default", "f")["total"]["count"] == 0


def test_bounded_number_of_functions() -> None:
    clock = Clock(T0)
    stats = LiveStats(window=5, max_functions=2, clock=clock)
    stats.observe(outcome(T0 - 2, 1, fn="a"))
    stats.observe(outcome(T0 - 1, 1, fn="b"))
    stats.observe(outcome(T0, 1, fn="c"))  # evicts "a", the least recently active
    assert stats.series("default", "a")["total"]["count"] == 0
    assert stats.series("default", "c")["total"]["count"] == 1


def make_store(clock: Clock) -> tuple[SessionStore, Authenticator, str]:
    hasher = KeyHasher(b"k" * 32)
    auth = Authenticator(hasher)
    key = generate_key()
    record = ApiKeyRecord(key_id(key), "default", "", ("read",), T0, None, None, hasher.hash(key))
    auth.load([record])
    return SessionStore(auth, ttl_s=60, clock=clock), auth, key


def test_sessions_expire_and_end_with_their_key() -> None:
    clock = Clock(T0)
    store, auth, key = make_store(clock)
    with pytest.raises(Unauthorized):
        store.create("cmo_wrong")
    session, principal, expires = store.create(key)
    assert key not in session
    assert expires == T0 + 60
    assert store.principal(session) == principal
    clock.now = T0 + 61
    with pytest.raises(Unauthorized, match="expired"):
        store.principal(session)
    assert len(store) == 0

    clock.now = T0
    session, _, _ = store.create(key)
    auth.load([])  # the key was revoked
    with pytest.raises(Unauthorized, match="revoked"):
        store.principal(session)
    assert len(store) == 0
    with pytest.raises(Unauthorized, match="unknown"):
        store.principal("never-issued")


def test_a_login_forgets_sessions_of_revoked_keys() -> None:
    clock = Clock(T0)
    store, auth, key = make_store(clock)
    store.create(key)
    store.create(key)
    hasher = KeyHasher(b"k" * 32)
    other = generate_key()
    auth.load(
        [ApiKeyRecord(key_id(other), "default", "", ("read",), T0, None, None, hasher.hash(other))]
    )
    store.create(other)  # the first key is gone: its two sessions with it
    assert len(store) == 1


def test_cookie_parsing_and_csrf_rules() -> None:
    assert session_cookie([(b"cookie", b"a=1; cumulo_session=abc; b=2")]) == "abc"
    assert session_cookie([(b"cookie", b"xcumulo_session=abc")]) is None
    assert session_cookie([(b"cookie", b"cumulo_session=")]) is None

    def scope(method: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
        return {"method": method, "scheme": "http", "headers": [(b"host", b"h:1"), *headers]}

    assert csrf_ok(scope("GET"))
    assert not csrf_ok(scope("POST"))
    assert csrf_ok(scope("POST", (b"x-cumulo-csrf", b"1")))
    assert not csrf_ok(scope("POST", (b"x-cumulo-csrf", b"0")))
    assert csrf_ok(scope("DELETE", (b"origin", b"http://h:1")))
    assert not csrf_ok(scope("PUT", (b"origin", b"http://evil:1")))
    assert not csrf_ok(scope("PUT", (b"origin", b"https://h:1")))
