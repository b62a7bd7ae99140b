from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.models import Client


def get(db: Session, client_id: str) -> Client | None:
    return db.get(Client, client_id)


def all_clients(db: Session) -> list[Client]:
    return list(db.scalars(select(Client).order_by(Client.created_at.desc(), Client.id)))


def add(db: Session, client: Client) -> Client:
    db.add(client)
    db.flush()
    return client


def remove(db: Session, client_id: str) -> int:
    return db.execute(delete(Client).where(Client.id == client_id)).rowcount


def mark_used(db: Session, client_id: str, at: int) -> None:
    db.execute(update(Client).where(Client.id == client_id).values(last_used_at=at))
