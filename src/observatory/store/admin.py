"""Projects, API keys, custom prices and the audit log."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from observatory.model import ApiKey, ModelPrice, Project, Role
from observatory.store.schema import api_keys, audit_log, model_prices, projects

KEY_PREFIX = "obs_"


class NotFound(LookupError):
    """The named object does not exist (in this project)."""


class Conflict(ValueError):
    """The object already exists."""


def now() -> datetime:
    return datetime.now(tz=UTC)


def aware(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite returns naive ones; all are stored in UTC)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# --- projects -----------------------------------------------------------------------------------


def _project(row: RowMapping) -> Project:
    return Project(
        project_id=row["project_id"],
        name=row["name"],
        created_at=aware(row["created_at"]) or now(),
        settings=orjson.loads(row["settings"] or "{}"),
    )


def create_project(conn: Connection, name: str) -> Project:
    try:
        with conn.begin_nested():
            result = conn.execute(
                insert(projects).values(name=name, created_at=now(), settings="{}")
            )
    except IntegrityError as exc:
        raise Conflict(f"project {name!r} already exists") from exc
    project_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    return get_project(conn, project_id=project_id)


def get_project(
    conn: Connection, *, project_id: int | None = None, name: str | None = None
) -> Project:
    query = select(projects)
    if project_id is not None:
        query = query.where(projects.c.project_id == project_id)
    else:
        query = query.where(projects.c.name == name)
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"project {name or project_id!r} does not exist")
    return _project(row)


def list_projects(conn: Connection) -> list[Project]:
    rows = conn.execute(select(projects).order_by(projects.c.project_id)).mappings()
    return [_project(r) for r in rows]


def count_projects(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(projects)).scalar_one())


def update_project_settings(conn: Connection, project_id: int, settings: dict[str, Any]) -> None:
    conn.execute(
        update(projects)
        .where(projects.c.project_id == project_id)
        .values(settings=orjson.dumps(settings).decode())
    )


# --- keys ---------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    """Keys are 240-bit random strings, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def _api_key(row: RowMapping) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        project_id=row["project_id"],
        project_name=row["project_name"],
        name=row["name"],
        role=Role(row["role"]),
        key_prefix=row["key_prefix"],
        created_at=aware(row["created_at"]) or now(),
        expires_at=aware(row["expires_at"]),
        revoked_at=aware(row["revoked_at"]),
        last_used_at=aware(row["last_used_at"]),
    )


def _key_select() -> Any:
    return select(api_keys, projects.c.name.label("project_name")).join(
        projects, projects.c.project_id == api_keys.c.project_id
    )


