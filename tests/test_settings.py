"""Settings: one pydantic-settings object read from OSTIARY_* variables; an invalid
setting stops startup with one line naming the variable and a non-zero exit."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

import pytest

from app.settings import MAX_ACCESS_TOKEN_TTL, SettingsError, ensure_development_keyring, load_settings
from tests.support import ROOT, TEST_SECRET, clean_env

OTHER_SECRET = "another-secret-key-fedcba9876543210fedcba9876543210"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Only what a test sets: no OSTIARY_* from the caller, and a scratch working directory
    (the default database is ./ostiary.db)."""
    for name in list(os.environ):
        if name.startswith("OSTIARY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def refused(monkeypatch, **env) -> SettingsError:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return caught.value


# -- the issuer (RFC 8414 §2) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "issuer",
    [
        pytest.param("https://auth.example.com/", id="trailing slash"),
        pytest.param("https://auth.example.com/tenant/", id="trailing slash after a path"),
        pytest.param("https://auth.example.com?tenant=a", id="query"),
        pytest.param("https://auth.example.com?", id="empty query"),
        pytest.param("https://auth.example.com#top", id="fragment"),
        pytest.param("https://Auth.Example.com", id="uppercase host"),
        pytest.param("HTTPS://auth.example.com", id="uppercase scheme"),
        pytest.param("https://auth.example.com:443", id="default https port"),
        pytest.param("http://127.0.0.1:80", id="default http port"),
        pytest.param("http://auth.example.com", id="http on a non-loopback host"),
        pytest.param("http://10.0.0.5:8000", id="http on a private address"),
        pytest.param("https://user:pw@auth.example.com", id="user information"),
        pytest.param("ftp://auth.example.com", id="not http(s)"),
        pytest.param("auth.example.com", id="no scheme"),
        pytest.param("not a url", id="not a URL"),
        pytest.param("https://auth.example.com:99999", id="bad port"),
        pytest.param("", id="empty"),
    ],
)
def test_issuer_must_be_canonical_https_url_rfc8414_s2(monkeypatch, issuer):
    error = refused(monkeypatch, OSTIARY_ISSUER=issuer, OSTIARY_SECRET_KEYS=TEST_SECRET)
    assert error.name == "OSTIARY_ISSUER"
    assert str(error).startswith("OSTIARY_ISSUER: ")


@pytest.mark.parametrize(
    "issuer",
    [
        pytest.param("https://auth.example.com", id="https host"),
        pytest.param("https://auth.example.com:8443", id="https with a port"),
        pytest.param("https://auth.example.com/tenant", id="https with a path"),
        pytest.param("http://127.0.0.1:8000", id="http on IPv4 loopback"),
        pytest.param("http://localhost:8000", id="http on localhost"),
        pytest.param("http://[::1]:8000", id="http on IPv6 loopback"),
    ],
)
def test_issuer_accepted_byte_for_byte_https_or_loopback(monkeypatch, issuer):
    monkeypatch.setenv("OSTIARY_ISSUER", issuer)
    monkeypatch.setenv("OSTIARY_SECRET_KEYS", TEST_SECRET)
    assert load_settings().issuer == issuer  # never rewritten: clients compare it exactly


# -- the keyring ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"OSTIARY_ISSUER": "https://auth.example.com"}, id="https issuer"),
        pytest.param(
            {"OSTIARY_ISSUER": "https://auth.example.com", "OSTIARY_DATABASE_URL": "postgresql://u@db/ostiary"},
            id="https issuer on PostgreSQL",
        ),
        pytest.param(
            {"OSTIARY_ISSUER": "http://127.0.0.1:8000", "OSTIARY_DATABASE_URL": "postgresql://u@db/ostiary"},
            id="loopback issuer without an SQLite file",
        ),
    ],
)
def test_missing_keyring_refused_in_production(monkeypatch, tmp_path, env):
    error = refused(monkeypatch, **env)
    assert error.name == "OSTIARY_SECRET_KEYS"
    assert list(tmp_path.iterdir()) == []  # no development keyring was generated


def test_loading_settings_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("OSTIARY_DATABASE_URL", f"sqlite:///{tmp_path / 'ostiary.db'}")
    settings = load_settings()
    assert list(tmp_path.iterdir()) == []  # no development keyring until `ostiary serve` makes one
    with pytest.raises(SettingsError) as refused_keyring:
        settings.keyring()
    assert refused_keyring.value.name == "OSTIARY_SECRET_KEYS" and "ostiary serve" in refused_keyring.value.message


