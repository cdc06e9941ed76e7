"""Domain errors of the baker, in one place. The CLI turns them into one-line messages."""


class BakeError(Exception):
    """A bake, generation or model step could not run; the message names the input or step."""


class ConfigError(BakeError, ValueError):
    """A configuration value is out of range; the message names the field."""


class PromptError(BakeError):
    """The prompt cannot be baked (empty, or longer than the model's context)."""


class ModelError(BakeError):
    """The base model cannot be found or loaded."""


class AdapterError(BakeError):
    """An adapter directory is missing, corrupt or does not fit the base model."""


class OutputError(BakeError):
    """The output path holds something a command may not replace (a foreign folder, a file, or a
    bakehouse output of another kind without --force); the message names the path."""
