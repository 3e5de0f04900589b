"""Input validation at the edge: naming rules, malformed and oversized bodies, bounded numbers, unknown routes
and the OpenAPI document. Every refusal is a JSON error body {error: {code, message, details}}."""

from __future__ import annotations

import json
import socket

import pytest

from server import limits  # constants only
from tests.server.conftest import API, OPERATIONS, error_of, ok, unique

BAD_NAMES = {
    "slash": "a/b",
    "nul": "a\x00b",
    "dot": ".",
    "dotdot": "..",
    "too_long": "é" * 128,  # 256 UTF-8 bytes
    "empty": "",
    "lone_surrogate": "\udc80",
}


def _raw_json(d, method: str, path: str, text: str):
    return d.c.request(method, API + path, content=text.encode(), headers={"content-type": "application/json"})


def _assert_refused_name(r) -> None:
    err = error_of(r, r.status_code)
    assert (r.status_code, err["code"]) in ((400, "invalid_name"), (422, "invalid")), (r.status_code, err)


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_names_are_refused_everywhere(mod_drive, home, name):
    d = mod_drive
    f = d.commit(home, unique("f"), b"x")
    ok(d.delete(f"/nodes/{f['id']}"))
    other = d.commit(home, unique("g"), b"y")
    # json.dumps escapes NUL as \u0000 and a lone surrogate as \udc80, as any client would send them
    requests = [
        ("POST", "/folders", {"parent_id": home, "name": name}),
        ("POST", "/symlinks", {"parent_id": home, "name": name, "target": "t"}),
        ("POST", "/files", {"parent_id": home, "name": name, "manifest": [], "size": 0}),
        ("POST", "/uploads", {"parent_id": home, "name": name, "manifest": [], "size": 0}),
        ("POST", f"/nodes/{other['id']}/move", {"parent_id": home, "name": name}),
        ("POST", f"/nodes/{f['id']}/restore", {"name": name}),
    ]
    for method, path, body in requests:
        _assert_refused_name(_raw_json(d, method, path, json.dumps(body)))
    assert sorted(d.names(home)) == [other["name"]]


def test_name_rules_that_are_not_errors(mod_drive, home):
    d = mod_drive
    longest = "é" * 127 + "a"  # 255 UTF-8 bytes
    assert d.mkdir(home, longest)["name"] == longest
    for name in ("...", ".hidden", "with space", "tab\there", "emoji 😀", "back\\slash", "Shared with me"):
        assert d.mkdir(home, name)["name"] == name  # 'Shared with me' is only reserved at the top
    error_of(d.post("/folders", {"parent_id": d.root, "name": "Shared with me"}), 400, "invalid_name")
    x = d.mkdir(home, "x")
    error_of(d.move(x["id"], d.root, "Shared with me"), 400, "invalid_name")
    assert d.names(home).count("x") == 1


@pytest.mark.parametrize("text, where", [
    ("{", "malformed"),
    ("[1, 2]", "not an object"),
    ('{"parent_id": "one", "name": "x"}', "wrong type"),
    ('{"parent_id": 1.5, "name": "x"}', "fraction"),
    ('{"parent_id": 1, "name": 7}', "wrong type"),
    ('{"parent_id": 1}', "missing field"),
    ('{"parent_id": 1, "name": "x", "colour": "red"}', "extra field"),
    ('{"parent_id": 0, "name": "x"}', "id below 1"),
    ('{"parent_id": 1, "name": "x", "mode": 65536}', "mode above 0o7777"),
    ('{"parent_id": 1, "name": "x", "mtime_ns": -1}', "negative time"),
    ('{"parent_id": 99999999999999999999999999, "name": "x"}', "huge int"),
    ("", "empty body"),
])
def test_malformed_bodies_are_422(mod_drive, text, where):
    err = error_of(_raw_json(mod_drive, "POST", "/folders", text), 422, "invalid")
    assert isinstance(err["details"]["errors"], list) and err["details"]["errors"], where
    assert all({"loc", "msg"} <= set(e) for e in err["details"]["errors"])


def test_body_that_is_not_utf8_is_a_bad_request(mod_drive):
    for body in (b"\x80", b'{"parent_id": 1, "name": "\xff"}'):
        r = mod_drive.c.post(API + "/folders", content=body, headers={"content-type": "application/json"})
        error_of(r, 400, "bad_request")