def test_dev_keyring_generated_once_into_0600_file_beside_sqlite_db(monkeypatch, tmp_path, caplog):
    db = tmp_path / "data" / "ostiary.db"
    monkeypatch.setenv("OSTIARY_DATABASE_URL", f"sqlite:///{db}")
    with caplog.at_level(logging.WARNING, logger="ostiary.settings"):
        first = ensure_development_keyring(load_settings())
    key_file = tmp_path / "data" / "ostiary.db.secret-keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [r for r in caplog.records if "generated a development secret key" in r.getMessage()]
    (secret,) = first.keyring()
    assert len(secret) >= 32 and secret.decode() in key_file.read_text()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ostiary.settings"):
        second = ensure_development_keyring(load_settings())
    assert second.keyring() == [secret]  # reused after a restart: stored keys stay readable
    assert not [r for r in caplog.records if "generated" in r.getMessage()]


def test_dev_keyring_beside_default_database(monkeypatch, tmp_path):
    settings = ensure_development_keyring(load_settings())
    assert settings.database_url.get_secret_value() == "sqlite:///./ostiary.db"
    assert settings.keyring()
    assert stat.S_IMODE((tmp_path / "ostiary.db.secret-keys").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [pytest.param(0o640, id="group-readable"), pytest.param(0o604, id="world-readable")])
def test_dev_keyring_file_readable_by_others_refused(monkeypatch, tmp_path, mode):
    monkeypatch.setenv("OSTIARY_DATABASE_URL", f"sqlite:///{tmp_path / 'ostiary.db'}")
    ensure_development_keyring(load_settings())
    (tmp_path / "ostiary.db.secret-keys").chmod(mode)
    error = refused(monkeypatch)
    assert error.name == "OSTIARY_SECRET_KEYS_FILE"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("short", id="one short secret"),
        pytest.param(f"{TEST_SECRET},tooshort", id="second secret short"),
        pytest.param("x" * 31, id="31 characters"),
    ],
)
def test_short_secrets_refused(monkeypatch, value):
    error = refused(monkeypatch, OSTIARY_ISSUER="https://auth.example.com", OSTIARY_SECRET_KEYS=value)
    assert error.name == "OSTIARY_SECRET_KEYS"


def test_keyring_order_first_encrypts_all_decrypt(monkeypatch):
    monkeypatch.setenv("OSTIARY_SECRET_KEYS", f"{OTHER_SECRET}, {TEST_SECRET}")
    assert load_settings().keyring() == [OTHER_SECRET.encode(), TEST_SECRET.encode()]


# -- _FILE variants (Docker secrets) ----------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(f"{OTHER_SECRET}\n{TEST_SECRET}\n", id="one per line"),
        pytest.param(f"{OTHER_SECRET},{TEST_SECRET}", id="comma separated"),
    ],
)
def test_secret_keys_file_read(monkeypatch, tmp_path, content):
    path = tmp_path / "keys"
    path.write_text(content)
    monkeypatch.setenv("OSTIARY_ISSUER", "https://auth.example.com")
    monkeypatch.setenv("OSTIARY_SECRET_KEYS_FILE", str(path))
    assert load_settings().keyring() == [OTHER_SECRET.encode(), TEST_SECRET.encode()]


def test_database_url_file_read(monkeypatch, tmp_path):
    path = tmp_path / "db-url"
    path.write_text("postgresql://ostiary:s3cret@db:5432/ostiary\n")
    monkeypatch.setenv("OSTIARY_DATABASE_URL_FILE", str(path))
    monkeypatch.setenv("OSTIARY_SECRET_KEYS", TEST_SECRET)
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "postgresql://ostiary:s3cret@db:5432/ostiary"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)


@pytest.mark.parametrize(
    "plain, file_var, content",
    [
        pytest.param("OSTIARY_SECRET_KEYS", "OSTIARY_SECRET_KEYS_FILE", TEST_SECRET, id="secret keys"),
        pytest.param("OSTIARY_DATABASE_URL", "OSTIARY_DATABASE_URL_FILE", "sqlite:///./other.db", id="database url"),
    ],
)
def test_file_variant_conflicts_with_plain_variable(monkeypatch, tmp_path, plain, file_var, content):
    path = tmp_path / "secret"
    path.write_text(content)
    monkeypatch.setenv("OSTIARY_SECRET_KEYS", TEST_SECRET)
    error = refused(monkeypatch, **{plain: content, file_var: str(path)})
    assert error.name == file_var


