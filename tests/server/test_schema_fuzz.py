"""Schema-driven fuzzing of every operation in the served OpenAPI document, with and without a real token.

Schemathesis builds each operation's Hypothesis strategy from /openapi.json: positive cases (valid per the
schema) and negative ones (violating it). Bounded to a few examples per operation so it stays quick; what
must hold is that no input makes the server fail (5xx), that every refusal is the documented JSON error,
and that without a token the API answers nothing but client errors.

(Schemathesis' own pytest plugin for fixture-loaded schemas does not run under the installed pytest, so
the strategies are driven with Hypothesis directly, one test per operation and generation mode.)
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fixtures.server import ServerProcess
from tests.server.conftest import OPERATIONS, Drive

# No `explain` phase: it re-runs failures under sys.settrace, which takes minutes with big generated inputs.
FUZZ = settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink])
# The HTTP layer (uvicorn/h11) may drop a request whose head is above this before the app sees it.
MAX_URL_BYTES = 16 * 1024
OPS = sorted((method.upper(), path) for path, methods in OPERATIONS.items() for method in methods)
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


@pytest.fixture(scope="module")
def fuzzer(server: ServerProcess) -> Drive:
    """A user with a little content, so that small generated ids sometimes hit real nodes."""
    d = Drive(server, *server.add_user())
    folder = d.mkdir(d.root, "fuzz")
    d.commit(folder["id"], "file", b"some content")
    d.symlink(folder["id"], "link", "file")
    yield d
    d.close()


# Every error code the API documents (server/errors.py, plus the framework's own 404/405), with its status.
CODES = {
    "bad_request": 400, "invalid_name": 400, "cross_owner": 400, "unauthorized": 401, "forbidden": 403,
    "not_found": 404, "method_not_allowed": 405, "conflict": 409, "exists": 409, "not_empty": 409, "not_dir": 409,
    "is_dir": 409, "version_conflict": 409, "missing_chunks": 409, "expired": 410, "too_large": 413, "invalid": 422,
}


def _check_error_body(case, response) -> None:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), _describe(case, response)
    assert CODES.get(body["error"]["code"]) == response.status_code, _describe(case, response)


def _describe(case, response) -> str:
    return (f"{case.method} {case.formatted_path} query={case.query} body={str(case.body)[:300]}"
            f" -> {response.status_code} {response.text[:300]}")


def _send(case, server: ServerProcess, headers: dict | None = None):
    """Send a case; None if the HTTP layer refused an over-long URL by dropping the connection."""
    try:
        return case.call(base_url=server.url, headers=headers, timeout=30)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
        url_bytes = len(quote(case.formatted_path)) + len(urlencode(case.query or {}, doseq=True))
        if url_bytes > MAX_URL_BYTES:
            return None
        raise


def _run(test) -> None:
    try:
        test()
    except Unsatisfiable:
        pytest.skip("the schema leaves nothing to make invalid in this operation")


def _short_waits(case) -> None:
    # a long-poll may legitimately wait up to a minute; the fuzzer only needs to see it answer
    if case.query and isinstance(case.query.get("wait"), (int, float)) and not isinstance(case.query["wait"], bool):
        case.query["wait"] = min(case.query["wait"], 0.1)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("method, path", OPS)
def test_no_server_errors_with_a_token(api_schema, server, fuzzer, method, path, mode):
    operation = api_schema[path][method]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        _short_waits(case)
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzzer.token}"}
        response = _send(case, server)
        if response is None:
            return
        assert response.status_code < 500, _describe(case, response)
        if response.status_code >= 400:
            _check_error_body(case, response)

    _run(run)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("method, path", OPS)
def test_without_a_token_only_client_errors(api_schema, server, method, path, mode):
    operation = api_schema[path][method]

    @settings(FUZZ, max_examples=6)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        _short_waits(case)
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = _send(case, server)
        if response is None:
            return
        status = response.status_code
        if path == "/health":
            assert status == 200, _describe(case, response)
        elif path.startswith("/api/"):
            # FastAPI parses a body before it runs the token check, so a malformed body is refused either way
            assert status in (400, 401, 404, 422), _describe(case, response)
            if status in (400, 422):
                assert case.body is not None, _describe(case, response)
        else:  # blob URLs carry their own signature instead of a token
            assert status in (401, 404, 405, 422), _describe(case, response)
        if status != 200:
            _check_error_body(case, response)

    _run(run)