def test_validation_errors_name_the_field(mod_drive):
    err = error_of(mod_drive.post("/folders", {"parent_id": mod_drive.root, "name": "x", "colour": "red"}), 422)
    assert ["body", "colour"] in [e["loc"] for e in err["details"]["errors"]]
    assert "colour" in err["message"]


@pytest.mark.parametrize("request_", [
    ("GET", "/nodes/{root}/versions/4611686018427387905"),
    ("POST", "/nodes/{root}/versions/99999999999999999999999/restore"),
    ("GET", "/nodes/0"),
    ("GET", "/nodes/abc"),
    ("GET", "/changes?cursor=9999999999999999999"),
    ("GET", "/changes?cursor=-1"),
    ("GET", "/changes?wait=61"),
    ("GET", "/changes?wait=nan"),
    ("GET", "/trash?limit=0"),
    ("GET", "/nodes/{root}/children?limit=5001"),
])
def test_out_of_range_parameters_are_422(mod_drive, request_):
    method, path = request_
    error_of(mod_drive.c.request(method, API + path.format(root=mod_drive.root)), 422, "invalid")


def test_huge_version_numbers_in_bodies_are_422(mod_drive):
    d = mod_drive
    error_of(d.post("/chunks/download-urls", {"node_id": d.root, "version": 2**70, "hashes": []}), 422, "invalid")
    error_of(d.post("/files", {"node_id": d.root, "base_version": 2**70, "manifest": [], "size": 0}), 422, "invalid")


def test_bad_hashes_are_422(mod_drive):
    for h in ("A" * 64, "a" * 63, "g" * 64, "a" * 65, ""):
        error_of(mod_drive.post("/chunks/missing", {"hashes": [h]}), 422, "invalid")


def test_declared_oversized_body_is_413_before_it_is_sent(server, mod_drive):
    """A Content-Length above the limit is refused from the headers alone, without reading the body."""
    declared = limits.MAX_JSON_BODY_BYTES + 1
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall((f"POST {API}/chunks/missing HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {mod_drive.token}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {declared}\r\n\r\n").encode() + b'{"hashes": [')
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == "too_large"


def test_streamed_oversized_body_is_413(server, mod_drive):
    """Without a Content-Length (chunked), the server counts as it reads and stops at the limit."""
    piece = b" " * 2**20

    def body():
        yield b'{"hashes": ['
        for _ in range(limits.MAX_JSON_BODY_BYTES // len(piece) + 4):
            yield piece

    r = mod_drive.c.post(API + "/chunks/missing", content=body(), headers={"content-type": "application/json"})
    error_of(r, 413, "too_large")


def test_body_just_under_the_limit_is_read(mod_drive):
    """Padding up to the limit is still parsed (and then judged on its content)."""
    text = '{"hashes": []}'
    padded = text + " " * (limits.MAX_JSON_BODY_BYTES - len(text))
    assert ok(_raw_json(mod_drive, "POST", "/chunks/missing", padded)) == {"missing": []}


def test_unknown_routes_and_methods_are_json(server, mod_drive):
    error_of(mod_drive.get("/no/such/route"), 404, "not_found")
    error_of(mod_drive.c.get("/nope"), 404, "not_found")
    error_of(mod_drive.c.put(API + "/me"), 405, "method_not_allowed")
    with server.client(None) as anon:
        error_of(anon.get(API + "/no/such/route"), 404, "not_found")


def test_every_api_route_needs_a_token(server):
    schema = ok(server.client(None).get("/openapi.json"))
    with server.client(None) as anon, server.client("drv_not-a-real-token") as forged:
        for path, ops in schema["paths"].items():
            if not path.startswith(API):
                continue
            url = path.replace("{node_id}", "1").replace("{version}", "1").replace("{sid}", "s").replace("{name}", "u")
            for method in ops:
                for client in (anon, forged):
                    error_of(client.request(method.upper(), url), 401, "unauthorized")


def test_openapi_document_is_served(server):
    with server.client(None) as anon:
        schema = ok(anon.get("/openapi.json"))
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "drivefs"
    paths = schema["paths"]
    assert {p: set(ops) for p, ops in paths.items()} == OPERATIONS
    assert "ErrorBody" in schema["components"]["schemas"]
    assert "422" in paths[f"{API}/folders"]["post"]["responses"]
