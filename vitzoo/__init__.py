"""vitzoo: modern vision backbones in timm's registry, on shared blocks and fused kernels.

`import vitzoo` registers every zoo model; then `timm.create_model("vitzoo_...")` builds it.
"""
from . import models  # noqa: F401  (registers the zoo in timm)
from .models._registry import list_models

__version__ = "0.1.0"
__all__ = ["list_models", "__version__"]
