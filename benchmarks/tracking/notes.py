"""What a run's description in the MLflow UI says (the tag mlflow.note.content, Markdown): what the run is, and how
to read what it recorded."""

from __future__ import annotations

from benchmarks.tracking import schema

_TARGETS = {"flops_drop": "FLOPs", "params_drop": "parameters", "latency_drop": "latency"}


def run_note(label: str, model: str, dataset: str, seed: int, budget_hash: str, target_metric: str | None = None,
             target: float | None = None, sweep: str | None = None, not_applicable: str | None = None) -> str:
    """The description of a benchmark run: its method (the registry's label), network, data, target, seed, budget, and
    what its metrics mean (or why the method does not apply)."""
    what = (f"**{label}** on {model} / {dataset}, compressed until its {_TARGETS.get(target_metric, target_metric)} "
            f"drop by {100 * target:.4g} %" if target is not None else
            f"**{label}** on {model} / {dataset}: the uncompressed reference")
    head = f"{what}; seed {seed}, budget {budget_hash}" + (f", sweep {sweep}." if sweep else ".")
    if not_applicable:
        return f"{head}\n\nNot applicable, nothing trained or measured: {not_applicable}"
    lines = [head, "",
             f"- `{schema.ACC_TRAINED}`, `{schema.ACC_COMPRESSED}`, `{schema.ACC_FINETUNED}`: test accuracy (fraction) "
             "of the trained model, after compression, after fine-tuning.",
             f"- `{schema.FLOPS_DROP}`, `{schema.PARAMS_DROP}`: achieved drops, 1 - compressed / uncompressed "
             f"(`{schema.FLOPS}`: fvcore multiply-adds at batch 1).",
             f"- `{schema.ACC_AT_KEEP}`: test accuracy of the trained model truncated, without fine-tuning, against "
             "its **step, the percent of singular values kept** in every layer (classifier excluded).",
             "- `latency_ms_b<B>`: median forward latency in ms at batch size B on the CPU "
             f"(`_gpu`: on the GPU); tag `{schema.TAG_LATENCY_UNDER_LOAD}` = true when other work loaded the CPU.",
             f"- `{schema.TRAIN_LOSS}`, `{schema.TEST_ACC}`, ... per training epoch (step = epoch); "
             f"`{schema.FT_TRAIN_LOSS}`, `{schema.FT_TEST_ACC}`, ... per fine-tuning epoch."]
    return "\n".join(lines)


def sweep_note(name: str, runs: int) -> str:
    """The description of a sweep's parent run."""
    return (f"Bookkeeping of sweep **{name}** ({runs} runs in its grid): the sweep file (`{schema.ARTIFACT_SWEEP}`) "
            f"and its status. The grid's runs are in this experiment beside it, tagged `{schema.TAG_SWEEP}` = {name} "
            f"and `{schema.TAG_SWEEP_RUN}` = this run's id.")
