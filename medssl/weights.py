"""Reading weight files without running code from them.

``.safetensors`` holds raw tensors and a JSON header: nothing to execute. Torch's own
``.bin``/``.pt``/``.pth`` files are pickles, read only with ``weights_only=True`` (torch's
restricted unpickler, which builds tensors and plain containers and refuses every other
global). Anything unreadable, truncated or not a weights file is one ``ValueError`` naming
the file and the recipe key, never its contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_weights"]


def load_weights(path: str | Path, what: str) -> Any:
    """The tensors of ``path``: a dict for safetensors, a weights-only unpickled object else.

    ``what`` names the recipe key or file role (``backbone.init``, ``head_init``) in errors.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{what}: {str(file)!r} is not a regular file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as exc:  # SafetensorError, OSError, a header that is no JSON
            raise ValueError(
                f"{what}: {str(file)!r} is not a readable safetensors file ({type(exc).__name__})"
            ) from None
    import torch

    try:
        return torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (a refused global), EOFError, zip errors
        raise ValueError(
            f"{what}: {str(file)!r} is not a weights-only torch file; medssl does not unpickle "
            f"other objects ({type(exc).__name__}); convert it to .safetensors"
        ) from None
