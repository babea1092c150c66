"""One run end to end: train (or reuse the cached trained model), compress, fine-tune, measure, record."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

import lorita
from benchmarks import checkpoints, export, tracking
from benchmarks.config import LATENCY_DROP, ConfigError, RunConfig, config_to_dict, identity, stable_hash
from benchmarks.data import Dataset, batches, load_dataset
from benchmarks.errors import one_line
from benchmarks.latency import ModelLatency
from benchmarks.methods import Method, exclude_patterns, get_method, rebuild
from benchmarks.methods.registry import Switch
from benchmarks.methods.structure import DENSE, LOWRANK
from benchmarks.models import architecture, create_model, imports_code, start_identity
from benchmarks.run import claims, speed
from benchmarks.run.environment import check_writable, environment_tags, resolve_device
from benchmarks.run.measure import keep_curve, latency_metrics
from benchmarks.run.train import Phase, evaluate, train
from benchmarks.tracking import notes, schema

# Budget fields that only shape fine-tuning: the trained model does not depend on them.
FINETUNE_FIELDS = ("finetune_epochs", "finetune_lr", "finetune_schedule")
# Test images of a logged model's input example (two or more: torch.export then leaves the batch size free).
EXAMPLE_SAMPLES = 2
# Batches fed to data-driven pruning criteria (Taylor, Hessian) and to greedy rank search.
CRITERION_BATCHES = 4


@dataclass
class RunResult:
    """What a run produced, for the CLI summary and sweeps."""

    config: RunConfig
    run_id: str | None
    status: str  # a schema status: FINISHED, FAILED, KILLED, SKIPPED (already finished) or HELD (another's)
    metrics: dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    error: str | None = None
    not_applicable: str | None = None  # FINISHED without training: why the method does not apply


def _phase(cfg: RunConfig, data: Dataset, *, finetune: bool, epochs: int | None = None) -> Phase:
    b = cfg.budget
    augment = data.crop_flip if b.augment == "auto" else b.augment == "crop_flip"
    if epochs is None:
        epochs = b.finetune_epochs if finetune else b.epochs
    return Phase(epochs=epochs,
                 lr=b.finetune_lr if finetune else b.lr,
                 schedule=b.finetune_schedule if finetune else b.schedule, optimizer=b.optimizer,
                 momentum=b.momentum, weight_decay=b.weight_decay, label_smoothing=b.label_smoothing,
                 batch_size=b.batch_size, augment=augment, plateau_factor=b.plateau_factor,
                 plateau_patience=b.plateau_patience, metrics=schema.FINETUNING if finetune else schema.TRAINING)


def _fresh_model(cfg: RunConfig, data: Dataset) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, data.num_classes, data.in_shape, **cfg.model_kwargs)


def _training(cfg: RunConfig) -> dict:
    family = get_method(cfg.method).family(cfg)
    if cfg.trained_from is not None:
        # Imported weights (lorita-bench import-authors): the checkpoint, not the budget or the seed, made them.
        return {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "dataset": cfg.dataset, "mode": cfg.mode,
                "trained_from": cfg.trained_from, **family}
    budget = {k: v for k, v in identity(cfg.budget).items() if k not in FINETUNE_FIELDS}
    # The split seed only where set: keys made before it existed stay valid.
    split = {} if cfg.split_seed is None else {"split_seed": cfg.split_seed}
    return {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "dataset": cfg.dataset, "budget": budget,
            "seed": cfg.seed, "mode": cfg.mode, **split, **family, **start_identity(cfg.model, cfg.model_kwargs)}


def training_group(cfg: RunConfig) -> str:
    """Which runs of one grid share a trained model: everything upstream of training but the data's content."""
    return stable_hash(_training(cfg))


def trained_key(cfg: RunConfig, data_fingerprint: str) -> str:
    """Cache identity of the trained model: everything upstream of training (the data's content included)."""
    return stable_hash({**_training(cfg), "data": data_fingerprint})


