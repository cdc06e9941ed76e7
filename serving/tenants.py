"""Tenants and their API keys. Keys are shown once and stored only as salted sha256 hashes.

A key looks like `bh-<key_id>-<secret>`: the key id finds the tenant in O(1), the secret is
checked against sha256(salt + secret) in constant time. The file is replaced atomically, so the
running gateway (which polls it) sees a tenant added by the CLI within a poll interval.

Per-tenant settings live beside the key: `record_episodes` (default on) says whether the
gateway queues the tenant's conversations as episodes (episodes.py).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from filelock import FileLock

from .errors import TenantError
from .registry import check_tenant_name

SCHEMA = 1
KEY_PREFIX = "bh"


@dataclass(frozen=True)
class Tenant:
    name: str
    key_id: str  # public part of the key, safe to show
    salt: str
    key_hash: str
    created: float
    record_episodes: bool = True  # the gateway queues this tenant's conversations (episodes.py)


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class TenantStore:
    def __init__(self, home: Path):
        self.dir = Path(home) / "serving"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "tenants.json"
        self._lock = FileLock(str(self.dir / ".tenants.lock"))

    def load(self) -> dict[str, Tenant]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise TenantError(f"cannot read {self.path}: {e}") from e
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            got = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
            raise TenantError(f"{self.path}: unsupported schema {got!r}")
        try:
            return {name: Tenant(**rec) for name, rec in raw.get("tenants", {}).items()}
        except (AttributeError, TypeError) as e:
            raise TenantError(f"{self.path} is not a tenants file of the expected shape: {e}") from e

    def stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _write(self, tenants: dict[str, Tenant]) -> None:
        raw = {"schema": SCHEMA, "tenants": {n: asdict(t) for n, t in sorted(tenants.items())}}
        fd, tmp = tempfile.mkstemp(prefix=".tenants.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(raw, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, name: str) -> tuple[Tenant, str]:
        """Create a tenant; returns (tenant, api_key). The key cannot be recovered later."""
        try:
            check_tenant_name(name)
        except Exception as e:
            raise TenantError(str(e)) from e
        with self._lock:
            tenants = self.load()
            if name in tenants:
                raise TenantError(f"tenant {name!r} already exists")
            key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
            t = Tenant(name, key_id, salt, _hash(salt, secret), time.time())
            tenants[name] = t
            self._write(tenants)
        return t, f"{KEY_PREFIX}-{key_id}-{secret}"

    def set(self, name: str, *, record_episodes: bool | None = None) -> Tenant:
        """Change a tenant's settings (None: unchanged); returns the tenant as stored."""
        with self._lock:
            tenants = self.load()
            if name not in tenants:
                raise TenantError(f"no tenant named {name!r}")
            t = tenants[name]
            if record_episodes is not None:
                t = replace(t, record_episodes=bool(record_episodes))
            tenants[name] = t
            self._write(tenants)
        return t

    def remove(self, name: str) -> None:
        with self._lock:
            tenants = self.load()
            if name not in tenants:
                raise TenantError(f"no tenant named {name!r}")
            del tenants[name]
            self._write(tenants)


def key_index(tenants: dict[str, Tenant]) -> dict[str, Tenant]:
    """{key_id: tenant}, built once per change of the tenants file."""
    return {t.key_id: t for t in tenants.values()}


def authenticate(index: dict[str, Tenant], key: str | None) -> str | None:
    """The tenant owning `key`, or None. Constant-time on the secret."""
    if not key:
        return None
    parts = key.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    t = index.get(parts[1])
    if t is None:
        return None
    return t.name if hmac.compare_digest(t.key_hash, _hash(t.salt, parts[2])) else None
