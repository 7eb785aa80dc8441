"""The modules passes swap in: fused Linear+ReLU, max-pooling, quantized Linears and convs. Printed as what they are."""

from .fused import *  # noqa: F401,F403
from .fused import __all__ as _fused_all
from .lowbit import *  # noqa: F401,F403
from .lowbit import __all__ as _lowbit_all
from .pool import *  # noqa: F401,F403
from .pool import __all__ as _pool_all
from .quantized import *  # noqa: F401,F403
from .quantized import __all__ as _quantized_all
from .quantized_conv import *  # noqa: F401,F403
from .quantized_conv import __all__ as _quantized_conv_all

__all__ = [*_fused_all, *_pool_all, *_quantized_all, *_quantized_conv_all, *_lowbit_all]
