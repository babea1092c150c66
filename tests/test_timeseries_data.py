"""UEA/UCR sets from sktime's wheel: official splits, front padding and mask, train statistics, errors, a run."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from benchmarks import timeseries
from benchmarks.cli import main
from benchmarks.data import DataError, batches, check_available, fingerprint, load_dataset, normalize

# name: train and test sizes, classes, channels (without the mask), longest length, masked
SETS = {
    "JapaneseVowels": (270, 370, 9, 12, 29, True),
    "BasicMotions": (40, 40, 4, 6, 100, False),
    "ItalyPowerDemand": (67, 1029, 2, 1, 24, False),
}


@pytest.fixture(scope="module")
def reference():
    """sktime's own reader of each set's files (its import takes seconds): split -> (list of (steps, channels)
    float64 arrays, class strings, which it lower-cases)."""
    from sktime.datasets import load_from_tsfile

    def read(name: str) -> dict[str, tuple[list[np.ndarray], list[str]]]:
        out = {}
        for split in ("TRAIN", "TEST"):
            frame, labels = load_from_tsfile(str(timeseries.folder() / name / f"{name}_{split}.ts"))
            cases = [np.stack([np.asarray(cell, dtype=np.float64) for cell in row], axis=1)
                     for row in frame.itertuples(index=False)]
            out[split] = cases, [str(label) for label in labels]
        return out

    return {name: read(name) for name in SETS}


@pytest.mark.parametrize("name", SETS)
def test_official_splits_load_with_their_sizes_and_shapes(name):
    train, test, classes, channels, steps, masked = SETS[name]
    data = load_dataset(f"uea:{name}")
    features = channels + masked
    assert data.train_x.shape == (train, steps, features) and data.test_x.shape == (test, steps, features)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.in_shape == (steps, features) and data.num_classes == classes and not data.crop_flip
    assert len(data.mean) == len(data.std) == features
    assert set(data.train_y.tolist()) == set(range(classes)) and len(data.val_y) == 0
    if masked:
        assert (data.mean[-1], data.std[-1]) == (0.0, 1.0)


@pytest.mark.parametrize("name", SETS)
def test_series_sit_at_the_end_and_the_mask_marks_their_steps(name, reference):
    series = timeseries.load(name)
    for split, x in (("TRAIN", series.train_x), ("TEST", series.test_x)):
        cases, _ = reference[name][split]
        for i, case in enumerate(cases):
            start = x.shape[1] - len(case)
            assert torch.allclose(x[i, start:, :case.shape[1]].double(), torch.from_numpy(case), rtol=1e-6, atol=1e-6)
            if series.masked:
                assert torch.equal(x[i, :, -1], (torch.arange(x.shape[1]) >= start).float())
    lengths = {len(case) for split in ("TRAIN", "TEST") for case in reference[name][split][0]}
    assert series.masked == (len(lengths) > 1)
    if name == "JapaneseVowels":
        assert (min(lengths), max(lengths)) == (7, 29)


@pytest.mark.parametrize("name", SETS)
def test_labels_are_the_sorted_class_strings_in_both_splits(name, reference):
    series = timeseries.load(name)
    assert list(series.classes) == sorted(series.classes, key=lambda c: (float(c) if c.isdigit() else c))
    for split, y in (("TRAIN", series.train_y), ("TEST", series.test_y)):
        _, labels = reference[name][split]
        assert [series.classes[i].lower() for i in y.tolist()] == [label.lower() for label in labels]


@pytest.mark.parametrize("name", SETS)
def test_train_statistics_standardise_every_real_training_step(name, reference):
    data = load_dataset(f"uea:{name}")
    channels = SETS[name][3]
    train = torch.cat([torch.from_numpy(case) for case in reference[name]["TRAIN"][0]])
    assert data.mean[:channels] == pytest.approx(train.mean(0).tolist(), abs=1e-9)
    assert data.std[:channels] == pytest.approx(train.std(0, correction=0).tolist(), abs=1e-9)
    if channels > 1:  # the univariate sets' series are each z-normalised: train and test share their statistics
        both = torch.cat([train, *(torch.from_numpy(case) for case in reference[name]["TEST"][0])])
        assert data.mean[:channels] != pytest.approx(both.mean(0).tolist(), abs=1e-6)  # test steps are not in them

    x = normalize(data.train_x, data.mean, data.std)
    real = data.train_x[..., -1] == 1 if SETS[name][5] else torch.ones(x.shape[:2], dtype=torch.bool)
    steps = x[real][:, :channels].double()
    assert torch.allclose(steps.mean(0), torch.zeros(channels, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(steps.std(0, correction=0), torch.ones(channels, dtype=torch.float64), atol=1e-5)
    assert torch.equal(x[~real], torch.zeros_like(x[~real]))  # padding: 0 in every channel and in the mask
    test = normalize(data.test_x, data.mean, data.std)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    assert torch.allclose(test, (data.test_x - mean) / std)


def test_validation_comes_from_train_and_test_stays_official():
    full, split = load_dataset("uea:JapaneseVowels"), load_dataset("uea:JapaneseVowels", val_fraction=0.2, seed=1)
    assert len(split.train_y) + len(split.val_y) == 270 and len(split.val_y) == 9 * 6
    assert torch.equal(split.test_x, full.test_x) and split.fingerprint == full.fingerprint
    assert (split.mean, split.std) == (full.mean, full.std)


def test_fingerprint_hashes_the_float_content():
    data = load_dataset("uea:BasicMotions")
    assert fingerprint("uea:BasicMotions") == data.fingerprint != load_dataset("uea:ItalyPowerDemand").fingerprint
    check_available("uea:BasicMotions")


def test_unknown_sets_and_datasets_are_one_line_errors_listing_the_names():
    with pytest.raises(DataError) as err:
        load_dataset("uea:BasicMotion")
    message = str(err.value)
    assert "\n" not in message and "dataset 'uea:BasicMotion'" in message and "did you mean 'BasicMotions'?" in message
    assert "choose one of: ACSF1, ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels" in message
    with pytest.raises(DataError, match="no classification set 'Tecator'"):  # a regression set
        check_available("uea:Tecator")
    with pytest.raises(DataError, match=r"did you mean 'uea:BasicMotions'\?.*uea:<Name>, karate \(<Name>: ACSF1"):
        load_dataset("BasicMotions")
    with pytest.raises(DataError, match="takes none"):
        load_dataset("uea:BasicMotions", options={"size": 8})


def _write_set(folder, name: str, train: str, test: str) -> None:
    header = f"@problemName {name}\n@timeStamps false\n@classLabel true a b\n@data\n"
    (folder / name).mkdir(parents=True)
    for split, body in (("TRAIN", train), ("TEST", test)):
        (folder / name / f"{name}_{split}.ts").write_text(header + body)


@pytest.mark.parametrize(("train", "test", "message"), [
    ("1,2,3:a\n4,?,6:b\n", "1,2,3:a\n", r"line 6: .*missing values, '\?', are not supported"),
    ("1,2,3:a\n4,NaN,6:b\n", "1,2,3:a\n", r"line 6: missing values \(NaN\) are not supported"),
    ("1,2,3:a\n4,5,6:a\n", "1,2,3:b\n", r"test classes b do not occur in train \(a\)"),
    ("1,2,3:1,2:a\n", "1,2,3:1,2,3:a\n", "line 5: expected channels of one length"),
    ("1,2,3:a\n", "1,2:3,4:a\n", "different channel counts"),
])
def test_unusable_files_are_one_line_errors(tmp_path, monkeypatch, train, test, message):
    monkeypatch.setattr(timeseries, "folder", lambda: tmp_path)
    _write_set(tmp_path, "Toy", train, test)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("uea:Toy")
    assert "\n" not in str(err.value) and str(err.value).startswith("dataset 'uea:Toy': ")


def test_float_series_normalise_per_feature_and_refuse_crop_flip():
    x = torch.tensor([[[1.0, 10.0], [3.0, 30.0]]])
    assert torch.equal(normalize(x, (2.0, 20.0), (1.0, 10.0)), torch.tensor([[[-1.0, -1.0], [1.0, 1.0]]]))
    with pytest.raises(DataError, match=r"one value per feature \(2\), got 1 and 1"):
        normalize(x, (0.0,), (1.0,))
    with pytest.raises(DataError, match="float32 \\(N, T, F\\) series; got torch.float64"):
        normalize(x.double(), (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(DataError, match="budget.augment crop_flip needs uint8"):
        next(batches(x, torch.zeros(1, dtype=torch.long), 1, mean=(0.0, 0.0), std=(1.0, 1.0), augment=True,
                     shuffle=False))


def test_a_tiny_lstm_lorita_run_on_padded_series_finishes(store, capsys):
    code = main(["run", "--model", "lstm", "--dataset", "uea:JapaneseVowels", "--method", "lorita", "--factors", "2",
                 "--target-flops-drop", "0.5", "--epochs", "1", "--finetune-epochs", "1", "--set",
                 "model_kwargs.hidden=8", "--experiment", "uea", "--cache-dir", str(store / "cache"), "--device", "cpu",
                 "--no-latency"])
    assert code == 0, capsys.readouterr().out
    row = mlflow.search_runs(experiment_names=["uea"]).iloc[0]
    assert row["status"] == "FINISHED" and abs(row["metrics.flops_drop"] - 0.5) <= 0.02
    assert 0.0 <= row["metrics.acc_finetuned"] <= 1.0


def test_crop_flip_on_series_is_refused_before_the_run_is_recorded(store, capsys):
    code = main(["run", "--model", "lstm", "--dataset", "uea:BasicMotions", "--method", "dense", "--epochs", "1",
                 "--set", "budget.augment=crop_flip", "--experiment", "uea-augment", "--cache-dir",
                 str(store / "cache"), "--device", "cpu", "--no-latency"])
    assert code != 0
    err = capsys.readouterr().err
    assert "budget.augment=crop_flip needs images; dataset 'uea:BasicMotions' holds samples of shape (100, 6)" in err
    assert mlflow.get_experiment_by_name("uea-augment") is None or mlflow.search_runs(
        experiment_names=["uea-augment"]).empty
