"""The one Settings object. Every value comes from an ``OSTIARY_*`` environment variable.

Secret settings also accept ``OSTIARY_<NAME>_FILE`` (a path whose content is the value), the way
Docker and Kubernetes mount secrets. Loading settings never writes anything: the development
keyring is created by `ostiary serve` (`ensure_development_keyring`), explicitly.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import stat
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import (
    AfterValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger("ostiary.settings")

# Access tokens never live longer than one hour (docs/decisions.md#access-tokens-live-at-most-one-hour).
MAX_ACCESS_TOKEN_TTL = 3600
MIN_SECRET_LENGTH = 32


class SettingsError(Exception):
    """An invalid setting, with the environment variable that holds it."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def canonical_issuer_problem(value: str) -> str | None:
    """Why ``value`` is not a canonical issuer identifier, or None if it is (RFC 8414 §2)."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "is not a URL"
    if parts.scheme.lower() not in ("https", "http") or not parts.hostname:
        return "must be an absolute https URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain user information"
    # RFC 8414 §2: "a URL that uses the https scheme and has no query or fragment components".
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        return "must not have a query or fragment"
    if parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname):
        return "must use https (plain http is allowed only for a loopback host)"
    canonical_netloc = parts.netloc.lower()
    default_port = {"https": 443, "http": 80}[parts.scheme.lower()]
    if port == default_port:
        canonical_netloc = canonical_netloc.rsplit(":", 1)[0]
    canonical = f"{parts.scheme.lower()}://{canonical_netloc}{parts.path.rstrip('/')}"
    if value != canonical:
        # Clients compare the issuer byte for byte (RFC 8414 §3.3, RFC 9207 §2.4): refuse
        # rather than publish something other than what the operator wrote.
        return f"must be in canonical form (lowercase scheme and host, no default port, no trailing slash): {canonical}"
    return None


def _issuer(value: str) -> str:
    problem = canonical_issuer_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# RFC 8252 §7.1: private-use schemes are reverse-domain names (com.example.app). Shipping MCP
# clients also use short ones; these are accepted by name (OSTIARY_NATIVE_APP_SCHEMES).
NATIVE_APP_SCHEMES = ("cursor", "vscode", "vscode-insiders", "vscodium", "claude", "windsurf", "zed", "raycast")


def _rate(value: str) -> str:
    try:
        parse_many(value)
    except ValueError:
        raise ValueError("must be a rate such as '60/minute'") from None
    return value


def _networks(value: list[str]) -> list[str]:
    for item in value:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return value


def _proxies(value: list[str]) -> list[str]:
    """Forwarded addresses are walked from the right, skipping trusted proxies; trusting every
    address would reach the leftmost entry, which the caller writes
    (docs/decisions.md#forwarded-headers-are-believed-only-from-trusted-proxies)."""
    for item in value:
        if item == "*" or ipaddress.ip_network(item, strict=False).prefixlen == 0:
            raise ValueError(
                f"{item!r} would trust every address, so any caller could choose its own address: "
                "list the addresses or networks of your reverse proxies"
            )
    return value


def _short_rate(value: str) -> str:
    """Failures per username from every address only slow sign-in down: a tier whose window
    were longer than a minute would let anyone lock the account out
    (docs/decisions.md#failed-sign-ins-lock-one-source-and-only-slow-the-rest)."""
    for item in parse_many(value):
        if item.get_expiry() > 60:
            raise ValueError("each tier must count over a minute at most (it only slows sign-in down); e.g. '30/minute'")
    return value


_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def host_pattern(value: str) -> str:
    """A client-host pattern in canonical form, or ValueError: a host name (lower case, IDNA
    A-labels, no trailing dot) or an IP address, which match that host only; or `*.` and a
    host name, which matches every subdomain at any depth but not the name itself
    (docs/decisions.md#cimd-client-host-trust-policy)."""
    text = value.strip().lower()
    wildcard = text.startswith("*.")
    name = (text[2:] if wildcard else text).removesuffix(".")
    if not wildcard:
        try:
            return str(ipaddress.ip_address(name.removeprefix("[").removesuffix("]")))
        except ValueError:
            pass
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{value.strip()!r} is not a host name, an IP address or *.domain")
    return ("*." if wildcard else "") + name


def _host_patterns(value: list[str]) -> list[str]:
    return list(dict.fromkeys(host_pattern(item) for item in value))


def _log_level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return value.upper()


Rate = Annotated[str, AfterValidator(_rate)]  # "60/minute", "5/minute;20/hour" (every part must allow)
ShortRate = Annotated[str, AfterValidator(_rate), AfterValidator(_short_rate)]
Seconds = PositiveInt
CommaList = Annotated[list[str], NoDecode]  # "a, b,c" in the environment
Networks = Annotated[list[str], NoDecode, AfterValidator(_networks)]
Proxies = Annotated[list[str], NoDecode, AfterValidator(_networks), AfterValidator(_proxies)]
HostPatterns = Annotated[list[str], NoDecode, AfterValidator(_host_patterns)]  # "example.com, *.example.com"

# Settings that may come from a file instead (OSTIARY_<NAME>_FILE).
FILE_VARIANTS = ("database_url", "secret_keys", "redis_url")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OSTIARY_", extra="ignore", frozen=True)

    issuer: Annotated[str, AfterValidator(_issuer)] = "http://127.0.0.1:8000"
    database_url: SecretStr = SecretStr("sqlite:///./ostiary.db")
    database_url_file: Path | None = None
    # The keyring: the first secret encrypts and signs; all of them decrypt and verify.
    secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    secret_keys_file: Path | None = None

    access_token_ttl: int = Field(default=600, ge=30, le=MAX_ACCESS_TOKEN_TTL)
    refresh_token_ttl: Seconds = 30 * 24 * 3600
    refresh_grace_period: NonNegativeInt = 30
    authorization_request_ttl: Seconds = 600
    id_token_ttl: Seconds = 600
    # DPoP (RFC 9449): every public client must send a proof, so its tokens are sender-constrained.
    dpop_required_for_public_clients: bool = False
    # RFC 9449 §8: proofs at the token endpoint must carry a nonce this server issued.
    dpop_nonce: bool = False

    signing_alg: Literal["RS256", "ES256"] = "RS256"
    key_rotation_period: Seconds = 30 * 24 * 3600
    jwks_max_age: NonNegativeInt = 600

    session_idle_timeout: Seconds = 30 * 60
    session_absolute_timeout: Seconds = 12 * 3600
    # TOTP for admins: "required" sends an admin without it to enrol before the console;
    # unset means "required" unless the issuer is a loopback address (see admin_mfa_required).
    admin_mfa: Literal["required", "optional"] | None = None

    default_resource: str | None = None
    jobs_interval: Seconds = 60
    log_level: Annotated[str, AfterValidator(_log_level)] = "INFO"

    # Production hardening (see README "Running in production").
    redis_url: SecretStr | None = None  # rate-limit counters shared by replicas
    redis_url_file: Path | None = None
    # Addresses of reverse proxies whose X-Forwarded-For/-Proto/-Host are believed.
    trusted_proxies: Proxies = Field(default_factory=list)
    # Host names besides the issuer's that requests may carry (DNS-rebinding defence).
    extra_hosts: CommaList = Field(default_factory=list)
    max_body: PositiveInt = 1024 * 1024
    max_body_protocol: PositiveInt = 64 * 1024  # /token, /register, /revoke, /introspect
    rate_limits_enabled: bool = True
    # Callers never counted by the per-address and per-client limits: the machine itself
    # (docs/decisions.md#loopback-callers-are-exempt-from-rate-limits).
    rate_limit_exempt: Networks = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    token_rate_per_ip: Rate = "600/minute"
    token_rate_per_client: Rate = "100/minute"  # per client_id and address
    authorize_rate_per_ip: Rate = "120/minute"
    login_rate_per_ip: Rate = "60/minute"
    # False: users sign in only through the identity providers (the password form is not offered).
    local_sign_in: bool = True
    # Failed sign-ins per username and address: each tier a longer wait, the last a lock of that
    # address only; per username from every address: a short wait, never a lock
    # (docs/decisions.md#failed-sign-ins-lock-one-source-and-only-slow-the-rest).
    login_failures_per_source: Rate = "5/minute;10/5minutes;20/hour"
    login_failures_per_user: ShortRate = "30/minute"
    metrics_networks: Networks = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    )
    audit_retention_days: PositiveInt = 365

    # Client registration (RFC 7591): "open", "token" (an initial access token is required,
    # RFC 7591 §3) or "closed".
    registration: Literal["open", "token", "closed"] = "open"
    # Sized for hosted connectors that share outbound addresses.
    registration_rate_per_ip: Rate = "60/minute"
    registration_rate_global: Rate = "1000/minute"
    # Hygiene: dynamically registered clients never used within this long are deleted ...
    prune_unused_clients_after: Seconds = 24 * 3600
    # ... and so are those idle this long with no live refresh token.
    prune_idle_clients_after: Seconds = 90 * 24 * 3600

    # Client ID Metadata Documents: outbound fetching of https client_id URLs.
    cimd_enabled: bool = True
    cimd_timeout: float = Field(default=3.0, gt=0, le=30)
    # Metadata fetches at once, in all and per host; more are refused at once, never queued.
    cimd_max_fetches: PositiveInt = 8
    cimd_max_fetches_per_host: PositiveInt = 2
    cimd_cache_min: NonNegativeInt = 300
    cimd_cache_max: Seconds = 24 * 3600
    # Hosts whose private or loopback addresses may be fetched anyway (tests, development).
    cimd_allowed_hosts: CommaList = Field(default_factory=list)
    # Short private-use redirect URI schemes accepted besides reverse-domain ones (RFC 8252 §7.1).
    native_app_schemes: CommaList = Field(default_factory=lambda: list(NATIVE_APP_SCHEMES))
    # An extra CA bundle to trust when fetching (a test CA, a corporate CA).
    cimd_ca_file: Path | None = None
    # Which hosts may publish metadata documents (docs/decisions.md#cimd-client-host-trust-policy):
    # a deny match refuses; once any allow rule exists (here or in the console), only hosts that
    # match one are accepted. Not to be confused with cimd_allowed_hosts (private addresses).
    cimd_allowed_client_hosts: HostPatterns = Field(default_factory=list)
    cimd_denied_client_hosts: HostPatterns = Field(default_factory=list)

    @field_validator("secret_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
        return value

    @field_validator(
        "cimd_allowed_hosts",
        "cimd_allowed_client_hosts",
        "cimd_denied_client_hosts",
        "trusted_proxies",
        "extra_hosts",
        "metrics_networks",
        "rate_limit_exempt",
        "native_app_schemes",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _files_and_cross_checks(self) -> Settings:
        for name in FILE_VARIANTS:
            path = getattr(self, f"{name}_file")
            if path is None:
                continue
            variable = f"OSTIARY_{name.upper()}"
            if name in self.model_fields_set:
                raise SettingsError(f"{variable}_FILE", f"set either it or {variable}, not both")
            raw = _read_secret_file(f"{variable}_FILE", path)
            value = self._split_keys(raw) if name == "secret_keys" else raw
            object.__setattr__(self, name, [SecretStr(v) for v in value] if name == "secret_keys" else SecretStr(value))
        if self.redis_url is not None and not self.redis_url.get_secret_value().startswith(("redis://", "rediss://")):
            raise SettingsError("OSTIARY_REDIS_URL", "must be a redis:// or rediss:// URL")
        if any(len(key.get_secret_value()) < MIN_SECRET_LENGTH for key in self.secret_keys):
            raise SettingsError("OSTIARY_SECRET_KEYS", f"each secret must be at least {MIN_SECRET_LENGTH} characters long")
        if self.cimd_cache_min > self.cimd_cache_max:
            raise SettingsError("OSTIARY_CIMD_CACHE_MIN", "must not exceed OSTIARY_CIMD_CACHE_MAX")
        if self.session_idle_timeout > self.session_absolute_timeout:
            raise SettingsError("OSTIARY_SESSION_IDLE_TIMEOUT", "must not exceed OSTIARY_SESSION_ABSOLUTE_TIMEOUT")
        if not self.database_url.get_secret_value().startswith(("sqlite", "postgresql")):
            raise SettingsError("OSTIARY_DATABASE_URL", "must be an sqlite:/// or postgresql:// URL")
        return self

    # -- derived values ---------------------------------------------------------------------

    @cached_property
    def issuer_is_loopback(self) -> bool:
        return is_loopback_host(urlsplit(self.issuer).hostname)

    @cached_property
    def admin_mfa_required(self) -> bool:
        # docs/decisions.md#admins-need-totp-unless-the-issuer-is-loopback
        return (self.admin_mfa or ("optional" if self.issuer_is_loopback else "required")) == "required"

    @cached_property
    def is_https(self) -> bool:
        return self.issuer.startswith("https://")

    @cached_property
    def issuer_path(self) -> str:
        return urlsplit(self.issuer).path

    @cached_property
    def is_sqlite(self) -> bool:
        return self.database_url.get_secret_value().startswith("sqlite")

    @cached_property
    def sqlite_path(self) -> Path | None:
        url = self.database_url.get_secret_value()
        if not url.startswith("sqlite:///") or url in ("sqlite://", "sqlite:///:memory:"):
            return None
        return Path(url.removeprefix("sqlite:///").split("?", 1)[0])

    @cached_property
    def development_key_file(self) -> Path | None:
        """Where the development keyring lives: beside the SQLite file, on a loopback issuer."""
        if not self.issuer_is_loopback or self.sqlite_path is None:
            return None
        return self.sqlite_path.with_name(self.sqlite_path.name + ".secret-keys")

    @cached_property
    def max_token_lifetime(self) -> int:
        """The longest any JWT we sign may live: a retired key stays published this long."""
        return max(MAX_ACCESS_TOKEN_TTL, self.id_token_ttl)

    def keyring(self) -> list[bytes]:
        """The secret keys as bytes."""
        if not self.secret_keys:
            raise SettingsError(
                "OSTIARY_SECRET_KEYS", "is not set and there is no development keyring yet (`ostiary serve` creates one)"
            )
        return [k.get_secret_value().encode() for k in self.secret_keys]


def _read_secret_file(name: str, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SettingsError(name, f"cannot read {path}: {exc.strerror}") from None


def _with_development_keyring(settings: Settings) -> Settings:
    """Settings without OSTIARY_SECRET_KEYS: production refuses them; in development (a loopback
    issuer on an SQLite file) they read the keyring beside the database, if there is one yet."""
    if settings.secret_keys:
        return settings
    key_file = settings.development_key_file
    if key_file is None:
        if not settings.issuer_is_loopback:
            reason = "is required when the issuer is not a loopback address (set it or OSTIARY_SECRET_KEYS_FILE)"
        else:
            reason = "is required unless the database is an SQLite file (it is generated beside that file in development)"
        raise SettingsError("OSTIARY_SECRET_KEYS", reason)
    if not key_file.exists():
        return settings
    if key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError("OSTIARY_SECRET_KEYS_FILE", f"{key_file} must be readable by its owner only (chmod 600)")
    keys = [SecretStr(k.strip()) for k in key_file.read_text().split(",") if k.strip()]
    return settings.model_copy(update={"secret_keys": keys})


def ensure_development_keyring(settings: Settings) -> Settings:
    """`ostiary serve`'s explicit step: with no OSTIARY_SECRET_KEYS on a loopback issuer with an
    SQLite file, generate one secret once, into a 0600 file beside the database, so that the
    server works with no setup and keeps its keys readable after a restart."""
    key_file = settings.development_key_file
    if settings.secret_keys or key_file is None or key_file.exists():
        return settings
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    log.warning("generated a development secret key in %s; set OSTIARY_SECRET_KEYS (or _FILE) in production", key_file)
    return _with_development_keyring(settings)


def load_settings(*, keys: bool = True, **overrides: Any) -> Settings:
    """Read the environment; raise SettingsError naming the first bad setting. Writes nothing.
    `keys=False`: for commands that use no secret key (`ostiary migrate`), which then run where
    OSTIARY_SECRET_KEYS is not set."""
    try:
        settings = Settings(**overrides)
        return _with_development_keyring(settings) if keys else settings
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "settings"
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, SettingsError):
            raise ctx_error from None
        raise SettingsError(f"OSTIARY_{field.upper()}", error["msg"].removeprefix("Value error, ")) from None
