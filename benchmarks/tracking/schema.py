"""Names of everything a benchmark run records in MLflow: params, metrics, tags, artifacts and statuses.

These names are a contract: training writes them, reports and the CLI read them back, the README lists
them. Change one only together with every reader (old runs keep the old name).

In search results (``tracking.search_runs``) each name appears as a column prefixed by its kind:
``params.<key>``, ``metrics.<name>``, ``tags.<name>``.
"""

import dataclasses
from dataclasses import dataclass

# --- Params -------------------------------------------------------------------------------------------
# A run's params are its whole config, flattened: nested keys joined by this separator (e.g. the config
# entry ``budget: {lr: 0.1}`` becomes the param ``budget.lr``); lists are stored as JSON strings.
PARAM_KEY_SEP = "."


# --- Per-epoch metrics, step = epoch -------------------------------------------------------------------
@dataclass(frozen=True)
class EpochMetrics:
    """The names one training phase logs each epoch (benchmarks.run.train writes exactly these)."""

    train_loss: str
    train_acc: str
    test_acc: str
    lr: str
    val_acc: str  # only when the budget holds out a validation split


TRAINING = EpochMetrics("train_loss", "train_acc", "test_acc", "lr", "val_acc")
# Fine-tuning after compression: the same quantities, step = fine-tuning epoch.
FINETUNING = EpochMetrics("ft_train_loss", "ft_train_acc", "ft_test_acc", "ft_lr", "ft_val_acc")
TRAIN_LOSS, TRAIN_ACC, TEST_ACC, LR, VAL_ACC = dataclasses.astuple(TRAINING)
FT_TRAIN_LOSS, FT_TRAIN_ACC, FT_TEST_ACC, FT_LR, FT_VAL_ACC = dataclasses.astuple(FINETUNING)

# --- Series --------------------------------------------------------------------------------------------
# Test accuracy of the truncated model, step = percent of singular values kept.
ACC_AT_KEEP = "acc_at_keep"

# --- Final metrics (logged once) -----------------------------------------------------------------------
ACC_TRAINED = "acc_trained"  # test accuracy of the trained, uncompressed model
ACC_COMPRESSED = "acc_compressed"  # ... after compression, before fine-tuning
ACC_FINETUNED = "acc_finetuned"  # ... after fine-tuning
FLOPS = "flops"  # compressed model, fvcore multiply-adds for one input
PARAMS = "params"  # compressed model, parameter count
FLOPS_BASE = "flops_base"  # uncompressed model
PARAMS_BASE = "params_base"
FLOPS_DROP = "flops_drop"  # 1 - flops / flops_base
PARAMS_DROP = "params_drop"  # 1 - params / params_base
LATENCY_MS_B1 = "latency_ms_b1"  # CPU, batch size 1
LATENCY_MS_B128 = "latency_ms_b128"  # CPU, batch size 128
LATENCY_DROP = "latency_drop"  # 1 - latency / the uncompressed network's, measured side by side at latency_batch
LATENCY_MS_B1_GPU = "latency_ms_b1_gpu"
LATENCY_MS_B1_ORT = "latency_ms_b1_ort"  # ONNX Runtime on the CPU, beside eager (where onnxruntime is installed)
LATENCY_MS_B128_GPU = "latency_ms_b128_gpu"


def latency_at(kind: str, batch: int, suffix: str = "") -> str:
    """A latency metric at one batch size: kind "ms" (median of the compressed model), "iqr_ms" (its spread),
    "pred_ms" (the latency table's prediction: its ratio to the uncompressed model times base_ms), "base_ms" (the
    uncompressed model, measured beside it),
    "busy" (share of the CPUs other processes used during the window); suffix "_gpu" or "_ort" for the backend."""
    return f"latency_{kind}_b{batch}{suffix}"


def speedup_at(batch: int, suffix: str = "") -> str:
    """Measured speed-up at one batch size: latency of the uncompressed model over the compressed one, side by side."""
    return f"speedup_b{batch}{suffix}"


def export_max_abs_diff(fmt: str) -> str:
    """`lorita-bench export`'s check of a run's exported file: the largest absolute difference from PyTorch's."""
    return f"export_max_abs_diff_{fmt}"


TRAIN_TIME_S = "train_time_s"
# A training that changed the model's structure (Cuttlefish's switch to factors): the epochs trained before it.
SWITCH_EPOCH = "switch_epoch"
# Per-epoch stable rank ||W||_F^2 / ||W||_2^2 of each compressed layer (Cuttlefish), as "stable_rank/<layer>".
STABLE_RANK_PREFIX = "stable_rank/"

# --- Tuning trials (each an MLflow run in the experiment "<sweep name>-tuning") ----------------------------
TUNING_SUFFIX = "-tuning"
OBJECTIVE = "objective"  # what the study maximises: mean validation accuracy over the targets (see tuning.space)
VAL_ACC_TRAINED = "val_acc_trained"  # validation accuracy of the trained, uncompressed model
TUNED_PARAM_PREFIX = "tuned."  # a trial's param tuned.<name> holds the value it sampled for <name>


