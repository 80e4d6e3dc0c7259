"""No oracle on order ids (issue 13): on every endpoint, another account's order and an id
never assigned get the same answer (status and body, the id aside), from a real node."""

from __future__ import annotations

import json

import pytest

from engine.fuzz.node import BOB_KEY, SYMBOL, FuzzNode

UNASSIGNED = 10**9


@pytest.fixture(scope="module")
def node():
    with FuzzNode.start() as running:
        yield running


def same(a: tuple[int, dict], b: tuple[int, dict], a_id: object, b_id: object) -> bool:
    """Equal answers, but for the id asked about and each rejection's own seq and ts."""
    text = json.dumps(b[1]).replace(str(b_id), str(a_id))
    return a[0] == b[0] and _unstamped(json.loads(text)) == _unstamped(a[1])


def _unstamped(value):
    if isinstance(value, dict):
        return {k: _unstamped(v) for k, v in value.items() if k not in ("seq", "ts")}
    if isinstance(value, list):
        return [_unstamped(v) for v in value]
    return value


def test_every_endpoint_answers_a_foreign_order_as_an_unassigned_id(node):
    order = {"symbol": SYMBOL, "side": "sell", "qty": 1, "price": 5000, "client_order_id": "bob-1"}
    status, placed = node.request("POST", "/v1/orders", order, key=BOB_KEY)
    assert status == 201
    oid = placed["order"]["order_id"]
    for method, path, body in [
        ("GET", "/v1/orders/{}", None),
        ("GET", "/v1/orders/{}/trace", None),
        ("DELETE", "/v1/orders/{}", None),
        ("PATCH", "/v1/orders/{}", {"qty": 2}),
    ]:
        foreign = node.request(method, path.format(oid), body)
        unassigned = node.request(method, path.format(UNASSIGNED), body)
        assert foreign[0] in (404, 422), (method, path, foreign)
        assert same(foreign, unassigned, oid, UNASSIGNED), (method, path, foreign, unassigned)
    foreign = node.request("GET", "/v1/orders/by-client-id/bob-1")
    assert same(foreign, node.request("GET", "/v1/orders/by-client-id/nobody-9"), "bob-1", "nobody-9")
    foreign = node.request("DELETE", "/v1/orders/by-client-id/bob-1")
    assert same(foreign, node.request("DELETE", "/v1/orders/by-client-id/nobody-9"), "bob-1", "nobody-9")
    assert node.request("GET", f"/v1/orders/{oid}", key=BOB_KEY)[1]["status"] == "open"  # untouched
