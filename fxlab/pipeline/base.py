"""The pass base class and the pass registry.

A pass is a small config object (a dataclass of its options) with a registered ``name``, a
``kind`` (``"exact"``, ``"approximate"`` or ``"changes"``) and ``call(gm)``. It is a
``torch.fx.passes.infra.pass_base.PassBase``, so a list of fxlab passes also runs under
torch's own ``PassManager``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, ClassVar

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..errors import FxlabError, PassError, PipelineError, did_you_mean

KINDS = ("exact", "approximate", "changes")

_REGISTRY: dict[str, type[Pass]] = {}


class Pass(PassBase):
    """Base class of every fxlab pass.

    Subclass it as a dataclass whose fields are the pass's options, set ``name`` and
    ``kind``, implement ``call(gm)`` (return the new ``GraphModule`` or a ``PassResult``),
    and decorate with :func:`register_pass` to make the pass available by name in pipeline
    text. ``budget`` (accuracy points) is the allowed accuracy drop of an ``approximate`` pass.

    >>> import fxlab, torch
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Halve(fxlab.Pass):
    ...     name = "halve-output"
    ...     kind = "changes"
    ...     def call(self, gm):
    ...         out = next(n for n in gm.graph.nodes if n.op == "output")
    ...         with gm.graph.inserting_before(out):
    ...             half = gm.graph.call_function(torch.mul, (out.args[0], 0.5))
    ...         out.args = (half,)
    ...         return gm
    >>> gm = fxlab.apply(torch.nn.Linear(2, 2), [Halve()])
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "exact"
    budget: ClassVar[float | None] = None
    #: True for a pass that leaves observers in the graph: whoever runs the pipeline (the caller,
    #: ``fxlab.verify``, ``fxlab.load`` rebuilding a saved model) runs calibration batches through
    #: the graph after it, before the next pass.
    calibrates: ClassVar[bool] = False

    def call(self, graph_module: fx.GraphModule) -> fx.GraphModule | PassResult:  # noqa: D102
        raise NotImplementedError(f"{type(self).__name__} must implement call(gm)")

    def __call__(self, graph_module: fx.GraphModule) -> PassResult:
        """Run the pass; returns a ``PassResult`` as torch's ``PassBase`` does."""
        self.requires(graph_module)
        try:
            result = self.call(graph_module)
        except PassError:
            raise
        except FxlabError as exc:
            raise PassError(f"{self.label()}: {exc}") from exc
        if isinstance(result, fx.GraphModule):
            result = PassResult(result, True)
        elif not isinstance(result, PassResult):
            raise PassError(
                f"{self.label()}: call() returned {type(result).__name__}; "
                "return the GraphModule or a PassResult"
            )
        self.ensures(result.graph_module)
        return result

    # -- options and text -------------------------------------------------------------------

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass's docstring."""
        return (inspect.getdoc(cls) or "").strip().splitlines()[0] if cls.__doc__ else ""

    def options(self) -> dict[str, Any]:
        """The pass's options as a dict (its dataclass fields)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def label(self) -> str:
        """The pass's name for messages: its registered name, else its class name."""
        return self.name or type(self).__name__

    def to_text(self) -> str:
        """This pass in pipeline text (the inverse of :func:`parse_pipeline`)."""
        from .text import format_pass

        return format_pass(self)

    def __str__(self) -> str:
        try:
            return self.to_text()
        except PipelineError:
            return repr(self)


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a ``Pass`` subclass available by its ``name`` in pipeline text.

    Apply it outside ``@dataclass``. Registering a second class under a taken name is an error.
    """
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise PipelineError(f"register_pass expects a subclass of fxlab.Pass, got {cls!r}")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", cls.name or ""):
        raise PipelineError(
            f"{cls.__name__}.name must be lowercase words joined by '-' (e.g. 'fuse-linear-relu'), "
            f"got {cls.name!r}"
        )
    if cls.kind not in KINDS:
        raise PipelineError(f"{cls.__name__}.kind must be one of {', '.join(KINDS)}; got {cls.kind!r}")
    other = _REGISTRY.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise PipelineError(f"pass name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    """Name → pass class, for every registered pass (the built-in ones included)."""
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under ``name``."""
    if not isinstance(name, str):
        raise PipelineError(f"a pass name is a string such as 'fuse-linear-relu', got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PipelineError(
            f"unknown pass {name!r}{did_you_mean(name, _REGISTRY)}; known passes: {', '.join(sorted(_REGISTRY))}"
        ) from None