def val_acc_at(metric: str, target: float, *, finetuned: bool = True) -> str:
    """A trial's validation accuracy at one target, after fine-tuning (or just after compression)."""
    stage = "finetuned" if finetuned else "compressed"
    return f"val_acc_{stage}_{metric.removesuffix('_drop')}{target:g}"


# --- Tags (string values; booleans are written "true"/"false", a None value is not written) -------------
TAG_METHOD = "method"
TAG_MODEL = "model"
TAG_DATASET = "dataset"
TAG_FACTORS = "factors"
TAG_BUDGET_HASH = "budget_hash"
TAG_CONFIG_HASH = "config_hash"  # identifies the run's settings: find_run looks finished runs up by it
TAG_RUNNER = "runner"  # host:pid:start time of the process running the run, so a live run is told from a dead one
TAG_DATA_FINGERPRINT = "data_fingerprint"  # identifies the data's content: with config_hash, the run's identity
TAG_GIT_COMMIT = "git_commit"
TAG_TORCH_VERSION = "torch_version"
TAG_CPU_MODEL = "cpu_model"
TAG_THREADS = "threads"
TAG_GPU_NAME = "gpu_name"
TAG_CACHE_HIT = "cache_hit"  # "true" when the trained model came from the cache, else "false"
# The largest share of the CPUs' time other processes used during a latency window of the run (/proc/stat deltas).
TAG_LATENCY_CPU_BUSY = "latency_cpu_busy"
TAG_LATENCY_UNDER_LOAD = "latency_under_load"  # "true" when a window's share was above latency.timing.LOADED_SHARE
TAG_ERROR = "error"  # message of a FAILED run
TAG_MODEL_NOT_LOGGED = "model_not_logged"  # why a FINISHED run has no logged model (torch.export could not trace it)
TAG_SWEEP = "sweep"  # name of the sweep, on the sweep's parent run and on each of its runs
TAG_TUNED = "tuned"  # "true" on a run whose values a tuning stage selected (its budget_hash names the tuning)
# On a run whose trained model was imported (lorita-bench import-authors), not trained: the checkpoint's SHA-256.
TAG_TRAINED_FROM = "trained_from"
TAG_STUDY = "study"  # on a tuning trial: the Optuna study (one per method of a tuned comparison)
TAG_TRIAL = "trial"  # on a tuning trial: its number in the study
TAG_RETRY_OF = "retry_of"  # on a tuning trial: the number of the trial whose process died, retried with its values
# On a FINISHED run recorded without training: why its method cannot compress the model to the target (a dry run).
TAG_NOT_APPLICABLE = "not_applicable"
TAG_DIVERGED = "diverged"  # on a tuning trial: "true" when its loss became NaN (objective 0, still one trial)
TAG_GRID_HASH = "sweep_grid_hash"  # on a sweep's parent run: hash of its grid, so a rerun reuses the parent
# MLflow's own tags, set by tracking.start_run; listed here for filters and report columns.
TAG_RUN_NAME = "mlflow.runName"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # the MLflow UI nests a run under this parent
# A run's description in the MLflow UI (Markdown): what the run is and how to read its metrics.
TAG_NOTE = "mlflow.note.content"
# On a sweep's run: its sweep's parent run. Not mlflow.parentRunId, under which the UI would hide the grid's runs
# until the parent is expanded (tuning trials, in an experiment of their own, stay nested under their tuning).
TAG_SWEEP_RUN = "sweep_run_id"

# --- Experiment tags -------------------------------------------------------------------------------------------
# The kind the MLflow UI (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT) opens on its runs table.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# --- Artifacts (file names at the root of a run's artifacts) ----------------------------------------------
ARTIFACT_CONFIG = "config.yaml"  # the resolved config the run was started with
ARTIFACT_RANKS = "ranks.json"  # per-layer rank plan
ARTIFACT_STRUCTURE = "structure.json"  # what rebuilding the compressed model needs (rank plan, channels)
ARTIFACT_SPECTRA = "spectra.json"  # per-layer singular values of the trained model
ARTIFACT_SWITCH = "switch.json"  # a training's change of structure: {"epoch": epochs before it, "ranks": ...}
ARTIFACT_MODEL = "model.pt"  # final state dict (torch.save; load with weights_only=True)
ARTIFACT_SELECTED = "selected.json"  # on a tuning's parent: per study (its name) its method, values, objective, trial
ARTIFACT_SWEEP = "sweep.yaml"  # on a sweep's parent run: the sweep file

# --- Run statuses (MLflow's names, as in the ``status`` column and ``attributes.status`` filters) ---------
STATUS_RUNNING = "RUNNING"
STATUS_FINISHED = "FINISHED"
STATUS_FAILED = "FAILED"
STATUS_KILLED = "KILLED"
# Not MLflow's: what a sweep or `run` says of a config it did not run because the store already holds it FINISHED.
STATUS_SKIPPED = "SKIPPED"
# Not MLflow's either: a config that another process was running on the same store when this one came to it.
STATUS_HELD = "HELD"
