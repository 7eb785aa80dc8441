"""fxlab's built-in passes, one module per family. Importing this registers them by name."""

from .activation import InsertActivation, InsertRelu

__all__ = ["InsertActivation", "InsertRelu"]
