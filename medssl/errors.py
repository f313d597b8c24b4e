"""The recipe error every layer raises: a leaf module, so that modules :mod:`medssl.config`
imports (such as :mod:`medssl.engine.adapt`) can raise it without importing config back."""

from __future__ import annotations

__all__ = ["RecipeError"]


class RecipeError(ValueError):
    """A recipe is invalid; the message names the file and the key path."""

    def __init__(self, message: str, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        # Messages built from pydantic errors already start with their key path.
        prefix = key if key and not message.startswith((f"{key}:", f"{key}.")) else None
        where = ": ".join(part for part in (source, prefix) if part)
        super().__init__(f"{where}: {message}" if where else message)
