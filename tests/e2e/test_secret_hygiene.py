"""No bearer secret in clear anywhere (docs/decisions.md#bearer-secrets-are-stored-as-keyed-hmacs).

A real `ostiary serve` (its own log captured, at DEBUG) goes through everything that mints or
receives a secret: passwords set by the CLI and by a one-time link, sign-in with TOTP and a
recovery code, a pending consent handle, codes, access/refresh/id tokens and their rotation,
a confidential client's secret, a registration access token (RFC 7592), an initial access
token, revocation, introspection, a replayed code and a reused refresh token. Afterwards the
whole database (every row of every table), the server's log and the audit table contain none
of the raw values the test saw.
"""

from __future__ import annotations

import re

import httpx
import pyotp
import pytest

from tests.e2e.servers import ostiary_cli, ostiary_env, ostiary_server
from tests.support import PASSWORD, REDIRECT, RESOURCE, csrf_from, database_rows, empty_database, free_port, pkce, query

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "the admin passphrase of this run"
LINK_PASSWORD = "a password set through the link"


class Seen:
    """Every secret value the test got hold of, by what it is."""

    def __init__(self):
        self.values: dict[str, str] = {}

    def add(self, what: str, value: str | None) -> str:
        assert value, what
        self.values[f"{what} #{len(self.values)}"] = value
        return value


def sign_in(browser: httpx.Client, username: str, password: str, seen: Seen, *, totp: pyotp.TOTP | None = None) -> None:
    page = browser.get("/login")
    answer = browser.post("/login", data={"username": username, "password": password, "csrf_token": csrf_from(page.text)})
    assert answer.status_code == 303, answer.text[:300]
    if answer.headers["location"].startswith("/login/otp"):
        page = browser.get(answer.headers["location"])
        answer = browser.post("/login/otp", data={"code": totp.now(), "csrf_token": csrf_from(page.text)})
        assert answer.status_code == 303, answer.text[:300]
    for name, value in browser.cookies.items():
        if "session" in name:
            seen.add("session cookie", value)


def authorize(browser: httpx.Client, client_id: str, seen: Seen, scope: str = "openid mcp:read") -> tuple[str, str]:
    verifier, challenge = pkce()
    seen.add("PKCE verifier", verifier)
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
        "code_challenge": challenge, "code_challenge_method": "S256", "resource": RESOURCE,
        "state": "s", "nonce": "n",
    }  # fmt: skip
    answer = browser.get("/authorize", params=params)
    if "/consent/" in answer.headers.get("location", ""):
        handle = answer.headers["location"].rsplit("/", 1)[1]
        seen.add("consent handle", handle)
        page = browser.get(answer.headers["location"])
        answer = browser.post(answer.headers["location"], data={"decision": "allow", "csrf_token": csrf_from(page.text)})
    assert answer.status_code == 302, answer.text[:300]
    return seen.add("authorization code", query(answer.headers["location"])["code"]), verifier


def tokens(response: httpx.Response, seen: Seen) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    for field in ("access_token", "refresh_token", "id_token"):
        if field in body:
            seen.add(field, body[field])
    return body


