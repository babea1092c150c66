"""`lorita-bench import-authors`: an authors' checkpoint into the trained-model cache, then the suite's runs on it.

The runs are LoRITa runs whose config names the checkpoint's SHA-256 (trained_from): the pipeline finds the imported
model in its cache under that identity instead of training one, then compresses it with the suite's rank planning and
fine-tunes it under the budget's fine-tuning fields, exactly as it does a model it trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock

from benchmarks.authors.layout import AUTHORS_KEYS, load_authors, read_state
from benchmarks.config import ConfigError, RunConfig, config_to_dict, make_config
from benchmarks.data import load_dataset
from benchmarks.methods import resolve
from benchmarks.methods.lowrank import LORITA
from benchmarks.models import create_model
from benchmarks.run.environment import check_writable, resolve_device
from benchmarks.run.pipeline import RunResult, cache_trained, cached_trained, execute, trained_dir, training_group
from lorita.ranks import SEARCHES

# LoRITa's method option choosing how ranks are planned (lorita.plan_ranks' search); each policy is a run per target.
RANK_POLICY = "rank_policy"


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at `path`, in hex: the imported model's identity."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def block_configs(base: RunConfig, digest: str, targets: Sequence[float],
                  policies: Sequence[str] | None = None) -> list[RunConfig]:
    """The runs made from one checkpoint: LoRITa at its factors, each rank policy (None: every one) at each target,
    all validated."""
    policies = SEARCHES if policies is None else policies
    if base.model not in AUTHORS_KEYS:
        raise ConfigError(f"import-authors: model must be one of {', '.join(AUTHORS_KEYS)} (the networks whose "
                          f"checkpoints the authors release); got {base.model!r}")
    if base.factors is None or base.factors < 2:
        raise ConfigError(f"import-authors: factors must be the checkpoint's N (2 or more); got {base.factors}")
    if not targets or not policies:
        raise ConfigError("import-authors: give at least one target and one rank policy")
    data = config_to_dict(base)
    return [resolve(make_config({**data, "method": LORITA.name, "trained_from": digest, "target": target,
                                 "method_options": {**base.method_options, RANK_POLICY: policy}}))
            for policy in policies for target in targets]


def import_checkpoint(cfg: RunConfig, path: Path) -> None:
    """Load the checkpoint at `path` exactly into cfg's composed model and cache it as the trained model of cfg's
    training group, unless a usable entry is there: no history, no training time; accuracy, accuracy vs singular
    values kept and spectra measured."""
    state = read_state(path)  # before the data: a file in another layout fails at once
    device = resolve_device(cfg.device)
    check_writable(cfg.cache_dir)
    data = load_dataset(cfg.dataset, data_root=cfg.data_root, val_fraction=cfg.budget.val_fraction, seed=cfg.split,
                        device=device, cache_dir=cfg.cache_dir, options=cfg.dataset_kwargs)
    model = LORITA.build_for_training(cfg, create_model(cfg.model, data.num_classes, data.in_shape,
                                                        **cfg.model_kwargs))
    load_authors(state, model, cfg.model, cfg.factors, path)
    folder = trained_dir(cfg, data.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        # One file on one data set makes one entry: a later block of it (other targets, fine-tuning) reuses it.
        if cached_trained(folder, model, None) is None:
            cache_trained(folder, cfg, LORITA, model.to(device), data, history=[])


def import_authors(base: RunConfig, path: Path, targets: Sequence[float], policies: Sequence[str] | None = None, *,
                   force: bool = False, latency: bool = True) -> list[RunResult]:
    """Import the checkpoint at `path`, then run (and record) LoRITa's compression of it per policy and target."""
    configs = block_configs(base, file_sha256(path), targets, policies)
    # One import per trained model: the targets and policies of one checkpoint share it.
    for cfg in {training_group(c): c for c in configs}.values():
        import_checkpoint(cfg, path)
    return [execute(cfg, force=force, latency=latency) for cfg in configs]
