"""Signing keys with rollover (docs/decisions.md#a-new-key-is-published-before-it-signs): next ->
active -> retired -> deleted, the JWKS, encryption at rest under the keyring, scheduled rotation
under a lock that replicas share."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from app.infra.db import now, transaction
from app.main import create_app
from app.security.secrets import DecryptError, Keyring
from app.services import jobs, keys
from app.stores import keys as keys_store
from tests.support import (
    PG_URL,
    ROOT,
    TEST_SECRET,
    clean_env,
    create_resource,
    create_user,
    database_text,
    exchange,
    execute,
    login,
    make_settings,
    obtain_code,
    register,
    sql,
)

pytestmark = pytest.mark.anyio

NEW_SECRET = "rotated-secret-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
def discard_keys(fresh_keys):
    """For tests that leave keys other tests cannot use (ES256, or encrypted under another
    keyring): remove them afterwards; the next app start creates RS256 keys again."""
    yield
    execute(fresh_keys, "DELETE FROM signing_keys")


async def access_token(client, client_id: str) -> str:
    code, verifier, _ = await obtain_code(client, client_id, scope="mcp:read")
    response = await exchange(client, client_id, code, verifier)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def published(client) -> dict:
    response = await client.get("/jwks")
    assert response.status_code == 200
    return response.json()


def verify(token: str, jwks: dict):
    """What a resource server does: verify against the published JWKS (by `kid`)."""
    return jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256", "ES256"])


def rotate(runtime, *, force: bool = True) -> str:
    with transaction(runtime.sessions) as db:
        kid = keys.rotate(db, runtime.settings, runtime.keyring, force=force).kid
    runtime.keys.invalidate()
    return kid


def states(runtime) -> dict[str, str]:
    with runtime.sessions() as db:
        return {k.kid: k.state for k in keys_store.all_keys(db)}


# -- JWKS across rotations ---------------------------------------------------------------------


async def test_old_tokens_verify_across_two_rotations_new_key_signs(fresh_keys, client, runtime, settings):
    create_user(runtime)
    create_resource(runtime)
    reg = await register(client)
    assert (await login(client)).status_code == 303

    first_states = states(runtime)
    k1 = next(k for k, s in first_states.items() if s == "active")
    k2 = next(k for k, s in first_states.items() if s == "next")
    token_1 = await access_token(client, reg["client_id"])
    assert jwt.decode(token_1, KeySet.import_key_set(await published(client))).header["kid"] == k1

    assert rotate(runtime) == k2
    jwks = await published(client)
    token_2 = await access_token(client, reg["client_id"])
    assert verify(token_2, jwks).header["kid"] == k2  # the new active key signs new tokens
    assert verify(token_1, jwks).claims["aud"] == "https://mcp.example.com/mcp"  # the old one still verifies

    second = states(runtime)
    k3 = next(k for k, s in second.items() if s == "next")
    assert rotate(runtime) == k3
    third = states(runtime)
    assert (third[k1], third[k2], third[k3]) == ("retired", "retired", "active")
    assert sorted(third.values()) == ["active", "next", "retired", "retired"]
    jwks = await published(client)
    token_3 = await access_token(client, reg["client_id"])
    assert verify(token_3, jwks).header["kid"] == k3
    for token in (token_1, token_2):  # both retired keys are still published
        verify(token, jwks)

    # Once every token k1 signed has expired (and caches have turned over), k1 goes.
    exp_1 = verify(token_1, jwks).claims["exp"]
    lifetime = keys.retired_key_lifetime(settings)
    assert exp_1 + settings.jwks_max_age < now() + lifetime  # k1 outlives its tokens
    sql(settings, "UPDATE signing_keys SET retired_at = :t WHERE kid = :kid", t=now() - lifetime - 1, kid=k1)
    with transaction(runtime.sessions) as db:
        assert keys.delete_expired(db, settings) == [k1]
    runtime.keys.invalidate()
    jwks = await published(client)
    assert k1 not in {k["kid"] for k in jwks["keys"]}
    with pytest.raises((JoseError, ValueError)):
        verify(token_1, jwks)
    verify(token_2, jwks)


@pytest.mark.parametrize(
    "settings_overrides, kty",
    [
        pytest.param({}, "RSA", id="RS256 default"),
        pytest.param({"signing_alg": "ES256"}, "EC", id="ES256 selectable"),
    ],
)
async def test_jwks_publishes_next_active_retired_with_kid_alg_use(discard_keys, client, runtime, settings, kty):
    rotate(runtime)
    by_kid = states(runtime)
    assert sorted(by_kid.values()) == ["active", "next", "retired"]
    jwks = await published(client)
    assert {k["kid"] for k in jwks["keys"]} == set(by_kid)
    for key in jwks["keys"]:
        assert key["alg"] == settings.signing_alg
        assert key["use"] == "sig"
        assert key["kty"] == kty
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # public members only
    active = next(k for k, s in by_kid.items() if s == "active")
    token = runtime.keys.sign({"sub": "x", "iat": now(), "exp": now() + 60}, typ="at+jwt")
    decoded = verify(token, jwks)
    assert decoded.header == {"alg": settings.signing_alg, "kid": active, "typ": "at+jwt"}


@pytest.mark.parametrize("settings_overrides", [pytest.param({"jwks_max_age": 123}, id="max-age 123")])
async def test_jwks_cache_control_from_settings(client):
    response = await client.get("/jwks")
    assert response.headers["cache-control"] == "public, max-age=123"
    assert response.headers["content-type"].startswith("application/jwk-set+json")


async def test_first_start_creates_one_active_and_one_next_key(fresh_keys, runtime):
    assert sorted(states(runtime).values()) == ["active", "next"]


@pytest.mark.parametrize("settings_overrides", [pytest.param({"jwks_max_age": 1}, id="1 s JWKS max-age")])
async def test_another_replicas_rotation_shows_within_reload_interval(client, runtime, settings):
    before = await published(client)
    with transaction(runtime.sessions) as db:  # as another replica would: this cache is not told
        new_active = keys.rotate(db, settings, runtime.keyring, force=True).kid
    time.sleep(keys.reload_interval(settings) + 0.1)
    after = await published(client)
    assert after != before
    assert after["keys"][0]["kid"] == new_active
    assert runtime.keys.snapshot().active_kid == new_active


async def test_rotate_refused_while_next_key_younger_than_jwks_max_age(fresh_keys, runtime, settings):
    with pytest.raises(keys.RotationRefused):
        rotate(runtime, force=False)
    assert sorted(states(runtime).values()) == ["active", "next"]  # nothing changed
    sql(
        settings,
        "UPDATE signing_keys SET created_at = created_at - :d WHERE state = 'next'",
        d=settings.jwks_max_age + keys.reload_interval(settings) + 1,
    )
    rotate(runtime, force=False)
    assert sorted(states(runtime).values()) == ["active", "next", "retired"]


# -- encryption at rest ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings_overrides",
    [pytest.param({}, id="RS256"), pytest.param({"signing_alg": "ES256"}, id="ES256")],
)
async def test_no_private_key_material_in_clear_in_database(discard_keys, runtime, settings):
    rotate(runtime)  # next, active and retired rows
    dump = database_text(settings.database_url.get_secret_value())
    assert "-----BEGIN" not in dump and "PRIVATE KEY" not in dump
    with runtime.sessions() as db:
        rows = keys_store.all_keys(db)
    assert len(rows) == 3
    for row in rows:
        assert row.private_key_enc.startswith("v1.")  # AES-GCM under the keyring
        private = keys.private_key(row, runtime.keyring).as_dict(private=True)
        secret_members = {m: private[m] for m in ("d", "p", "q", "dp", "dq", "qi") if m in private}
        assert "d" in secret_members
        for member, value in secret_members.items():
            assert value not in dump, f"private member {member} of {row.kid} stored in clear"


async def test_ciphertext_bound_to_its_kid(fresh_keys, runtime, settings):
    with runtime.sessions() as db:
        active, nxt = keys_store.by_state(db, "active")[0], keys_store.by_state(db, "next")[0]
    with pytest.raises(DecryptError):
        runtime.keyring.decrypt(active.private_key_enc, b"signing-key:" + nxt.kid.encode())


async def test_keyring_rotation_old_secret_decrypts_then_rotation_reencrypts(discard_keys, fresh_keys, runtime, settings):
    old, new = Keyring([TEST_SECRET.encode()]), Keyring([NEW_SECRET.encode()])
    with runtime.sessions() as db:
        kids = [k.kid for k in keys_store.all_keys(db)]
    runtime.engine.dispose()

    # The operator puts a new secret first; the old one stays to decrypt.
    rotated_settings = make_settings(fresh_keys, secret_keys=f"{NEW_SECRET},{TEST_SECRET}")
    app = create_app(rotated_settings, run_jobs=False)
    try:
        rt = app.state.runtime
        with rt.sessions() as db:
            rows = keys_store.all_keys(db)
        for row in rows:  # still under the old secret, and readable through the new keyring
            assert not rt.keyring.is_current(row.private_key_enc)
            keys.private_key(row, rt.keyring)
            with pytest.raises(DecryptError):
                new.decrypt(row.private_key_enc, b"signing-key:" + row.kid.encode())
        token = rt.keys.sign({"sub": "x"})
        assert jwt.decode(token, rt.keys.snapshot().keyset).header["kid"] in kids

        rotate(rt)
        with rt.sessions() as db:
            rows = keys_store.all_keys(db)
        assert len(rows) == 3
        for row in rows:  # every key, retired ones too, now under the new secret only
            assert rt.keyring.is_current(row.private_key_enc)
            new.decrypt(row.private_key_enc, b"signing-key:" + row.kid.encode())
            with pytest.raises(DecryptError):
                old.decrypt(row.private_key_enc, b"signing-key:" + row.kid.encode())
    finally:
        app.state.runtime.engine.dispose()

    # The old secret can now leave the keyring.
    app = create_app(make_settings(fresh_keys, secret_keys=NEW_SECRET), run_jobs=False)
    try:
        assert app.state.runtime.keys.sign({"sub": "x"})
    finally:
        app.state.runtime.engine.dispose()


# -- deletion of retired keys ------------------------------------------------------------------


async def test_retired_key_deleted_only_after_max_token_lifetime_plus_jwks_max_age(fresh_keys, client, runtime, settings):
    lifetime = keys.retired_key_lifetime(settings)
    assert lifetime >= settings.max_token_lifetime + settings.jwks_max_age
    # The longest access token (docs/decisions.md#access-tokens-live-at-most-one-hour).
    assert settings.max_token_lifetime >= 3600
    with runtime.sessions() as db:
        old = keys_store.by_state(db, "active")[0].kid
    rotate(runtime)

    t = now()
    sql(
        settings,
        "UPDATE signing_keys SET retired_at = :t WHERE kid = :kid",
        t=t - settings.max_token_lifetime - settings.jwks_max_age + 5,
        kid=old,
    )
    with transaction(runtime.sessions) as db:
        assert keys.delete_expired(db, settings) == []
    assert states(runtime)[old] == "retired"
    assert old in {k["kid"] for k in (await published(client))["keys"]}

    sql(settings, "UPDATE signing_keys SET retired_at = :t WHERE kid = :kid", t=t - lifetime - 1, kid=old)
    with transaction(runtime.sessions) as db:
        assert keys.delete_expired(db, settings) == [old]
    assert old not in states(runtime)


# -- scheduled rotation ------------------------------------------------------------------------


async def test_scheduled_rotation_rotate_if_due(fresh_keys, client, runtime, settings):
    before = states(runtime)
    assert keys.rotate_if_due(runtime.sessions, settings, runtime.keyring) is False  # just activated
    assert states(runtime) == before
    nxt = next(k for k, s in before.items() if s == "next")

    sql(settings, "UPDATE signing_keys SET activated_at = :t WHERE state = 'active'", t=now() - settings.key_rotation_period - 1)
    jobs.run_once(runtime.jobs())  # the job every replica runs on its loop
    after = states(runtime)
    assert after[nxt] == "active"
    assert sorted(after.values()) == ["active", "next", "retired"]
    assert (await published(client))["keys"][0]["kid"] == nxt  # the job refreshed the cache
    assert keys.rotate_if_due(runtime.sessions, settings, runtime.keyring) is False  # once
    assert states(runtime) == after


ROTATE_SCRIPT = """
import sys, time
from sqlalchemy import text
from app.services import keys
from app.infra.db import make_engine, make_sessionmaker
from app.security.secrets import Keyring
from app.settings import Settings

url, start_at, secret = sys.argv[1], float(sys.argv[2]), sys.argv[3]
settings = Settings(issuer="http://127.0.0.1:8000", database_url=url, secret_keys=secret)
factory = make_sessionmaker(make_engine(url))
with factory() as db:
    db.execute(text("SELECT 1"))  # connected before the start line
time.sleep(max(0.0, start_at - time.time()))
print(keys.rotate_if_due(factory, settings, Keyring(settings.keyring())))
"""


@pytest.mark.skipif(not PG_URL, reason="two processes racing on one database: PostgreSQL only")
async def test_concurrent_scheduled_rotation_two_processes_rotates_once(fresh_keys, runtime, settings):
    before = states(runtime)
    sql(settings, "UPDATE signing_keys SET activated_at = :t WHERE state = 'active'", t=now() - settings.key_rotation_period - 1)
    env = clean_env(PYTHONPATH=str(ROOT))
    start_at = str(time.time() + 2.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ROTATE_SCRIPT, fresh_keys, start_at, TEST_SECRET],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["False", "True"]
    after = states(runtime)
    assert sorted(after.values()) == ["active", "next", "retired"]  # one rotation, not two
    assert after[next(k for k, s in before.items() if s == "next")] == "active"
