"""Reading weight files: safetensors only (nothing is unpickled), with one-line errors that name the file and the
fix when a file is missing, truncated, corrupted or made for another network."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors in ``path``; ``FileNotFoundError`` / ``ValueError`` in one line when it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the folder is incomplete; save or copy it again")
    try:
        return load_file(path)
    except SafetensorError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"{path} is not a readable safetensors file ({reason}): it is truncated or corrupted; save "
                         "or copy it again") from error


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """``module.load_state_dict`` from ``path`` (strict), refusing weights of another shape or network in one line."""
    state = read_safetensors(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path} does not fit {type(module).__name__} ({detail}); it was saved for another "
                         "network or config") from error
    return module
