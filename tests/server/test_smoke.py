"""The server starts, answers health without auth and refuses everything else without a token."""


def test_health_and_auth(server, user):
    name, client = user
    assert client.get("/health").json()["status"] == "ok"
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["name"] == name
    with server.client(None) as anon:
        r = anon.get("/api/v1/me")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    with server.client("drv_forged") as forged:
        assert forged.get("/api/v1/me").status_code == 401
