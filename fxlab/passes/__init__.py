"""fxlab's built-in passes, one module per family. Importing this registers them by name."""

from .activation import *  # noqa: F401,F403
from .activation import __all__ as _activation
from .cleanup import *  # noqa: F401,F403
from .cleanup import __all__ as _cleanup
from .fusion import *  # noqa: F401,F403
from .fusion import __all__ as _fusion
from .pooling import *  # noqa: F401,F403
from .pooling import __all__ as _pooling
from .quantize import *  # noqa: F401,F403
from .quantize import __all__ as _quantize

__all__ = [*_activation, *_cleanup, *_fusion, *_pooling, *_quantize]
