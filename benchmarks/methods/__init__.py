"""The method registry: `METHODS` (name -> Method) and `get_method(name)`; each family registers its methods."""

# Importing a family registers its methods, in this order: the order `lorita-bench methods` and errors list them.
from benchmarks.methods import dense, lowrank, pruning, lowrank_training, cuttlefish  # noqa: F401, I001
from benchmarks.methods.registry import METHODS, Method, Option, SearchRange, get_method, register, resolve
from benchmarks.methods.structure import exclude_patterns, rebuild

__all__ = ["METHODS", "Method", "Option", "SearchRange", "exclude_patterns", "get_method", "rebuild", "register",
           "resolve"]