@pytest.mark.parametrize("file_var", ["OSTIARY_SECRET_KEYS_FILE", "OSTIARY_DATABASE_URL_FILE"])
def test_unreadable_file_variant_refused(monkeypatch, tmp_path, file_var):
    error = refused(monkeypatch, **{file_var: str(tmp_path / "missing"), "OSTIARY_ISSUER": "https://auth.example.com"})
    assert error.name == file_var


# -- lifetimes and other values ----------------------------------------------------------------


def test_access_token_ttl_default_600():
    assert load_settings().access_token_ttl == 600


@pytest.mark.parametrize("value", [pytest.param("30", id="minimum"), pytest.param(str(MAX_ACCESS_TOKEN_TTL), id="one hour")])
def test_access_token_ttl_within_bounds_accepted(monkeypatch, value):
    monkeypatch.setenv("OSTIARY_ACCESS_TOKEN_TTL", value)
    assert load_settings().access_token_ttl == int(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("3601", id="over one hour"),
        pytest.param("86400", id="a day"),
        pytest.param("29", id="under 30 s"),
        pytest.param("0", id="zero"),
        pytest.param("-5", id="negative"),
        pytest.param("ten", id="not a number"),
    ],
)
def test_access_token_ttl_never_over_one_hour(monkeypatch, value):
    assert refused(monkeypatch, OSTIARY_ACCESS_TOKEN_TTL=value).name == "OSTIARY_ACCESS_TOKEN_TTL"


@pytest.mark.parametrize(
    "env, name",
    [
        pytest.param({"OSTIARY_DATABASE_URL": "mysql://db/ostiary"}, "OSTIARY_DATABASE_URL", id="unsupported database"),
        pytest.param({"OSTIARY_SIGNING_ALG": "HS256"}, "OSTIARY_SIGNING_ALG", id="symmetric signing algorithm"),
        pytest.param({"OSTIARY_JWKS_MAX_AGE": "-1"}, "OSTIARY_JWKS_MAX_AGE", id="negative JWKS max-age"),
        pytest.param({"OSTIARY_KEY_ROTATION_PERIOD": "0"}, "OSTIARY_KEY_ROTATION_PERIOD", id="zero rotation period"),
        pytest.param({"OSTIARY_SESSION_IDLE_TIMEOUT": "0"}, "OSTIARY_SESSION_IDLE_TIMEOUT", id="zero idle timeout"),
        pytest.param(
            {"OSTIARY_SESSION_IDLE_TIMEOUT": "7200", "OSTIARY_SESSION_ABSOLUTE_TIMEOUT": "3600"},
            "OSTIARY_SESSION_IDLE_TIMEOUT",
            id="idle timeout longer than absolute",
        ),
        pytest.param({"OSTIARY_LOG_LEVEL": "LOUD"}, "OSTIARY_LOG_LEVEL", id="unknown log level"),
    ],
)
def test_invalid_setting_names_its_variable(monkeypatch, env, name):
    assert refused(monkeypatch, **env).name == name


def test_defaults_match_the_design():
    settings = load_settings()
    assert settings.issuer == "http://127.0.0.1:8000"
    assert settings.key_rotation_period == 30 * 24 * 3600
    assert settings.signing_alg == "RS256"
    assert (settings.session_idle_timeout, settings.session_absolute_timeout) == (30 * 60, 12 * 3600)


# -- startup -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, name",
    [
        pytest.param({"OSTIARY_ISSUER": "https://auth.example.com/"}, "OSTIARY_ISSUER", id="bad issuer"),
        pytest.param({"OSTIARY_ISSUER": "https://auth.example.com"}, "OSTIARY_SECRET_KEYS", id="no keyring in production"),
        pytest.param({"OSTIARY_ACCESS_TOKEN_TTL": "7200"}, "OSTIARY_ACCESS_TOKEN_TTL", id="token lifetime over one hour"),
    ],
)
def test_serve_with_invalid_setting_exits_78_with_one_line(tmp_path, env, name):
    base = clean_env(PYTHONPATH=str(ROOT), OSTIARY_DATABASE_URL=f"sqlite:///{tmp_path / 'ostiary.db'}", **env)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "8"],
        env=base,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78  # EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert not (tmp_path / "ostiary.db").exists()  # stopped before touching anything
