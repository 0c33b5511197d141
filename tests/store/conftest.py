"""Store fixtures: one PostgreSQL cluster per session (tests/pg.py), a database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import PgCluster, why_unavailable


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A running PostgreSQL cluster; the tests that use it skip where it cannot start."""
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    cluster = PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """The DSN of a fresh, empty database (dropped after the test)."""
    dsn = pg_cluster.create_database()
    yield dsn
    pg_cluster.drop_database(dsn)
