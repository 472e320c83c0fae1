"""Fixtures shared by test modules: the test PostgreSQL server; and the
hypothesis profile (CI runs the property tests derandomised, so a red CI
is always reproducible; a developer's runs explore new examples)."""

import os
import uuid

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

POSTGRES_ENV = "SIPRECD_TEST_POSTGRES_DSN"
POSTGRES_HOWTO = (
    f"{POSTGRES_ENV} is not set: the PostgreSQL cases need a real server. "
    "`make test` starts one; by hand: "
    f"`export {POSTGRES_ENV}=$(bash scripts/test-postgres)`"
)


@pytest.fixture(scope="session")
def postgres_dsn():
    """The DSN of the test server; fails (never skips) when there is none."""
    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        pytest.fail(POSTGRES_HOWTO, pytrace=False)
    return dsn


@pytest.fixture
def postgres_schema(postgres_dsn):
    """A fresh, empty schema for one test, dropped afterwards; yields a DSN
    whose connections use it (search_path), so tests never see each other."""
    import psycopg
    from psycopg import conninfo

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield conninfo.make_conninfo(postgres_dsn, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
