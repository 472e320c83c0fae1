"""Versioned schema migrations, shipped as package data.

``migrations/<dialect>/NNNN_name.sql`` holds version NNNN for that dialect;
both dialects have the same versions. Pending versions are applied at
start, in order, in one transaction together with their rows in
``schema_version``, so a database is always at a version some release
shipped. Applying again finds nothing pending. On PostgreSQL an advisory
lock makes nodes starting together take turns.

Statement splitting is deliberately simple: a statement ends with ``;`` at
the end of a line, and lines starting with ``--`` are comments. (No
triggers or functions with bodies; write those with a different runner.)
"""

import re
from importlib import resources

import attrs

from siprecd.interfaces import StorageError

__all__ = ["Migration", "load", "apply", "split_statements"]

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Any constant: all siprecd nodes agree on it.
_PG_LOCK = 7_0651_2400


@attrs.frozen
class Migration:
    version: int
    name: str
    statements: tuple


def split_statements(text):
    statements, current = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if current:
        raise ValueError(f"statement without a closing ';': {current[0].strip()}")
    return tuple(statements)


def load(dialect):
    """The migrations of *dialect* ("sqlite" or "postgresql"), in order."""
    folder = resources.files("siprecd.storage").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(
                int(match.group(1)), match.group(2),
                split_statements(entry.read_text(encoding="utf-8")),
            ))
    found.sort(key=lambda m: m.version)
    if not found or [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StorageError(f"the {dialect} migrations shipped with siprecd are incomplete")
    return found


def apply(tx, migrations, now):
    """Bring the schema up to date inside transaction *tx*; return the version."""
    if tx.dialect.name == "postgresql":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK,))
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
    )
    applied = {row["version"] for row in tx.rows("SELECT version FROM schema_version")}
    newest = migrations[-1].version
    if applied and max(applied) > newest:
        raise StorageError(
            f"the database schema is at version {max(applied)}, newer than this siprecd "
            f"knows ({newest}): upgrade siprecd"
        )
    for migration in migrations:
        if migration.version in applied:
            continue
        for statement in migration.statements:
            tx.execute(statement)
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_ms) VALUES (?, ?, ?)",
            (migration.version, migration.name, now),
        )
    return newest
