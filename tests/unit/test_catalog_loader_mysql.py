"""The catalog loader's MySQL side: relations keep their numbers across reads."""

from __future__ import annotations

from dbsentry.engines.mysql.catalog import catalog_from_rows
from dbsentry.server.catalogs import _StableOids


def _rows(*tables: str) -> list[tuple[str, ...]]:
    return [("shop", t, "BASE TABLE", "1", "email", "varchar", "varchar(80)", "") for t in tables]


def test_a_table_keeps_its_number_when_others_come_and_go() -> None:
    oids = _StableOids()
    first = oids.renumber(catalog_from_rows(_rows("customers", "orders"), (), "shop"))
    by_name = {r.name: oid for oid, r in first.relations.items()}
    # "accounts" sorts first: catalog_from_rows alone would renumber the others
    second = oids.renumber(catalog_from_rows(_rows("accounts", "customers", "orders"), (), "shop"))
    again = {r.name: oid for oid, r in second.relations.items()}
    assert again["customers"] == by_name["customers"] and again["orders"] == by_name["orders"]
    assert again["accounts"] not in by_name.values()
    assert all(r.oid == oid for oid, r in second.relations.items())
