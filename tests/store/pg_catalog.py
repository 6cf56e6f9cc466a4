"""PostgreSQL schema helpers for tests: its catalog as plain data (to compare a migrated schema with a
fresh one), and building a schema exactly as an older version created it."""

from __future__ import annotations

from typing import Any

import psycopg

from agent.store.postgres import schema as pg_schema_module


def catalog(conn: Any, schema: str) -> dict[str, Any]:
    """Tables (kind, reloptions), columns (type, default, nullability, identity), indexes (definition),
    constraints (definition), with the schema's name replaced by `S` so two schemas compare."""

    def rows(sql: str) -> list[tuple[Any, ...]]:
        found = conn.execute(sql, {"s": schema}).fetchall()
        return sorted(tuple(str(v).replace(schema + ".", "S.") for v in row) for row in found)

    return {
        "tables": rows(
            "SELECT c.relname, c.relkind, coalesce(array_to_string(array(SELECT unnest(c.reloptions) "
            "ORDER BY 1), ','), '') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
        ),
        "columns": rows(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity, a.attgenerated "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE n.nspname = %(s)s AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        "indexes": rows(
            "SELECT c.relname, i.relname, pg_get_indexdef(i.oid), "
            "coalesce(array_to_string(i.reloptions, ','), '') FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s"
        ),
        "constraints": rows(
            "SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid) FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %(s)s"
        ),
    }


def tables_of(schema: str) -> dict[str, str]:
    names = ("events", "delivered", "requests", "kv", "meters")
    keys = ("ev", "dv", "rq", "kv", "mt")
    return {"ns": schema, **{k: f"{schema}.dodo_outbox_{n}" for k, n in zip(keys, names, strict=True)}}


def build_at(postgres_url: str, schema: str, version: int) -> None:
    """A schema exactly as dodo-outbox `version` created it fresh (the shipped v1, then its steps)."""
    with psycopg.connect(postgres_url) as conn:
        pg_schema_module.migrate(conn, schema, tables_of(schema), target=version)
