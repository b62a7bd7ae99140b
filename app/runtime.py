"""Everything built once at startup and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.security.secrets import Keyring
from app.services.keys import KeyCache
from app.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keyring: Keyring
    keys: KeyCache
    templates: Environment
    extras: dict[str, Any] = field(default_factory=dict)
