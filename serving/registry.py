"""Versioned adapter registry: the single source of truth for which adapter serves which tenant.

Layout under the data home:

    adapters/registry.json          the pointers and version records (written atomically)
    adapters/<tenant>/v<N>/         one immutable PEFT dir per published version

Writers (the CLI, the scheduler, the gateway when a load fails) take a file lock, read, change,
and atomically replace registry.json; readers never lock. Version numbers only grow, so every
version has its own directory and its own vLLM name `<tenant>@v<N>`: vLLM's caches (keyed by
name, int id and path) can never serve stale weights. Rollback moves the pointer back to an
existing, untouched version directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock

from .errors import AdapterValidationError, RegistryError
from .validate import ADAPTER_WEIGHTS, validate_adapter

SCHEMA = 1
REGISTRY_FILE = "registry.json"
META_FILE = "bakehouse-adapter.json"
# The baker's "bakehouse wrote this output" marker: not copied, so `bake -o` can never take a
# published version directory for its own output and replace it.
_OUTPUT_MARKER = ".bakehouse-output.json"
_STAGING = re.compile(r"^\.incoming-(?:(\d+)-)?[a-z0-9_]{8}$")  # mkdtemp's; no pid: from before it was named
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_tenant_name(name: str) -> str:
    """Tenant names become directory names and vLLM model names: keep them boring."""
    if not isinstance(name, str) or not _TENANT.fullmatch(name):  # `$` would accept "alice\n"
        raise RegistryError(
            f"invalid tenant name {name!r}: use 1-63 of a-z 0-9 _ - (starting with a letter or digit)"
        )
    return name


def model_name(tenant: str, version: int) -> str:
    """The name a version is loaded under in vLLM (never reused for other weights)."""
    return f"{tenant}@v{version}"


@dataclass
class Version:
    tenant: str
    version: int
    created: float
    rank: int
    target_modules: list[str]
    sha256: str
    source: str  # where it was published from (for humans; never served)
    status: str = "ready"  # ready | failed (the engine refused it)
    error: str | None = None

    @property
    def name(self) -> str:
        return model_name(self.tenant, self.version)


@dataclass
class TenantAdapters:
    current: int | None = None  # None: the base model serves this tenant
    previous: int | None = None  # where a failed load falls back to
    versions: dict[int, Version] = field(default_factory=dict)

    @property
    def served(self) -> Version | None:
        """The version the pointer names (None: the base)."""
        return self.versions[self.current] if self.current is not None else None


def served(state: dict[str, TenantAdapters], tenant: str) -> Version | None:
    """The version `tenant` is pointed at in a loaded registry state (None: the base)."""
    t = state.get(tenant)
    return t.served if t else None


class Registry:
    def __init__(self, home: Path):
        self.root = Path(home) / "adapters"
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / REGISTRY_FILE
        self._lock = FileLock(str(self.root / ".registry.lock"))

    # -- reading (no lock: the file is only ever replaced whole) ----------------------------

    def load(self) -> dict[str, TenantAdapters]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RegistryError(f"cannot read {self.path}: {e}") from e
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            got = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
            raise RegistryError(f"{self.path}: unsupported schema {got!r}")
        out = {}
        try:
            for tenant, t in raw.get("tenants", {}).items():
                versions = {int(v): Version(**rec) for v, rec in t.get("versions", {}).items()}
                pointers = (t.get("current"), t.get("previous"))
                if not all(p is None or (type(p) is int and p in versions) for p in pointers):
                    raise ValueError(f"tenant {tenant!r} points at {pointers}, not at one of its versions")
                out[tenant] = TenantAdapters(*pointers, versions)
        except (AttributeError, TypeError, ValueError) as e:
            raise RegistryError(f"{self.path} is not a registry of the expected shape: {e}") from e
        return out

    def stamp(self) -> tuple[int, int, int] | None:
        """Cheap change detector for pollers: (inode, mtime_ns, size) of registry.json."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self, tenant: str) -> Version | None:
        return served(self.load(), tenant)

    def version_dir(self, tenant: str, version: int) -> Path:
        return self.root / tenant / f"v{version}"

    # -- writing ---------------------------------------------------------------------------

    def _write(self, state: dict[str, TenantAdapters]) -> None:
        raw = {
            "schema": SCHEMA,
            "updated": time.time(),
            "tenants": {
                name: {
                    "current": t.current,
                    "previous": t.previous,
                    "versions": {str(v): asdict(rec) for v, rec in sorted(t.versions.items())},
                }
                for name, t in sorted(state.items())
            },
        }
        fd, tmp = tempfile.mkstemp(prefix=".registry.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(raw, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def publish(self, tenant: str, src: Path, base_dir: Path, max_rank: int) -> Version:
        """Validate `src`, copy it to adapters/<tenant>/v<N>/ atomically, point the tenant at it.

        Nothing changes if validation fails. The running gateway notices the new pointer, loads
        `<tenant>@v<N>` into vLLM and only then routes to it.
        """
        check_tenant_name(tenant)
        src = Path(src)
        if not src.is_dir():
            raise RegistryError(f"adapter directory not found: {src}")
        tdir = self.root / tenant
        tdir.mkdir(parents=True, exist_ok=True)
        _sweep_staging(tdir)
        staging = Path(tempfile.mkdtemp(prefix=f".incoming-{os.getpid()}-", dir=tdir))
        try:
            inside = src.resolve()
            for f in sorted(src.iterdir()):  # top-level files only: config, weights, notes
                if f.is_symlink() and not f.resolve().is_relative_to(inside):
                    raise RegistryError(f"{f} is a symlink out of the adapter directory "
                                        f"(to {f.resolve()}): refusing to publish it")
                if f.is_file() and f.name != _OUTPUT_MARKER:
                    shutil.copy2(f, staging / f.name)
            # Validate the copy, not the source: what we checked is exactly what will be served.
            try:
                info = validate_adapter(staging, base_dir, max_rank)
            except AdapterValidationError as e:  # name the user's dir, not our staging copy
                raise AdapterValidationError(str(e).replace(str(staging), str(src))) from e
            digest = _sha256(staging / ADAPTER_WEIGHTS)
            with self._lock:
                state = self.load()
                t = state.setdefault(tenant, TenantAdapters())
                on_disk = [int(p.name[1:]) for p in tdir.glob("v*") if p.name[1:].isdigit()]
                n = max([0, *t.versions, *on_disk]) + 1  # never reuse a number, even a lost one
                rec = Version(
                    tenant=tenant,
                    version=n,
                    created=time.time(),
                    rank=info.rank,
                    target_modules=list(info.target_modules),
                    sha256=digest,
                    source=str(src.resolve()),
                )
                (staging / META_FILE).write_text(json.dumps(asdict(rec), indent=2))
                os.chmod(staging, 0o755)
                vdir = self.version_dir(tenant, n)
                _rename_new(staging, vdir)
                t.versions[n] = rec
                t.previous, t.current = t.current, n
                try:
                    self._write(state)
                except BaseException:  # the pointer did not move: the copy must not stay either
                    shutil.rmtree(vdir, ignore_errors=True)
                    raise
            return rec
        except OSError as e:  # a full disk, a read-only home: nothing was changed
            raise RegistryError(f"could not publish {src} for {tenant!r}: {e}; the registry is unchanged") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def rollback(self, tenant: str, version: int) -> Version:
        """Point `tenant` at an earlier (or any existing, healthy) version."""
        with self._lock:
            state = self.load()
            t = state.get(tenant)
            if t is None or not t.versions:
                raise RegistryError(f"tenant {tenant!r} has no published adapters")
            rec = t.versions.get(int(version))
            if rec is None:
                have = ", ".join(f"v{v}" for v in sorted(t.versions))
                raise RegistryError(f"tenant {tenant!r} has no version v{version} (has {have})")
            if rec.status == "failed":
                raise RegistryError(f"{rec.name} failed to load earlier ({rec.error}); not rolling back to it")
            if not self.version_dir(tenant, rec.version).is_dir():
                raise RegistryError(f"{rec.name}: directory {self.version_dir(tenant, rec.version)} is gone")
            if t.current != rec.version:
                t.previous, t.current = t.current, rec.version
                self._write(state)
            return rec

    def unpoint(self, tenant: str) -> None:
        """Serve `tenant` from the base model again (its versions stay, for a later rollback)."""
        with self._lock:
            state = self.load()
            t = state.get(tenant)
            if t is None or t.current is None:
                return
            t.previous, t.current = t.current, None
            self._write(state)

    def mark_failed(self, tenant: str, version: int, error: str) -> int | None:
        """The engine refused `<tenant>@v<version>`: record why and, if it is the current pointer,
        fall back to the previous one. Returns the tenant's pointer afterwards."""
        with self._lock:
            state = self.load()
            t = state.get(tenant)
            if t is None or version not in t.versions:
                return None
            t.versions[version].status = "failed"
            t.versions[version].error = error[:500]
            if t.current == version:
                prev = t.previous
                ok = prev is not None and prev in t.versions and t.versions[prev].status == "ready"
                t.current, t.previous = (prev if ok else None), None
            self._write(state)
            return t.current


def _rename_new(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, which must not exist: os.rename silently replaces an empty directory
    (the caller holds the registry lock, so nothing appears in between)."""
    if dst.exists() or dst.is_symlink():
        raise RegistryError(f"refusing to publish into {dst}: it already exists")
    os.rename(src, dst)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _sweep_staging(tdir: Path) -> None:
    """Remove `.incoming-PID-*` staging dirs whose publisher is gone (a killed publish)."""
    for p in tdir.iterdir():
        m = _STAGING.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and not (m.group(1) and _alive(int(m.group(1)))):
            shutil.rmtree(p, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
