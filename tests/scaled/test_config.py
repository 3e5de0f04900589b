"""Server configuration from a file, the environment and options, and the URLs that pick the backends.
No services needed: these run in every configuration."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from server.blobs.s3 import S3Location
from server.config import ConfigError, ServerConfig, load_config, redact_url
from server.store.db import PostgresDatabase, SqliteDatabase, open_database, pg_sql
from tests.fixtures.server import drive_cmd


def test_precedence_file_then_environment_then_options(tmp_path: Path):
    toml = tmp_path / "drive.toml"
    toml.write_text('data_dir = "/srv/drive"\nport = 9000\nurl_ttl_s = 60\n'
                    'database_url = "postgresql://file/db"\nblob_url = "s3://from-file"\n')
    cfg = load_config(toml, env={})
    assert (cfg.data_dir, cfg.port, cfg.url_ttl_s, cfg.database_url) == (Path("/srv/drive"), 9000, 60.0,
                                                                          "postgresql://file/db")
    env = {"DRIVE_DATABASE_URL": "postgresql://env/db", "DRIVE_S3_ACCESS_KEY": "AK", "DRIVE_S3_SECRET_KEY": "SK"}
    cfg = load_config(toml, env=env, port=9100, url_ttl_s=None)
    assert (cfg.port, cfg.url_ttl_s, cfg.database_url, cfg.blob_url) == (9100, 60.0, "postgresql://env/db",
                                                                          "s3://from-file")
    assert (cfg.s3_access_key, cfg.s3_secret_key) == ("AK", "SK")
    # the file may also come from the environment, and be JSON
    js = tmp_path / "drive.json"
    js.write_text(json.dumps({"server": {"host": "0.0.0.0", "session_ttl_s": 10}}))
    cfg = load_config(env={"DRIVE_SERVER_CONFIG": str(js)}, data_dir=tmp_path)
    assert (cfg.host, cfg.session_ttl_s, cfg.data_dir, cfg.database_url) == ("0.0.0.0", 10.0, tmp_path, "")


def test_secrets_never_show(tmp_path: Path):
    cfg = load_config(env={"DRIVE_S3_SECRET_KEY": "very-secret", "DRIVE_S3_ACCESS_KEY": "key-id",
                           "DRIVE_DATABASE_URL": "postgresql://drive:pw123@db:5432/drive"}, data_dir=tmp_path)
    text = repr(cfg) + str(cfg)
    assert "very-secret" not in text and "key-id" not in text and "pw123" not in text
    assert "postgresql://drive:***@db:5432/drive" in text
    assert redact_url("postgresql://db/drive") == "postgresql://db/drive"
    assert "pw123" not in repr(PostgresDatabase("postgresql://u:pw123@h/d"))


@pytest.mark.parametrize("text, message", [
    ("port = 'x'", "port"),
    ("colour = 'blue'", "unknown setting colour"),
    ("port = 70000", "out of range"),
    ("url_ttl_s = 0", "positive"),
    ("not toml at all [", "not valid TOML"),
])
def test_bad_settings_say_what_is_wrong(tmp_path: Path, text: str, message: str):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f, env={})


def test_drive_server_reports_a_bad_config_in_one_line(tmp_path: Path):
    f = tmp_path / "bad.toml"
    f.write_text("colour = 'blue'\n")
    out = subprocess.run(drive_cmd("server", "--config", str(f)), capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "unknown setting colour" in out.stderr
    out = subprocess.run(drive_cmd("server", "--data", str(tmp_path)), capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "DRIVE_BLOB_URL": "ftp://nowhere"})
    assert out.returncode == 1 and "unsupported blob URL scheme 'ftp'" in out.stderr and "Traceback" not in out.stderr


def test_backend_urls(tmp_path: Path):
    loc = S3Location.parse("s3://bucket/some/prefix?endpoint=http://127.0.0.1:8333&region=eu-west-1")
    assert (loc.bucket, loc.prefix, loc.endpoint, loc.region, loc.addressing) == (
        "bucket", "some/prefix/", "http://127.0.0.1:8333", "eu-west-1", "path")
    assert S3Location.parse("s3://bucket").addressing == "auto"
    assert S3Location.parse("s3://bucket?prefix=p").prefix == "p/"
    for bad in ("s3://ab", "s3://bucket?colour=blue", "http://bucket"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)
    assert isinstance(open_database("", tmp_path), SqliteDatabase)
    assert isinstance(open_database(f"sqlite://{tmp_path}/x.db", tmp_path), SqliteDatabase)
    assert isinstance(open_database("postgresql://h/db", tmp_path), PostgresDatabase)
    with pytest.raises(ValueError):
        open_database("mysql://h/db", tmp_path)


def test_placeholders_for_psycopg():
    assert pg_sql("SELECT a FROM t WHERE b = ? AND c IN (?, ?)") == "SELECT a FROM t WHERE b = %s AND c IN (%s, %s)"
    assert pg_sql("SELECT '?', \"odd?col\", x % 2 FROM t WHERE y LIKE 'a%' AND z = ?") == \
        "SELECT '?', \"odd?col\", x %% 2 FROM t WHERE y LIKE 'a%%' AND z = %s"
    assert pg_sql("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', %s"


def test_defaults_are_embedded(tmp_path: Path):
    cfg = ServerConfig(data_dir=tmp_path)
    assert (cfg.database_url, cfg.blob_url, cfg.db_path, cfg.blob_dir) == ("", "", tmp_path / "meta.db",
                                                                           tmp_path / "blobs")
