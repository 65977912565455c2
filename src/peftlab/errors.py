"""User-facing errors: the CLI prints them as one line, never as a traceback."""

from __future__ import annotations


class PeftlabError(Exception):
    """A mistake the user can fix (bad flag, missing file, unknown model...)."""


class ConfigError(PeftlabError):
    """A config value is wrong: names the field, the bad value and the fix."""

    def __init__(self, field: str, value: object, fix: str):
        self.field, self.value, self.fix = field, value, fix
        shown = repr(value) if isinstance(value, str) else value
        super().__init__(f"{field} = {shown}: {fix}")


class DataError(PeftlabError):
    """The data cannot be used as given (missing column, empty file, bad encoding...)."""


class AssetError(PeftlabError):
    """A model or dataset cannot be found or loaded."""


class AdapterError(PeftlabError):
    """A saved adapter folder cannot be used as it is."""


class TrialPruned(Exception):
    """A tuning trial stopped by its pruner: not a failure, a verdict."""

    def __init__(self, validation: int, value: float):
        self.validation, self.value = validation, value
        super().__init__(f"pruned at validation {validation} (score {value:.4g})")
