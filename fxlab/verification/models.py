"""What ``verify`` checks: a module as given, a seed model by name, or a model file."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ..errors import VerifyError, did_you_mean

log = logging.getLogger(__name__)

__all__ = ["resolve_model"]


def resolve_model(
    model: nn.Module | str | os.PathLike[str],
    *,
    data: Any,
    device: torch.device,
    trust: bool = False,
    architecture: str | None = None,
    progress: bool = False,
) -> tuple[nn.Module, str]:
    """(module, display name) from a module, a seed model name, or a model file.

    A seed model name (``"mymodule"``) that is not also a file gives the model trained with the
    default recipe (``fxlab.train.pretrained``: cached after the first time); a file is read by
    ``fxlab.serialization.load_file`` (``trust`` and ``architecture`` are passed on). Anything else raises
    ``VerifyError`` listing the seed models.
    """
    if isinstance(model, nn.Module):
        return model, type(model).__name__
    if not isinstance(model, (str, os.PathLike)):
        raise VerifyError(f"verify expects an nn.Module, a seed model name or a model file, got {type(model).__name__}")
    from ..models import names

    text = os.fspath(model)
    if isinstance(model, str) and text in names() and not os.path.exists(text):
        from .. import train

        log.info("using %s trained with the default recipe (cached after the first time)", text)
        return train.pretrained(text, data=data, device=device, progress=progress), text
    if os.path.exists(text):
        from ..serialization import load_file

        kwargs: dict[str, Any] = {"trust": trust}
        if architecture is not None:
            kwargs["model"] = architecture
        loaded = load_file(text, **kwargs)
        log.info("verifying %s", loaded.description)
        return loaded.model, text
    raise VerifyError(
        f"no model {text!r}: not a file, nor a seed model name{did_you_mean(text, names())}; "
        f"seed models: {', '.join(names())}"
    )
