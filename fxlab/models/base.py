"""The base of fxlab's built-in models: it remembers the constructor arguments ``fxlab_arch`` reports."""

from __future__ import annotations

import copy
import inspect
from typing import Any, ClassVar

from torch import nn


def _plain(value: Any) -> Any:
    """Tuples as lists, so that kwargs compare and save the same whichever sequence was given."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


class SeedModel(nn.Module):
    """Base of the built-in models (seed MLPs and CNNs): remembers the constructor arguments that ``fxlab_arch`` reports."""

    arch_name: ClassVar[str] = ""

    def _remember(self, **kwargs: Any) -> None:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        self._fxlab_kwargs = {k: _plain(v) for k, v in kwargs.items()
                              if k not in defaults or _plain(v) != _plain(defaults[k])}

    @property
    def fxlab_arch(self) -> tuple[str, dict[str, Any]] | None:
        """``(name, kwargs)``: the seed model's name and its non-default constructor arguments."""
        kwargs = self.__dict__.get("_fxlab_kwargs")
        return None if kwargs is None else (self.arch_name, copy.deepcopy(kwargs))
