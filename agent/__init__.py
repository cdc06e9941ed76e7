"""The agent: joins memory -> baker -> serving, and drives them (CLI, runtime loop)."""
