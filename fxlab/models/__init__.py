"""fxlab's own models: the seed MLPs by name, the generic MLP, and recognising either from a state dict.

- :mod:`~fxlab.models.seeds`: the seed models (``build("mymodule")``, :data:`MODELS`, :func:`names`);
- :mod:`~fxlab.models.mlp`: the generic :class:`MLP` rebuilt from a state dict, and :data:`ACTIVATIONS`;
- :mod:`~fxlab.models.recognize`: architectures by name and by a state dict's keys and shapes.

Every one of these models says what it is: ``model.fxlab_arch == (name, kwargs)``.
"""

from __future__ import annotations

from .mlp import ACTIVATIONS, MLP
from .recognize import arch_of, arch_text, build_arch, match_seed, mlp_spec, model_from_state_dict
from .seeds import (
    IMG_SIZE,
    MODELS,
    LinearReluStack,
    MyMNIST,
    MyModule,
    NeuralNetwork,
    SeedModel,
    SimpleNN,
    build,
    names,
)

__all__ = [
    "ACTIVATIONS",
    "IMG_SIZE",
    "MLP",
    "MODELS",
    "LinearReluStack",
    "MyMNIST",
    "MyModule",
    "NeuralNetwork",
    "SeedModel",
    "SimpleNN",
    "arch_of",
    "arch_text",
    "build",
    "build_arch",
    "match_seed",
    "mlp_spec",
    "model_from_state_dict",
    "names",
]
