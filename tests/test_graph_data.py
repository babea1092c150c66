"""The karate club as node samples: the normalised adjacency, features and selector of each, its club, the split."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from benchmarks.data import batches, fingerprint, load_dataset, normalize
from benchmarks.graphs import KARATE_CLUBS

NODES = 34


@pytest.fixture(scope="module")
def karate():
    return load_dataset("karate")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 in float64 from networkx's binary adjacency, computed the textbook way."""
    a = nx.to_numpy_array(nx.karate_club_graph(), nodelist=range(NODES), weight=None) + np.eye(NODES)
    d = np.diag(a.sum(1) ** -0.5)
    return d @ a @ d


def _nodes(x: torch.Tensor) -> list[int]:
    """The node each sample asks about (its selector column's one)."""
    return x[:, :, -1].argmax(1).tolist()


def test_shapes_and_split_sizes(karate):
    assert karate.train_x.shape == (20, NODES, 2 * NODES + 1) and karate.test_x.shape == (14, NODES, 2 * NODES + 1)
    assert karate.in_shape == (NODES, 69) and karate.num_classes == 2 and not karate.crop_flip
    assert karate.train_x.dtype == torch.float32 and karate.train_y.dtype == torch.int64
    assert karate.mean == (0.0,) * 69 and karate.std == (1.0,) * 69


def test_every_sample_holds_the_normalised_graph_and_identity_features(karate, reference):
    for x in torch.cat([karate.train_x, karate.test_x]):
        adjacency = x[:, :NODES]
        assert torch.equal(adjacency, adjacency.T)
        assert np.allclose(adjacency.double().numpy(), reference, rtol=1e-6, atol=1e-7)
        assert np.allclose(adjacency.double().sum(1).numpy(), reference.sum(1), rtol=1e-6)
        assert torch.equal(x[:, NODES:2 * NODES], torch.eye(NODES))
    degrees = nx.to_numpy_array(nx.karate_club_graph(), weight=None).sum(1) + 1
    # D^-1/2 (A + I) D^-1/2 D^1/2 1 = D^-1/2 (A + I) 1 = D^1/2 1: sqrt(degree) is its eigenvector of eigenvalue 1.
    assert np.allclose(reference @ np.sqrt(degrees), np.sqrt(degrees))


def test_the_selector_picks_one_node_and_the_label_is_its_club(karate):
    clubs = nx.get_node_attributes(nx.karate_club_graph(), "club")
    for x, y in ((karate.train_x, karate.train_y), (karate.test_x, karate.test_y)):
        selector = x[:, :, -1]
        assert torch.equal(selector.sum(1), torch.ones(len(x))) and set(selector.unique().tolist()) == {0.0, 1.0}
        assert [KARATE_CLUBS[label] for label in y.tolist()] == [clubs[node] for node in _nodes(x)]
    train, test = set(_nodes(karate.train_x)), set(_nodes(karate.test_x))
    assert not train & test and train | test == set(range(NODES))


def test_the_split_is_stratified_fixed_and_carves_validation_from_train(karate):
    assert torch.bincount(karate.train_y).tolist() == [10, 10] and torch.bincount(karate.test_y).tolist() == [7, 7]
    again = load_dataset("karate", val_fraction=0.25, seed=3)
    assert torch.equal(again.test_x, karate.test_x) and len(again.train_y) + len(again.val_y) == 20
    assert torch.bincount(again.val_y).tolist() == [2, 2]
    assert fingerprint("karate") == karate.fingerprint


def test_normalize_leaves_the_graph_as_it_is(karate):
    assert torch.equal(normalize(karate.train_x, karate.mean, karate.std), karate.train_x)
    xb, yb = next(batches(karate.test_x, karate.test_y, 5, mean=karate.mean, std=karate.std, augment=False,
                          shuffle=False))
    assert torch.equal(xb, karate.test_x[:5]) and torch.equal(yb, karate.test_y[:5])
