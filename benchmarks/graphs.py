"""Graphs for node classification as dense tensors that a plain-PyTorch GCN reads, one sample per node to classify.

A sample's x is the whole graph of N nodes as float32 (N, N + F + 1): columns 0..N-1 the symmetric-normalised
adjacency with self loops, D^-1/2 (A + I) D^-1/2; then the F node features; last, a one-hot of the node asked
about. Its label is that node's class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

KARATE_CLUBS = ("Mr. Hi", "Officer")  # the 'club' attribute of each label, 0 and 1
# Independent of the run seed (as the digits split) so that every run sees the same test nodes.
KARATE_SPLIT_STATE = 0
KARATE_TEST_FRACTION = 0.4


def normalized_adjacency(adjacency: np.ndarray) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 of a symmetric (N, N) adjacency, D the degrees of A + I (float64)."""
    looped = adjacency + np.eye(len(adjacency))
    scale = 1.0 / np.sqrt(looped.sum(1))
    return np.outer(scale, scale) * looped  # s_i s_j is s_j s_i to the bit: exactly symmetric


def node_samples(adjacency: np.ndarray, features: np.ndarray) -> Tensor:
    """float32 (N, N, N + F + 1): for each node n the graph's normalised adjacency, `features` and n's one-hot."""
    n = len(adjacency)
    graph = np.concatenate([normalized_adjacency(adjacency), features, np.zeros((n, 1))], axis=1)
    samples = np.repeat(graph[None].astype(np.float32), n, axis=0)
    samples[np.arange(n), np.arange(n), -1] = 1.0
    return torch.from_numpy(samples)


def karate_club() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Zachary's karate club (34 nodes, binary edges, one-hot node features): train_x, train_y, test_x, test_y.

    A stratified 60/40 split of the nodes; every sample holds the whole graph, its label the node's club.
    """
    # Imported here: only this dataset needs them (networkx comes with torch, scikit-learn splits digits too).
    import networkx as nx
    from sklearn.model_selection import train_test_split

    graph = nx.karate_club_graph()
    nodes = sorted(graph.nodes)
    # Binary edges: networkx's weights count the pair's interactions, which a club-membership GCN does not use.
    adjacency = nx.to_numpy_array(graph, nodelist=nodes, weight=None)
    x = node_samples(adjacency, np.eye(len(nodes)))
    y = torch.tensor([KARATE_CLUBS.index(graph.nodes[node]["club"]) for node in nodes])
    train, test = train_test_split(np.arange(len(nodes)), test_size=KARATE_TEST_FRACTION, stratify=y.numpy(),
                                   random_state=KARATE_SPLIT_STATE)
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return x[train], y[train], x[test], y[test]
