"""fxlab's own models: the seed MLPs by name, the generic MLP, and recognising either from a state dict.

- :mod:`~fxlab.models.seeds`: the seed models (``build("mymodule")``, :data:`MODELS`, :func:`names`);
- :mod:`~fxlab.models.cnn`: the CNNs people have next to them (``mnist-cnn``, ``lenet5``);
- :mod:`~fxlab.models.spec`: ``--model`` specs (a name, ``pkg.mod:Class``, ``file.py:Class``) made modules;
- :mod:`~fxlab.models.mlp`: the generic :class:`MLP` rebuilt from a state dict, and :data:`ACTIVATIONS`;
- :mod:`~fxlab.models.recognize`: architectures by name and by a state dict's keys and shapes.

Every one of these models says what it is: ``model.fxlab_arch == (name, kwargs)``.
"""

from __future__ import annotations

from .cnn import CNN_MODELS, LeNet5, MnistCNN
from .mlp import ACTIVATIONS, MLP
from .recognize import arch_of, arch_text, build_arch, match_seed, mlp_spec, model_from_state_dict
from .seeds import (
    IMG_SIZE,
    MODELS,
    SEED_MODELS,
    LinearReluStack,
    MyMNIST,
    MyModule,
    NeuralNetwork,
    SeedModel,
    SimpleNN,
    build,
    names,
    seed_names,
)
from .spec import build_spec, parse_model_args


__all__ = [
    "ACTIVATIONS",
    "CNN_MODELS",
    "LeNet5",
    "MnistCNN",
    "SEED_MODELS",
    "build_spec",
    "parse_model_args",
    "seed_names",
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
