"""The zoo's families, one module each; importing this package registers them all in timm.

Every public module in this folder is a family file and is imported here, so adding a family
is adding a file. Module names never coincide with timm's (a test checks it).
"""
import importlib
import pkgutil

from ._base import HierarchicalBackbone, IsotropicBackbone, ZooModel, build_zoo_model
from ._registry import list_models, register_model

FAMILY_MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
for _name in FAMILY_MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "FAMILY_MODULES", "HierarchicalBackbone", "IsotropicBackbone", "ZooModel",
    "build_zoo_model", "list_models", "register_model",
]
