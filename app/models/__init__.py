"""Typed SQLAlchemy models, one module per aggregate. Alembic owns the schema (migrations/)."""

from app.models.audit import AuditEvent
from app.models.authorization import AuthorizationCode, AuthorizationRequest
from app.models.client import BlockedClient, CimdHostRule, Client, UsedAssertion
from app.models.consent import Consent
from app.models.identity import IdentityProvider, UserIdentity
from app.models.job import JobRun
from app.models.key import SigningKey
from app.models.registration import InitialAccessToken
from app.models.resource import Resource, ResourceScope
from app.models.session import BrowserSession
from app.models.token import RefreshToken, RevokedAccessToken
from app.models.user import PasswordSetupToken, RecoveryCode, User

__all__ = [
    "AuditEvent",
    "AuthorizationCode",
    "AuthorizationRequest",
    "BlockedClient",
    "BrowserSession",
    "CimdHostRule",
    "Client",
    "Consent",
    "IdentityProvider",
    "InitialAccessToken",
    "JobRun",
    "PasswordSetupToken",
    "RecoveryCode",
    "RefreshToken",
    "Resource",
    "ResourceScope",
    "RevokedAccessToken",
    "SigningKey",
    "UsedAssertion",
    "User",
    "UserIdentity",
]
