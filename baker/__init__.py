"""Prompt Baking: prompts into LoRA weights. Imports nothing else of bakehouse's."""
from .baking import BAKE_FILE, BakeResult, bake
from .config import BakeConfig
from .errors import AdapterError, BakeError, ConfigError, ModelError, OutputError, PromptError
from .verify import Probe, VerifyReport, verification_probes, verify

__all__ = ["bake", "BakeConfig", "BakeResult", "BAKE_FILE", "BakeError", "ConfigError",
           "PromptError", "ModelError", "AdapterError", "OutputError"]
__all__ += ["verify", "verification_probes", "Probe", "VerifyReport"]
