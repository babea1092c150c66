"""The uncompressed reference: trained once per seed and budget, never compressed."""

from benchmarks.methods.registry import Method, register

DENSE = register(Method(
    name="dense",
    description="the uncompressed reference: trained once per seed and budget, no compression",
    citation="-",
    label="Dense",
    compresses=False,
    report_rank=0,
))
