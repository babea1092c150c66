"""The paper's grid: every config keeps the authors' recipe; presets, data lookup and the plan."""

from pathlib import Path

import pytest

from benchmarks.config import ConfigError
from benchmarks.sweeps.grid import expand
from benchmarks.sweeps.reproduce import PAPER_DIR, block_sweep, blocks, paper_blocks, reproduce

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
AUTHORS = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 128, "label_smoothing": 0.1,
           "schedule": "plateau", "plateau_factor": 0.1, "plateau_patience": 15}


@pytest.mark.parametrize("block", paper_blocks())
def test_paper_configs_keep_the_authors_recipe(block):
    runs = expand(block_sweep(block, "paper", None))
    assert runs
    for cfg in runs:
        budget = cfg.budget
        for key, value in AUTHORS.items():
            assert getattr(budget, key) == value, (block, key)
        if block.startswith(("vgg16", "resnet20", "vit")):
            assert budget.augment == "crop_flip" and budget.weight_decay == 1e-3
            assert budget.epochs == 300
        else:
            assert budget.augment == "none"
    expected = {"dense", "svd", "lorita"} if block.startswith("ablation_weight") else {
        "dense", "svd", "lorita", "l1", "group_norm"}
    assert {cfg.method for cfg in runs} >= expected
    assert {cfg.factors for cfg in runs if cfg.method == "lorita"} >= {2, 3}


def test_paper_blocks_cover_the_paper_and_the_ablations():
    assert set(blocks()) == set(paper_blocks()) | {"sequences"}
    assert set(paper_blocks()) == {"mnist_fcn", "vit_cifar10", "vgg16_cifar10", "vgg16_cifar100", "resnet20_cifar10",
                             "resnet20_cifar100", "ablation_weight_decay", "ablation_depth"}
    decays = {cfg.budget.weight_decay for cfg in expand(block_sweep("ablation_weight_decay", "paper", None))}
    assert len(decays) >= 4 and min(decays) <= 1e-5 and max(decays) >= 1e-2
    factors = {cfg.factors for cfg in expand(block_sweep("ablation_weight_decay", "paper", None))}
    assert factors == {1, 2, 3, 4}
    depths = {cfg.model_kwargs["layers"] for cfg in expand(block_sweep("ablation_depth", "paper", None))}
    assert len(depths) >= 4


def test_short_preset_cuts_epochs_twenty_fold_and_renames():
    sweep = block_sweep("resnet20_cifar10", "short", None)
    cfg = expand(sweep)[0]
    assert (cfg.budget.epochs, cfg.budget.finetune_epochs, cfg.budget.plateau_patience) == (15, 2, 1)
    assert sweep.name.endswith("-short")


def test_bad_preset_or_block_is_one_line():
    with pytest.raises(ConfigError, match="preset must be one of paper, short"):
        block_sweep("mnist_fcn", "tiny", None)
    with pytest.raises(ConfigError, match="block must be one of ablation_depth"):
        block_sweep("mnist", "short", None)


def test_image_folders_under_the_data_root_are_found(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "cifar10-jpeg" / split / "cat").mkdir(parents=True)
    from benchmarks.sweeps.reproduce import _local_copy

    assert _local_copy("cifar10", tmp_path) == {"name": f"imagefolder:{(tmp_path / 'cifar10-jpeg').resolve()}"}
    assert PAPER_DIR.is_dir()


@pytest.mark.skipif(not (SHARED / "mnist-10k").is_dir(), reason="needs ../shared/data/mnist-10k")
def test_mnist_block_plans_on_the_shared_copy(capsys):
    assert reproduce(preset="short", data_root=str(SHARED), only=["mnist_fcn"], plan_only=True) == 0
    out = capsys.readouterr().out
    assert "mnist_fcn:" in out and "runs" in out and "trainings" in out
    sweep = block_sweep("mnist_fcn", "short", str(SHARED))
    assert {cfg.data_root for cfg in expand(sweep)} == {str(SHARED / "mnist-10k")}


@pytest.mark.skipif(not (SHARED / "mnist-10k").is_dir(), reason="needs ../shared/data/mnist-10k")
def test_the_sequences_block_finds_its_images_and_keeps_each_datasets_budget():
    sweep = block_sweep("sequences", "paper", str(SHARED))
    runs = expand(sweep)
    by_data = {cfg.dataset: cfg for cfg in runs}
    assert by_data["mnist-seq"].data_root == str(SHARED / "mnist-10k")
    assert {cfg.model for cfg in runs} == {"lstm", "gru", "transformer"}
    # Each dataset's own epochs survive the lookup of where it lives.
    plain = {cfg.dataset: cfg.budget.epochs for cfg in expand(block_sweep("sequences", "paper", None))}
    assert {name: cfg.budget.epochs for name, cfg in by_data.items()} == plain
    assert len(set(plain.values())) > 1
    # The short preset cuts each dataset's own epochs too.
    short = {cfg.dataset: cfg.budget.epochs for cfg in expand(block_sweep("sequences", "short", None))}
    assert short == {name: max(1, round(epochs / 20)) for name, epochs in plain.items()}
