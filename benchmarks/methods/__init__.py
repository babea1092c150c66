"""The method registry: `METHODS` (name -> Method) and `get_method(name)`; each family registers its methods."""

from benchmarks.methods import dense, lowrank, pruning  # noqa: F401 - importing a family registers its methods
from benchmarks.methods.registry import METHODS, Method, Option, SearchRange, get_method, register, resolve
from benchmarks.methods.structure import exclude_patterns, rebuild

__all__ = ["METHODS", "Method", "Option", "SearchRange", "exclude_patterns", "get_method", "rebuild", "register",
           "resolve"]