def trained_dir(cfg: RunConfig, data_fingerprint: str) -> Path:
    """Where the trained model of `cfg` on this data is cached (model.pt and meta.pt)."""
    return Path(cfg.cache_dir) / "trained" / trained_key(cfg, data_fingerprint)


def cached_trained(folder: Path, model: nn.Module, switch: Switch | None) -> dict | None:
    """The cached training's meta, with its weights loaded into `model` (its structure change applied first); None
    when absent or unusable."""
    meta_path, state_path = folder / "meta.pt", folder / "model.pt"
    if not (meta_path.exists() and state_path.exists()):
        return None
    try:
        meta = checkpoints.load(meta_path)
        made = meta.get("switch") if isinstance(meta, dict) else None
        if made is not None and switch is None:
            raise checkpoints.UnusableFile(f"{meta_path} records a change of structure this method does not make")
        # On a copy first: an unusable cache must leave the model as built.
        shaped = model if made is None else switch.reshaped(model, made)
        checkpoints.load_state(state_path, shaped)
    except checkpoints.UnusableFile as err:
        tqdm.write(f"cached model unusable: {err}; replacing it")
        return None
    if made is not None:
        switch.replay(model, made)
        model.load_state_dict(shaped.state_dict())
    return meta


@dataclass
class Trained:
    model: nn.Module  # as trained (composed for LoRITa)
    meta: dict  # history, train_time_s, acc_trained, acc_at_keep, spectra
    cache_hit: bool


