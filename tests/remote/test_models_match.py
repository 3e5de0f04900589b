"""The client's dataclasses name exactly the fields the served OpenAPI schema has, so drift is caught."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from remote import models

DATACLASSES = [getattr(models, name) for name in models.__all__]


@pytest.fixture(scope="module")
def schemas(server) -> dict:
    return httpx.get(server.url + "/openapi.json", timeout=10).raise_for_status().json()["components"]["schemas"]


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_fields_match_schema(cls, schemas):
    assert cls.__name__ in schemas, f"the server has no {cls.__name__} component"
    served = set(schemas[cls.__name__]["properties"])
    assert {f.name for f in dataclasses.fields(cls)} == served


def test_every_dataclass_is_public():
    assert all(dataclasses.is_dataclass(c) for c in DATACLASSES)
    mine = {n for n, v in vars(models).items() if dataclasses.is_dataclass(v) and v.__module__ == models.__name__}
    assert mine == set(models.__all__)