def create_key(
    conn: Connection,
    project_id: int,
    role: Role,
    name: str = "",
    expires_at: datetime | None = None,
    key: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; return it and the secret, which is shown this once and never stored."""
    secret = key or generate_key()
    result = conn.execute(
        insert(api_keys).values(
            project_id=project_id,
            name=name,
            role=role.value,
            key_prefix=secret[:12],
            key_hash=hash_key(secret),
            created_at=now(),
            expires_at=expires_at,
        )
    )
    key_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    row = conn.execute(_key_select().where(api_keys.c.key_id == key_id)).mappings().one()
    return _api_key(row), secret


def authenticate(conn: Connection, secret: str) -> ApiKey | None:
    """The key a secret belongs to, if it exists, is not revoked and has not expired."""
    digest = hash_key(secret)
    row = conn.execute(_key_select().where(api_keys.c.key_hash == digest)).mappings().first()
    if row is None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    key = _api_key(row)
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now()):
        return None
    return key


def key_state(conn: Connection, secret: str) -> str:
    """Why a secret fails: "unknown", "revoked", "expired" or "valid" (for the audit log)."""
    row = (
        conn.execute(select(api_keys).where(api_keys.c.key_hash == hash_key(secret)))
        .mappings()
        .first()
    )
    if row is None:
        return "unknown"
    if row["revoked_at"] is not None:
        return "revoked"
    expires = aware(row["expires_at"])
    if expires is not None and expires <= now():
        return "expired"
    return "valid"


def list_keys(conn: Connection, project_id: int | None = None) -> list[ApiKey]:
    query = _key_select().order_by(api_keys.c.key_id)
    if project_id is not None:
        query = query.where(api_keys.c.project_id == project_id)
    return [_api_key(r) for r in conn.execute(query).mappings()]


def get_key(conn: Connection, key_id: int) -> ApiKey:
    row = conn.execute(_key_select().where(api_keys.c.key_id == key_id)).mappings().first()
    if row is None:
        raise NotFound(f"key {key_id} does not exist")
    return _api_key(row)


def revoke_key(conn: Connection, key_id: int, project_id: int | None = None) -> ApiKey:
    condition = api_keys.c.key_id == key_id
    if project_id is not None:
        condition = and_(condition, api_keys.c.project_id == project_id)
    result = conn.execute(
        update(api_keys).where(condition, api_keys.c.revoked_at.is_(None)).values(revoked_at=now())
    )
    key = get_key(conn, key_id)
    if project_id is not None and key.project_id != project_id:
        raise NotFound(f"key {key_id} does not exist")
    if result.rowcount == 0 and key.revoked_at is None:
        raise NotFound(f"key {key_id} does not exist")
    return key


def touch_key(conn: Connection, key_id: int) -> None:
    conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(last_used_at=now()))


# --- prices -------------------------------------------------------------------------------------


def _price(row: RowMapping) -> ModelPrice:
    def dec(v: Any) -> Decimal | None:
        return None if v is None else Decimal(str(v))

    return ModelPrice(
        price_id=row["price_id"],
        project_id=row["project_id"],
        provider=row["provider"],
        model=row["model"],
        input_usd_per_mtok=dec(row["input_usd_per_mtok"]) or Decimal(0),
        output_usd_per_mtok=dec(row["output_usd_per_mtok"]) or Decimal(0),
        cache_read_usd_per_mtok=dec(row["cache_read_usd_per_mtok"]),
        cache_write_usd_per_mtok=dec(row["cache_write_usd_per_mtok"]),
    )


def list_prices(conn: Connection, project_id: int) -> list[ModelPrice]:
    rows = conn.execute(
        select(model_prices)
        .where(model_prices.c.project_id == project_id)
        .order_by(model_prices.c.price_id)
    ).mappings()
    return [_price(r) for r in rows]


def set_price(
    conn: Connection,
    project_id: int,
    provider: str,
    model: str,
    input_usd_per_mtok: Decimal,
    output_usd_per_mtok: Decimal,
    cache_read_usd_per_mtok: Decimal | None = None,
    cache_write_usd_per_mtok: Decimal | None = None,
) -> ModelPrice:
    """Create or replace the project's price for (provider, model)."""
    conn.execute(
        delete(model_prices).where(
            model_prices.c.project_id == project_id,
            model_prices.c.provider == provider,
            model_prices.c.model == model,
        )
    )
    result = conn.execute(
        insert(model_prices).values(
            project_id=project_id,
            provider=provider,
            model=model,
            input_usd_per_mtok=input_usd_per_mtok,
            output_usd_per_mtok=output_usd_per_mtok,
            cache_read_usd_per_mtok=cache_read_usd_per_mtok,
            cache_write_usd_per_mtok=cache_write_usd_per_mtok,
            created_at=now(),
        )
    )
    price_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    row = (
        conn.execute(select(model_prices).where(model_prices.c.price_id == price_id))
        .mappings()
        .one()
    )
    return _price(row)


def delete_price(conn: Connection, project_id: int, price_id: int) -> None:
    result = conn.execute(
        delete(model_prices).where(
            model_prices.c.project_id == project_id, model_prices.c.price_id == price_id
        )
    )
    if result.rowcount == 0:
        raise NotFound(f"price {price_id} does not exist")


# --- audit --------------------------------------------------------------------------------------


def record_audit(
    conn: Connection,
    *,
    action: str,
    outcome: str,
    project_id: int | None = None,
    key_id: int | None = None,
    actor: str = "",
    object_type: str = "",
    object_id: str = "",
    remote_addr: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(audit_log).values(
            at=now(),
            project_id=project_id,
            key_id=key_id,
            actor=actor[:64],
            action=action,
            object_type=object_type,
            object_id=str(object_id)[:256],
            remote_addr=remote_addr[:64],
            outcome=outcome,
            details=orjson.dumps(details or {}).decode(),
        )
    )


def list_audit(
    conn: Connection,
    project_id: int | None,
    limit: int = 100,
    before_id: int | None = None,
    *,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """Audit entries, newest first; ``action``/``outcome`` match exactly, ``since`` inclusive."""
    query = select(audit_log).order_by(audit_log.c.audit_id.desc()).limit(limit)
    if project_id is not None:
        query = query.where(audit_log.c.project_id == project_id)
    if before_id is not None:
        query = query.where(audit_log.c.audit_id < before_id)
    if action:
        query = query.where(audit_log.c.action == action)
    if outcome:
        query = query.where(audit_log.c.outcome == outcome)
    if since is not None:
        query = query.where(audit_log.c.at >= since.astimezone(UTC))
    out = []
    for row in conn.execute(query).mappings():
        item = dict(row)
        item["at"] = (aware(item["at"]) or now()).isoformat()
        item["details"] = orjson.loads(item["details"] or "{}")
        out.append(item)
    return out