def test_no_secret_reaches_the_database_or_the_logs(tmp_path):
    seen = Seen()
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    log = tmp_path / "ostiary.log"
    with empty_database(tmp_path, "ostiary_e2e") as database_url:
        env = ostiary_env(issuer, database_url, log_level="DEBUG", registration="open", login_failures_per_user="100/minute")
        seen.add("keyring secret", env["OSTIARY_SECRET_KEYS"])
        ostiary_cli(env, "migrate")
        ostiary_cli(env, "users", "create", "alice", "--password-stdin", stdin=seen.add("password", PASSWORD) + "\n")
        ostiary_cli(
            env, "users", "create", "root", "--admin", "--password-stdin", stdin=seen.add("password", ADMIN_PASSWORD) + "\n"
        )
        ostiary_cli(
            env,
            "resources",
            "add",
            RESOURCE,
            "--name",
            "Notes",
            "--scope",
            "mcp:read=Read",
            "--scope",
            "mcp:write=Write",
            "--default-scope",
            "mcp:read",
        )
        printed = ostiary_cli(env, "clients", "add", "--name", "Resource server", "--confidential", "--introspect-any")
        rs_id = re.search(r"client_id:?\s+(\S+)", printed).group(1)
        rs_secret = seen.add("client secret", re.search(r"client_secret:?\s+(\S+)", printed).group(1))
        initial = seen.add("initial access token", ostiary_cli(env, "clients", "initial-token", "--uses", "2").split()[-1])

        with (
            ostiary_server(env, port, log),
            httpx.Client(base_url=issuer, follow_redirects=False, timeout=10) as alice,
            httpx.Client(base_url=issuer, follow_redirects=False, timeout=10) as root,
        ):
            # Dynamic registration: a public client and a confidential one (secret + RFC 7592 token).
            public = alice.post("/register", json={"redirect_uris": [REDIRECT], "client_name": "Public"}).json()
            seen.add("registration access token", public["registration_access_token"])
            confidential = alice.post(
                "/register",
                json={
                    "redirect_uris": [REDIRECT],
                    "client_name": "Confidential",
                    "token_endpoint_auth_method": "client_secret_post",
                },
            ).json()
            seen.add("client secret", confidential["client_secret"])
            seen.add("registration access token", confidential["registration_access_token"])
            managed = alice.get(
                f"/register/{public['client_id']}", headers={"Authorization": f"Bearer {public['registration_access_token']}"}
            )
            assert managed.status_code == 200

            # The user: sign in, TOTP enrolment, a recovery code.
            sign_in(alice, "alice", PASSWORD, seen)
            page = alice.get("/account/mfa")
            totp_secret = seen.add("TOTP secret", re.search(r'data-secret="([A-Z2-7]+)"', page.text).group(1))
            totp = pyotp.TOTP(totp_secret)
            shown = alice.post("/account/mfa", data={"code": totp.now(), "csrf_token": csrf_from(page.text)})
            codes = re.findall(r"<code>([a-z0-9-]{8,})</code>", shown.text)
            assert codes, shown.text[:500]
            for code in codes:
                seen.add("recovery code", code)

            # Codes and tokens: exchange, rotation, a replayed code, a reused refresh token.
            code, verifier = authorize(alice, public["client_id"], seen)
            first = tokens(
                alice.post(
                    "/token",
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "code_verifier": verifier,
                        "redirect_uri": REDIRECT,
                        "client_id": public["client_id"],
                    },
                ),
                seen,
            )
            assert (
                alice.post(
                    "/token",
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "code_verifier": verifier,
                        "redirect_uri": REDIRECT,
                        "client_id": public["client_id"],
                    },
                ).status_code
                == 400
            )
            code, verifier = authorize(alice, public["client_id"], seen)
            second = tokens(
                alice.post(
                    "/token",
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "code_verifier": verifier,
                        "redirect_uri": REDIRECT,
                        "client_id": public["client_id"],
                    },
                ),
                seen,
            )
            rotated = tokens(
                alice.post(
                    "/token",
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": second["refresh_token"],
                        "client_id": public["client_id"],
                    },
                ),
                seen,
            )
            code, verifier = authorize(alice, confidential["client_id"], seen)
            tokens(
                alice.post(
                    "/token",
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "code_verifier": verifier,
                        "redirect_uri": REDIRECT,
                        "client_id": confidential["client_id"],
                        "client_secret": confidential["client_secret"],
                    },
                ),
                seen,
            )
            assert (
                alice.post("/introspect", data={"token": rotated["access_token"]}, auth=(rs_id, rs_secret)).json()["active"]
                is True
            )
            assert (
                alice.post("/revoke", data={"token": first["refresh_token"], "client_id": public["client_id"]}).status_code == 200
            )
            assert alice.post("/userinfo", headers={"Authorization": f"Bearer {rotated['access_token']}"}).status_code == 200

            # An admin: sign-in (enrolling TOTP first is required only off loopback), a one-time
            # password link, a registration with the initial access token.
            sign_in(root, "root", ADMIN_PASSWORD, seen)
            page = root.get("/admin/users")
            created = root.post(
                "/admin/users", data={"username": "erin", "password_mode": "link", "csrf_token": csrf_from(page.text)}
            )
            link = re.search(r'id="password-link" type="text" readonly value="([^"]+)"', created.text).group(1)
            seen.add("password link", link.rsplit("/", 1)[1])
            with httpx.Client(base_url=issuer, follow_redirects=False, timeout=10) as erin:
                form = erin.get(link)
                done = erin.post(
                    link,
                    data={
                        "password": seen.add("password", LINK_PASSWORD),
                        "repeat_password": LINK_PASSWORD,
                        "csrf_token": csrf_from(form.text),
                    },
                )
                assert done.status_code in (200, 303), done.text[:300]
            with_token = alice.post(
                "/register", json={"redirect_uris": [REDIRECT]}, headers={"Authorization": f"Bearer {initial}"}
            )
            assert with_token.status_code == 201
            seen.add("registration access token", with_token.json()["registration_access_token"])

            # Sign-in with a recovery code, and a failed sign-in with a wrong password.
            with httpx.Client(base_url=issuer, follow_redirects=False, timeout=10) as other:
                page = other.get("/login")
                answer = other.post(
                    "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_from(page.text)}
                )
                page = other.get(answer.headers["location"])
                assert other.post("/login/otp", data={"code": codes[0], "csrf_token": csrf_from(page.text)}).status_code == 303
            with httpx.Client(base_url=issuer, follow_redirects=False, timeout=10) as stranger:
                page = stranger.get("/login")
                wrong = seen.add("wrong password", "an attempted but wrong password")
                assert (
                    stranger.post(
                        "/login", data={"username": "alice", "password": wrong, "csrf_token": csrf_from(page.text)}
                    ).status_code
                    == 401
                )

        rows = database_rows(database_url)
    database = "\n".join(f"{table}: {row!r}" for table, table_rows in rows.items() for row in table_rows)
    audit = "\n".join(repr(row) for row in rows["audit_events"])
    logs = log.read_text(errors="replace")
    assert len(rows["audit_events"]) > 20 and "token.refreshed" in audit and "code.replayed" in audit
    assert '"logger":"ostiary.audit"' in logs and '"logger":"ostiary.access"' in logs

    leaks = [
        f"{what} in {where}"
        for what, value in seen.values.items()
        for where, text in (("the database", database), ("the log", logs), ("the audit table", audit))
        if value in text
    ]
    assert leaks == [], leaks