def obtain_trained(cfg: RunConfig, method: Method, data: Dataset, device: torch.device, log,
                   log_history) -> Trained:
    """The trained model from the cache, or trained now (resumable) and cached for every later target."""
    folder = trained_dir(cfg, data.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    model = method.build_for_training(cfg, _fresh_model(cfg, data)).to(device)
    example = torch.zeros(2, *data.in_shape, device=device)
    switch = method.switch(cfg, model, example)
    # One process trains a given model; another asking for it waits, then reuses it.
    with FileLock(str(folder / ".lock")):
        meta = cached_trained(folder, model, switch)
        if meta is not None:
            tqdm.write(f"reusing trained model {folder} (trained in {meta['train_time_s']:.1f} s)")
            log_history(meta["history"])
            return Trained(model.to(device), meta, cache_hit=True)
        if cfg.trained_from is not None:  # imported weights are never trained here
            raise ValueError(f"no imported model in {folder} for checkpoint {cfg.trained_from[:12]} (trained_from) on "
                             "this data: run `lorita-bench import-authors CKPT` with this config's flags first")
        checkpoints.require_space(folder, model)
        hook = method.training_hook(cfg, model, example)
        history = train(model, data, _phase(cfg, data, finetune=False), seed=cfg.seed,
                        checkpoint=folder / "checkpoint.pt", log=log, after_backward=hook,
                        no_decay=method.no_decay(cfg, model), switch=switch, desc="train")
        meta = cache_trained(folder, cfg, method, model, data, history, switch)
        checkpoints.remove(folder / "checkpoint.pt")
        return Trained(model, meta, cache_hit=False)


def cache_trained(folder: Path, cfg: RunConfig, method: Method, model: nn.Module, data: Dataset, history: list[dict],
                  switch: Switch | None = None) -> dict:
    """Measure a trained model (test accuracy, accuracy vs singular values kept, spectra) and cache it in `folder`
    with that meta, for every target's run to reuse; the meta. The caller holds the folder's lock."""
    plain = method.uncompressed(cfg, model)
    exclude = exclude_patterns(cfg, plain)
    meta = {"history": history, "train_time_s": sum(h.pop("epoch_time_s") for h in history),
            "acc_trained": evaluate(model, data.test_x, data.test_y, data),
            "acc_at_keep": keep_curve(plain, lambda m: evaluate(m, data.test_x, data.test_y, data), exclude),
            "spectra": {k: v.tolist() for k, v in lorita.spectra(plain).items()},
            "switch": switch.made if switch is not None else None}
    # The model before its meta: meta.pt present means the pair is complete.
    checkpoints.save(folder / "model.pt", model.state_dict())
    checkpoints.save(folder / "meta.pt", meta)
    return meta


def criterion_batches(cfg: RunConfig, data: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches data-driven criteria (Taylor, Hessian) and greedy rank cuts are scored on."""
    order = torch.Generator().manual_seed(cfg.seed)
    it = batches(data.train_x, data.train_y, cfg.budget.batch_size, mean=data.mean, std=data.std, augment=False,
                 shuffle=True, generator=order)
    return [b for _, b in zip(range(CRITERION_BATCHES), it, strict=False)]


def _split_epochs(total: int, steps: int) -> list[int]:
    return [total // steps + (1 if i < total % steps else 0) for i in range(steps)]


def compress_and_finetune(cfg: RunConfig, method: Method, data: Dataset, base: nn.Module, device: torch.device,
                          log, reference: tuple[int, int], trained: nn.Module,
                          latency: ModelLatency | None = None) -> tuple[nn.Module, dict, float]:
    """Compress to the target in `steps` rounds, fine-tuning between them within the one fine-tune budget.

    `reference` is the uncompressed model's (FLOPs, params): every round's drop is measured against it. `trained`
    is the model as trained (`base` is it uncompressed). `latency` prices plans under a latency_drop target.
    """
    example = torch.zeros(1, *data.in_shape, device=device)
    folder = check_writable(finetune_dir(cfg, data.fingerprint))
    checkpoints.require_space(folder, base)
    steps = method.steps(cfg)
    train_batches = criterion_batches(cfg, data)
    model, structure, acc_compressed, done = base, {}, float("nan"), 0
    for i, epochs in enumerate(_split_epochs(cfg.budget.finetune_epochs, steps), 1):
        tqdm.write(f"compressing to {cfg.target_metric} {cfg.target * i / steps:.3g}"
                   + (f" (round {i} of {steps})" if steps > 1 else ""))
        model, structure = method.compress(cfg, copy.deepcopy(model), target=cfg.target * i / steps,
                                           reference=reference, example=example, train_batches=train_batches,
                                           trained=trained, latency=latency)
        model = model.to(device)
        acc_compressed = evaluate(model, data.test_x, data.test_y, data)
        train(model, data, _phase(cfg, data, finetune=True, epochs=epochs), seed=cfg.seed + i,
              checkpoint=folder / f"finetune-{i}.pt", log=lambda m, e, o=done: log(m, o + e),
              desc=f"fine-tune {i}/{steps}")
        done += epochs
    return model, structure, acc_compressed


def run_key(cfg: RunConfig, data_fingerprint: str) -> str:
    """Identity of a run in its experiment (the same config may run in several experiments, and on other data)."""
    return f"{cfg.config_hash()}-{stable_hash([cfg.experiment, data_fingerprint])[:8]}"


def finetune_dir(cfg: RunConfig, data_fingerprint: str) -> Path:
    """Where a run keeps its fine-tuning checkpoints until it finishes."""
    return Path(cfg.cache_dir) / "runs" / run_key(cfg, data_fingerprint)


def model_size(model: nn.Module, data: Dataset, device: torch.device) -> tuple[int, int]:
    """(FLOPs, params) of `model` on one input of the data's shape."""
    return lorita.count_flops_params(model, torch.zeros(1, *data.in_shape, device=device))


def run_tags(cfg: RunConfig, device: torch.device, data_fingerprint: str) -> dict[str, str]:
    """Tags identifying the run, its data and its comparison group, and who runs it."""
    return {schema.TAG_METHOD: cfg.method, schema.TAG_MODEL: cfg.model, schema.TAG_DATASET: cfg.dataset,
            schema.TAG_FACTORS: str(cfg.factors), schema.TAG_BUDGET_HASH: cfg.budget_hash(),
            schema.TAG_CONFIG_HASH: cfg.config_hash(), schema.TAG_DATA_FINGERPRINT: data_fingerprint,
            schema.TAG_RUNNER: claims.runner(), **({schema.TAG_TUNED: "true"} if cfg.tuning else {}),
            **({schema.TAG_TRAINED_FROM: cfg.trained_from} if cfg.trained_from else {}),
            **environment_tags(device)}


def run_name(cfg: RunConfig) -> str:
    """Human-readable run name: model-dataset-method[-factors][-target]-seed."""
    parts = [cfg.model, cfg.dataset.split("/")[-1], cfg.method]
    if get_method(cfg.method).composes:
        parts.append(f"N{cfg.factors}")
    if cfg.target is not None:
        parts.append(f"{cfg.target_metric.removesuffix('_drop')}{cfg.target:g}")
    return "-".join([*parts, f"s{cfg.seed}"])


def execute(cfg: RunConfig, *, parent_run_id: str | None = None, force: bool = False, latency: bool = True,
            tags: dict[str, str] | None = None) -> RunResult:
    """Run one benchmark end to end and record it; a failure is recorded FAILED and re-raised.

    A config (on the same data) that another process is running on this store comes back HELD, unless `cfg.wait`:
    then this waits for it to end and skips it when it finished (or runs it when it died).
    """
    method = get_method(cfg.method)
    cfg = method.resolve(cfg)
    device = resolve_device(cfg.device)
    check_writable(cfg.cache_dir)
    tracking.ensure_store()
    # The data's content is part of the run's identity: the same config on other data is another run.
    data = load_dataset(cfg.dataset, data_root=cfg.data_root, val_fraction=cfg.budget.val_fraction, seed=cfg.split,
                        device=device, cache_dir=cfg.cache_dir, options=cfg.dataset_kwargs)
    if cfg.budget.augment == "crop_flip" and not data.images:
        raise ConfigError(f"config: budget.augment=crop_flip needs images; dataset {cfg.dataset!r} holds samples of "
                          f"shape {tuple(data.in_shape)}: use augment none or auto")
    # A typo in a model name or option fails here, in one line, rather than as a FAILED run in the store.
    method.build_for_training(cfg, _fresh_model(cfg, data))
    while True:
        with claims.claimed(run_key(cfg, data.fingerprint), wait=cfg.wait) as held:
            if not held:
                return _held(cfg)
            live = _close_dead_runs(cfg, data.fingerprint)
            if not live:
                return _claimed(cfg, method, data, device, parent_run_id=parent_run_id, force=force,
                                latency=latency, tags=tags)
        if not cfg.wait:
            return _held(cfg, live[0])
        time.sleep(claims.WAIT_POLL_S)


def _held(cfg: RunConfig, run_id: str | None = None) -> RunResult:
    tqdm.write(f"{run_name(cfg)} is being run by another process" + (f" (run {run_id})" if run_id else "")
               + ": not run here (wait for it, or run again later)")
    return RunResult(cfg, run_id, schema.STATUS_HELD)


def _close_dead_runs(cfg: RunConfig, data_fingerprint: str) -> list[str]:
    """Close the RUNNING runs of this config whose process died (SIGKILL, power loss); the live ones' ids.

    The caller holds the claim, so a RUNNING run is dead unless its runner tag names a live process here (its
    claim file was deleted under it): the store ends with one FINISHED run per config and data.
    """
    live = []
    running = tracking.running_runs(cfg.experiment, cfg.config_hash(), data_fingerprint=data_fingerprint)
    for run_id, runner in running.items():
        if claims.alive(runner):
            live.append(run_id)
        else:
            tracking.end_run(run_id, schema.STATUS_KILLED, error="its process died; replaced by a new run")
    return live


def _claimed(cfg: RunConfig, method: Method, data: Dataset, device: torch.device, *, parent_run_id: str | None,
             force: bool, latency: bool, tags: dict[str, str] | None) -> RunResult:
    if not force:
        existing = tracking.find_run(cfg.experiment, cfg.config_hash(), data_fingerprint=data.fingerprint)
        if existing is not None:
            tqdm.write(f"already finished in the store as run {existing}: skipped (use --force to run again)")
            return RunResult(cfg, existing, schema.STATUS_SKIPPED, tracking.run_metrics(existing))
    else:
        shutil.rmtree(finetune_dir(cfg, data.fingerprint), ignore_errors=True)
    # A method that cannot compress this model to the target (a dry run on the untrained model) is recorded as not
    # applicable, FINISHED without training: counted neither as failed nor as left to resume.
    # Both dry runs below compress copies of one untrained network on the same criterion batches.
    untrained, scored = _fresh_model(cfg, data), criterion_batches(cfg, data)
    reason = method.not_applicable(cfg, untrained.to(device), torch.zeros(1, *data.in_shape, device=device), scored)
    # Under a latency target the table is built (or read) and the target checked before the run is recorded.
    table = None
    if not reason and cfg.target_metric == LATENCY_DROP:
        table = speed.prepared(cfg, method, untrained, data, device, scored)
    label = method.display_label(cfg.factors, cfg.method_options, cfg.exclude)
    note = notes.run_note(label, cfg.model, cfg.dataset, cfg.seed, cfg.budget_hash(), cfg.target_metric, cfg.target,
                          (tags or {}).get(schema.TAG_SWEEP), reason)
    # A sweep's run names its parent by a tag of ours: nested under it, the MLflow UI would hide the grid.
    sweep = {schema.TAG_SWEEP_RUN: parent_run_id} if parent_run_id is not None else {}
    run_id = tracking.start_run(cfg.experiment, run_name(cfg), params=config_to_dict(cfg),
                                tags={**run_tags(cfg, device, data.fingerprint), **(tags or {}), **sweep,
                                      schema.TAG_NOTE: note,
                                      **({schema.TAG_NOT_APPLICABLE: reason} if reason else {})})

    def log(metrics: dict[str, float], step: int) -> None:
        tracking.log_metrics(run_id, metrics, step=step)

    with tracking.recorded(run_id):
        # Inside the block: a Ctrl-C from here on leaves the run KILLED, never RUNNING.
        tracking.log_text(run_id, schema.ARTIFACT_CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if reason:  # a dry run showed the method cannot compress this model: recorded, never trained
            tqdm.write(f"{run_name(cfg)} is not applicable: {reason}")
            return RunResult(cfg, run_id, schema.STATUS_FINISHED, not_applicable=reason)
        result = _stages(cfg, method, data, device, run_id, log, latency, table)
    # Finished: a later --force run (or the same config in another experiment) must fine-tune afresh.
    shutil.rmtree(finetune_dir(cfg, data.fingerprint), ignore_errors=True)
    return result


def _stages(cfg: RunConfig, method: Method, data: Dataset, device: torch.device, run_id: str, log,
            latency: bool, table: ModelLatency | None) -> RunResult:
    trained = obtain_trained(cfg, method, data, device, log, lambda history: tracking.log_history(run_id, history))
    tracking.set_tags(run_id, {schema.TAG_CACHE_HIT: "true" if trained.cache_hit else "false"})
    base = method.uncompressed(cfg, trained.model)
    flops_base, params_base = model_size(base, data, device)
    acc_trained = trained.meta["acc_trained"]
    if not method.compresses:
        final, structure, acc_compressed, acc_finetuned = base, {"kind": DENSE}, acc_trained, acc_trained
    else:
        final, structure, acc_compressed = compress_and_finetune(cfg, method, data, base, device, log,
                                                                 (flops_base, params_base), trained.model, table)
        acc_finetuned = evaluate(final, data.test_x, data.test_y, data)
    flops, params = model_size(final, data, device)
    metrics = {schema.ACC_TRAINED: acc_trained, schema.ACC_COMPRESSED: acc_compressed,
               schema.ACC_FINETUNED: acc_finetuned, schema.FLOPS: flops, schema.PARAMS: params,
               schema.FLOPS_BASE: flops_base, schema.PARAMS_BASE: params_base,
               schema.FLOPS_DROP: 1 - flops / flops_base, schema.PARAMS_DROP: 1 - params / params_base,
               schema.TRAIN_TIME_S: trained.meta["train_time_s"]}
    if latency:
        tqdm.write(f"measuring latency (batch 1 and batch {cfg.latency_batch}) on {device}")
        predictor = table or speed.cached(cfg, method, base, data.in_shape, device)
        record = latency_metrics(final, base, data.in_shape, device, cfg.latency_batch, predictor,
                                 cfg.latency_backend)
        tracking.set_tags(run_id, record.tags)
        metrics.update(record.metrics)
    tracking.log_metrics(run_id, metrics)
    tracking.log_series(run_id, schema.ACC_AT_KEEP, {int(k): v for k, v in trained.meta["acc_at_keep"].items()})
    tracking.log_json(run_id, schema.ARTIFACT_SPECTRA, trained.meta["spectra"])
    if structure.get("kind") == LOWRANK:
        tracking.log_json(run_id, schema.ARTIFACT_RANKS, structure["ranks"])
    if trained.meta.get("switch") is not None:  # when the training changed structure, and to what
        tracking.log_metrics(run_id, {schema.SWITCH_EPOCH: trained.meta["switch"]["epoch"]})
        tracking.log_json(run_id, schema.ARTIFACT_SWITCH, trained.meta["switch"])
    structure = {**structure, "num_classes": data.num_classes, "in_shape": list(data.in_shape)}
    tracking.log_state(run_id, {k: v.cpu() for k, v in final.state_dict().items()}, structure)
    _log_model(run_id, final, data)
    return RunResult(cfg, run_id, schema.STATUS_FINISHED, metrics, cache_hit=trained.cache_hit)


def _log_model(run_id: str, model: nn.Module, data: Dataset) -> None:
    """Log the compressed model as the run's MLflow model; its input example is the first test images, normalized."""
    example = next(batches(data.test_x, data.test_y, EXAMPLE_SAMPLES, mean=data.mean, std=data.std, augment=False,
                           shuffle=False))[0].cpu()
    try:
        program = export.exported(copy.deepcopy(model), example)
    except Exception as err:  # noqa: BLE001 - a model torch.export cannot trace keeps its numbers; the tag says why
        tqdm.write(f"the compressed model is not logged as an MLflow model: {one_line(err)}")
        tracking.set_tags(run_id, {schema.TAG_MODEL_NOT_LOGGED: one_line(err)[:500]})
        return
    tracking.log_model(run_id, program, example, {"normalize_mean": list(data.mean), "normalize_std": list(data.std)})


def load_model(run_id: str, cfg: RunConfig | None = None, *, trust_code: bool = False) -> nn.Module:
    """The compressed model a run produced, rebuilt from its structure (weights loaded with weights_only=True).

    The network is built from `cfg` when the caller has it (a sweep's own runs), else from the run's stored
    config: a `module:factory` model named there would import and run code from the store, so it is refused
    unless `trust_code` (the CLI's --trust-code) says the store is the caller's own.
    """
    if cfg is None:
        stored = yaml.safe_load(tracking.load_text(run_id, schema.ARTIFACT_CONFIG))
        if not isinstance(stored, dict) or not isinstance(stored.get("model"), str):
            raise ValueError(f"run {run_id}: its {schema.ARTIFACT_CONFIG} names no model")
        name, kwargs = stored["model"], stored.get("model_kwargs") or {}
        if imports_code(name) and not trust_code:
            module = name.partition(":")[0]
            raise ValueError(f"run {run_id} was built by {name!r}: loading it would import and run module "
                             f"{module!r}; pass trust_code=True (--trust-code) only for a store you trust")
    else:
        name, kwargs = cfg.model, cfg.model_kwargs
    state, structure = tracking.load_state(run_id)
    # The stored state replaces every weight: the files a training started from need not be there any more.
    model = create_model(name, structure["num_classes"], tuple(structure["in_shape"]), **architecture(name, kwargs))
    model = rebuild(model, structure)
    model.load_state_dict(state)
    return model.eval()
