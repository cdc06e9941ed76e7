"""`bakehouse bake`, `bakehouse generate`, `bakehouse config`, `bakehouse demo`."""
from __future__ import annotations

from . import cli  # noqa: F401
