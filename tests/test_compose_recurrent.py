"""LoRITa on the weights recurrent layers and attention read themselves: compose, collapse, spectra, plans, the
factorized forms, and their fvcore counts against hand formulas."""

from __future__ import annotations

import copy

import pytest
import torch
from support import outputs_and_grads_by_mode
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lorita
from lorita.attention import LowRankAttention, LowRankEncoderLayer
from lorita.compose import composed_factors, is_composed, make_low_rank_
from lorita.costs import plan_cost
from lorita.counting import count_flops_params
from lorita.product import is_product
from lorita.recurrent import LowRankRNN

STEPS, FEATURES, BATCH = 6, 8, 4


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


class Recurrent(nn.Module):
    """A recurrent layer, its outputs averaged over the steps (every weight reaches the loss), then a Linear."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        self.fc = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0].mean(1))


class Encoder(nn.Module):
    """An embedding, a two-layer nn.TransformerEncoder and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(1))


MODELS = {
    "lstm_bidirectional": lambda: Recurrent(nn.LSTM(FEATURES, 16, 2, batch_first=True, bidirectional=True)),
    "gru": lambda: Recurrent(nn.GRU(FEATURES, 16, 2, batch_first=True)),
    "gru_bidirectional": lambda: Recurrent(nn.GRU(FEATURES, 16, 2, batch_first=True, bidirectional=True)),
    "rnn_tanh": lambda: Recurrent(nn.RNN(FEATURES, 16, batch_first=True)),
    "rnn_relu": lambda: Recurrent(nn.RNN(FEATURES, 16, 2, nonlinearity="relu", batch_first=True)),
    "transformer": Encoder,
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().double()


def _x(batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, STEPS, FEATURES, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _sgd_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % 10).backward()
    opt.step()


@pytest.mark.parametrize("name", MODELS)
def test_collapse_equals_composed_after_a_step(name):
    model = _model(name)
    composed = lorita.overparameterize(model, 3)
    x = _x()
    _sgd_step(composed, x)
    factors = composed_factors(composed)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for fs in factors.values() for f in fs), \
        "autograd must reach every factor"
    plain = lorita.collapse(composed)
    assert not is_composed(plain) and is_composed(composed)
    assert [type(m) for m in plain.modules()] == [type(m) for m in model.modules()]
    assert set(plain.state_dict()) == set(model.state_dict())
    composed.eval()
    plain.eval()
    with torch.no_grad():
        assert _relative_error(plain(x), composed(x)) < 1e-9
    # The composed model survives its collapse (deep copies share parametrize's class) and deep-copies after a step.
    with torch.no_grad():
        assert _relative_error(copy.deepcopy(composed)(x), composed(x)) == 0


def test_every_read_matrix_is_a_product_and_the_classifier_a_composed_linear():
    composed = lorita.overparameterize(_model("lstm_bidirectional"), 3)
    names = {f"weight_{kind}_l{layer}{suffix}" for kind in ("ih", "hh") for layer in (0, 1)
             for suffix in ("", "_reverse")}
    assert all(is_product(composed.rnn, name) for name in names)
    assert {n: [tuple(f.shape) for f in fs] for n, fs in composed_factors(composed).items()}["rnn.weight_ih_l1"] == \
        [(32, 32), (32, 32), (64, 32)]  # in x in, in x in, then 4H x in: a Linear's factors
    assert set(composed_factors(composed)) == {"fc", *(f"rnn.{n}" for n in names)}


