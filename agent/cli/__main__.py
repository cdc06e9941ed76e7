"""`python -m agent.cli ...` is `bakehouse ...` (the runtime's own children start it this way)."""
from . import cli

cli()