def test_fused_recurrent_kernel_still_runs(monkeypatch):
    import torch.nn.modules.rnn as rnn_module

    calls = []
    fused = rnn_module._VF.lstm

    def spy(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(rnn_module._VF, "lstm", spy)
    composed = lorita.overparameterize(_model("lstm_bidirectional"), 3)
    composed(_x()).sum().backward()
    assert calls, "the composed LSTM must still call the fused aten::lstm"


def test_modes_agree_where_they_apply():
    # The transformer's embedding and head are ComposedLinears (modes apply); its attention and MLP weights are read
    # by their modules, always as products.
    model = lorita.overparameterize(_model("transformer"), 3).eval()
    x = _x(2)
    results = outputs_and_grads_by_mode(model, x)
    reference, grads = results["activation"]
    for mode in ("weight", "auto"):
        assert _relative_error(results[mode][0], reference) < 1e-10
        for g, ref in zip(results[mode][1], grads, strict=True):
            assert _relative_error(g, ref) < 1e-10


def test_spectra_cover_the_read_matrices_and_their_products():
    model = _model("gru")
    values = lorita.spectra(model)
    assert set(values) == {"fc", *(f"rnn.weight_{k}_l{i}" for k in ("ih", "hh") for i in (0, 1))}
    for name in ("rnn.weight_ih_l0", "rnn.weight_hh_l1"):
        weight = getattr(model.rnn, name.removeprefix("rnn."))
        assert torch.allclose(values[name], torch.linalg.svdvals(weight), rtol=1e-10, atol=1e-12)
    composed = lorita.overparameterize(model, 2, init="spectral")
    # Spectral init keeps the product equal to the weight: the same singular values, read through the product.
    for name in values:
        assert torch.allclose(lorita.spectra(composed)[name], values[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm_bidirectional", "gru_bidirectional", "rnn_relu", "transformer"])
def test_factorized_forms_equal_truncation_and_merge_back(name):
    model = _model(name).eval()
    x = _x()
    ranks = {key: max(1, len(s) // 3) for key, s in lorita.spectra(model).items() if key != "fc"}
    small, truncated = lorita.factorize(model, ranks), lorita.truncate(model, ranks)
    form = small.rnn if hasattr(small, "rnn") else small.encoder.layers[0]
    assert isinstance(form, LowRankRNN if hasattr(small, "rnn") else LowRankEncoderLayer)
    with torch.no_grad():
        assert _relative_error(small(x), truncated(x)) < 1e-12
        merged = lorita.unfactorize(small)
        assert [type(m) for m in merged.modules()] == [type(m) for m in model.modules()]
        assert _relative_error(merged(x), truncated(x)) < 1e-12
    # The form trains: one step moves every thin factor.
    before = [p.detach().clone() for p in small.parameters()]
    _sgd_step(small, x)
    assert all(not torch.equal(a, p) for a, p in zip(before, small.parameters(), strict=True) if p.grad is not None)


def test_low_rank_rnn_takes_an_initial_state_and_unbatched_input():
    rnn = nn.LSTM(FEATURES, 16, 2, bidirectional=True).double()  # time first
    form = lorita.factorize(rnn, {"weight_hh_l0": 3, "weight_ih_l1_reverse": 4})
    assert isinstance(form, LowRankRNN)
    reference = lorita.truncate(rnn, {"weight_hh_l0": 3, "weight_ih_l1_reverse": 4})
    x = _x().transpose(0, 1)
    state = (torch.randn(4, BATCH, 16, dtype=torch.float64), torch.randn(4, BATCH, 16, dtype=torch.float64))
    with torch.no_grad():
        for args in ((x, state), (x[:, 0], tuple(s[:, 0] for s in state)), (x,)):
            out, (h, c) = form(*args)
            ref, (ref_h, ref_c) = reference(*args)
            assert out.shape == ref.shape and h.shape == ref_h.shape
            for a, b in ((out, ref), (h, ref_h), (c, ref_c)):
                assert _relative_error(a, b) < 1e-12


def test_low_rank_attention_applies_masks_as_multihead_attention_does():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    form = lorita.factorize(mha, {"in_proj_weight": 5, "out_proj": 3})
    reference = lorita.truncate(mha, {"in_proj_weight": 5, "out_proj": 3})
    x = torch.randn(3, STEPS, 16, dtype=torch.float64)
    causal = torch.ones(STEPS, STEPS, dtype=torch.bool).triu(1)
    padding = torch.zeros(3, STEPS, dtype=torch.bool)
    padding[0, -2:] = True
    with torch.no_grad():
        for kw in ({}, {"attn_mask": causal}, {"key_padding_mask": padding},
                   {"attn_mask": causal, "key_padding_mask": padding}):
            assert _relative_error(form(x, x, x, need_weights=False, **kw)[0],
                                   reference(x, x, x, need_weights=False, **kw)[0]) < 1e-12
    with pytest.raises(ValueError, match="self-attention"):
        form(x, x.clone(), x, need_weights=False)
    assert isinstance(form, LowRankAttention) and isinstance(lorita.unfactorize(form), nn.MultiheadAttention)


@pytest.mark.parametrize("name", ["lstm_bidirectional", "gru_wide", "transformer"])
def test_flops_drop_targets_are_met_and_counted_as_priced(name):
    # A 16-wide GRU's few singular values step its drop by 2 points: too coarse for +- 1.
    torch.manual_seed(0)
    model = (Recurrent(nn.GRU(FEATURES, 32, 2, batch_first=True)).double() if name == "gru_wide" else _model(name))
    model.eval()
    example = torch.zeros(1, STEPS, FEATURES, dtype=torch.float64)
    base, _ = count_flops_params(model, example)
    for target in (0.3, 0.5, 0.7):
        ranks = lorita.plan_ranks(model, "flops_drop", target, example_input=example, exclude=["fc"])
        small = lorita.factorize(model, ranks)
        flops, params = count_flops_params(small, example)
        assert abs(1 - flops / base - target) <= 0.01, (target, 1 - flops / base)
        assert (flops, params) == plan_cost(model, ranks, example)


def test_recurrent_ops_count_as_hand_formulas():
    x = torch.zeros(BATCH, STEPS, FEATURES)
    rows, hidden = BATCH * STEPS, 16

    def count(rnn: nn.RNNBase) -> int:
        return count_flops_params(_First(rnn), x)[0]

    # Per layer and direction: gates x hidden x (inputs + hidden) multiply-adds per time step and sequence.
    lstm = 2 * 4 * hidden * (FEATURES + hidden) + 2 * 4 * hidden * (2 * hidden + hidden)
    assert count(nn.LSTM(FEATURES, hidden, 2, batch_first=True, bidirectional=True)) == rows * lstm == 221184
    assert count(nn.GRU(FEATURES, hidden, batch_first=True)) == rows * 3 * hidden * (FEATURES + hidden) == 27648
    assert count(nn.RNN(FEATURES, hidden, batch_first=True)) == rows * hidden * (FEATURES + hidden) == 9216
    assert count(nn.RNN(FEATURES, hidden, 2, nonlinearity="relu", batch_first=True)) == \
        rows * hidden * (FEATURES + hidden + 2 * hidden) == 21504
    # Time first counts the same; an LSTM with projections applies weight_hh (4H x P) and weight_hr (P x H) each step.
    assert count_flops_params(_First(nn.GRU(FEATURES, hidden)), x.transpose(0, 1))[0] == 27648
    projected = nn.LSTM(FEATURES, hidden, batch_first=True, proj_size=4)
    assert count(projected) == rows * (4 * hidden * FEATURES + 4 * hidden * 4 + 4 * hidden) == 19968


class _First(nn.Module):
    def __init__(self, rnn: nn.RNNBase, lengths: list[int] | None = None) -> None:
        super().__init__()
        self.rnn, self.lengths = rnn, lengths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lengths is not None:
            x = pack_padded_sequence(x, torch.tensor(self.lengths), batch_first=True)
        state = self.rnn(x)[1]
        return state[0] if isinstance(state, tuple) else state


def test_packed_sequences_count_at_the_padded_length():
    x = torch.zeros(BATCH, STEPS, FEATURES)
    for rnn in (nn.GRU(FEATURES, 16, batch_first=True), nn.LSTM(FEATURES, 16, batch_first=True)):
        padded = count_flops_params(_First(rnn), x)[0]
        assert padded > 0
        assert count_flops_params(_First(rnn, [STEPS, 3, 2, 1]), x)[0] == padded


def test_factorized_recurrent_form_counts_as_hand_formula():
    model = _model("gru").eval()
    ranks = {"rnn.weight_hh_l0": 2, "rnn.weight_ih_l1": 3}
    small = lorita.factorize(model, ranks)
    rows, hidden = STEPS, 16  # one sequence
    dense = 3 * hidden * FEATURES + 3 * hidden * hidden  # weight_ih_l0, weight_hh_l1: whole
    thin = 2 * (hidden + 3 * hidden) + 3 * (hidden + 3 * hidden)
    assert count_flops_params(small, torch.zeros(1, STEPS, FEATURES, dtype=torch.float64))[0] == \
        rows * (dense + thin) + hidden * 10


def test_make_low_rank_in_place_holds_the_best_approximation():
    model = _model("gru")
    weight = model.rnn.weight_hh_l0.detach().clone()
    make_low_rank_(model, "rnn.weight_hh_l0", 4)
    assert [tuple(f.shape) for f in composed_factors(model)["rnn.weight_hh_l0"]] == [(4, 16), (48, 4)]
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    assert _relative_error(model.rnn.weight_hh_l0, u[:, :4] * s[:4] @ vh[:4]) < 1e-10
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 16\]"):
        make_low_rank_(model, "rnn.weight_ih_l1", 17)


def test_greedy_search_cuts_recurrent_matrices():
    model = _model("lstm_bidirectional").eval()
    example = torch.zeros(1, STEPS, FEATURES, dtype=torch.float64)
    batches = [(_x(), torch.arange(BATCH) % 10)]
    ranks = lorita.plan_ranks(model, "flops_drop", 0.5, example_input=example, exclude=["fc"], search="greedy",
                              batches=batches)
    base, _ = count_flops_params(model, example)
    assert abs(1 - count_flops_params(lorita.factorize(model, ranks), example)[0] / base - 0.5) <= 0.01
