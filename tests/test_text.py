"""Language-model data selection: documents, token windows, per-document weights, the
transformer's exact metagradient, DSIR and the oracle, and the ``mgd select`` text run."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import count_compilations, unrolled_objective
from flax import linen as nn

import mgd
from mgd.outer.selection import (
    domain_oracle_selection,
    dsir_selection,
    hashed_ngram_features,
)
from mgd.train import (
    BOS,
    Documents,
    MetaSpec,
    TrainingSetup,
    load_documents,
    load_fortunes,
    next_token_loss,
    text_dataset,
    token_windows,
)
from mgd.train.models import Transformer, TransformerConfig

SPANISH = [
    "el gato come pescado en la casa",
    "la casa es grande y el perro duerme",
    "mañana vamos a la playa con el perro",
    "el niño lee un libro en la biblioteca",
    "la comida de la abuela es muy buena",
    "el tren sale de la estación a las diez",
]
ENGLISH = [
    "the cat eats fish in the house",
    "the house is big and the dog sleeps",
    "tomorrow we go to the beach with the dog",
    "the child reads a book in the library",
    "grandmother's food is very good",
    "the train leaves the station at ten",
    "a program is a list of instructions",
    "the compiler turns source code into machine code",
]


def _write_fortunes(root, *, with_es=True):
    # A fortunes-like tree: English files in the root, languages in subfolders, index files,
    # symlinks and an off/ folder that the loader must skip.
    root.mkdir(parents=True, exist_ok=True)
    (root / "animals").write_bytes(("\n%\n".join(ENGLISH[:6]) + "\n%\n").encode())
    (root / "computers").write_bytes(("%\n" + "\n%\n".join(ENGLISH[6:]) + "\n%\n%\n").encode())
    (root / "computers.dat").write_bytes(b"\x00\x01index")
    (root / "computers.u8").symlink_to("computers")
    (root / "off").mkdir()
    (root / "off" / "rude").write_bytes(b"not read\n%\n")
    if with_es:
        (root / "es").mkdir()
        (root / "es" / "vida.fortunes").write_bytes(("\n%\n".join(SPANISH) + "\n").encode())
        # Not UTF-8 (Latin-1 bytes): read as bytes, not refused.
        (root / "es" / "latin.fortunes").write_bytes(b"caf\xe9 con leche\n%\nla se\xf1ora\n")
    return root


def test_load_fortunes_reads_entries_and_skips_index_files(tmp_path):
    root = _write_fortunes(tmp_path / "fortunes")
    docs = load_fortunes(("en", "es"), root=root)
    assert set(docs.domains) == {"en/animals", "en/computers", "es/vida", "es/latin"}
    assert docs.in_domain("en").sum() == len(ENGLISH)  # empty entries and "off/" dropped
    assert docs.in_domain("es").sum() == len(SPANISH) + 2
    assert docs.texts[0] == ENGLISH[0].encode()
    assert b"caf\xe9 con leche" in docs.texts
    assert docs.in_domain("en/computers").sum() == 2
    assert not docs.in_domain("en/comp").any()  # a prefix is a path prefix, not a string one


def test_load_fortunes_missing_language_names_the_package(tmp_path):
    root = _write_fortunes(tmp_path / "fortunes", with_es=False)
    with pytest.raises(ValueError, match=r"apt-get install fortunes-es") as e:
        load_fortunes(("en", "es"), root=root)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown language"):
        load_fortunes(("xx",), root=root)


def test_load_documents_one_per_file_and_recursive(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.txt").write_bytes(b"first % not a separator\n%\nstill first")
    (tmp_path / "a" / "b" / "two.txt").write_bytes(b"second")
    (tmp_path / "a" / "empty.txt").write_bytes(b"  \n")
    docs = load_documents({"c": tmp_path / "a"}, separator=None, recursive=True)
    assert docs.domains == ("c/b/two", "c/one")
    assert docs.texts == (b"second", b"first % not a separator\n%\nstill first")
    flat = load_documents({"c": tmp_path / "a"}, separator=None)
    assert flat.domains == ("c/one",)
    with pytest.raises(ValueError, match="no document"):
        load_documents({"c": tmp_path / "a" / "empty.txt"})
    with pytest.raises(ValueError, match="not found"):
        load_documents({"c": tmp_path / "missing"})
    with pytest.raises(ValueError, match="empty"):
        Documents((b"x", b""), ("a", "a"))


def test_token_windows_predict_every_byte_once():
    texts = [b"abcdefg", b"xy", bytes([0, 255, 7])]
    x, y, doc = token_windows(texts, 3)
    np.testing.assert_array_equal(doc, [0, 0, 0, 1, 2])
    # Each document's targets, padding dropped, are its bytes in order.
    for i, text in enumerate(texts):
        targets = y[doc == i].reshape(-1)
        assert bytes(targets[targets >= 0].astype(np.uint8)) == text
    # The input at a real position is BOS or the previous byte.
    np.testing.assert_array_equal(x[0], [BOS, ord("a"), ord("b")])
    np.testing.assert_array_equal(x[1], [ord("c"), ord("d"), ord("e")])
    np.testing.assert_array_equal(y[3], [ord("x"), ord("y"), -1])
    with pytest.raises(ValueError, match="empty"):
        token_windows([b"a", b""], 3)
    with pytest.raises(ValueError, match="context"):
        token_windows([b"a"], 0)


def _docs():
    return Documents(
        tuple(t.encode() for t in SPANISH + ENGLISH),
        ("es/vida",) * len(SPANISH) + ("en/animals",) * 6 + ("en/computers",) * 2,
    )


def test_text_dataset_splits_and_groups():
    td = text_dataset(
        _docs(),
        target_domain="es",
        context=8,
        pool_size=8,
        target_in_pool=1,
        num_target=2,
        num_test=2,
        max_bytes=20,
    )
    d = td.data
    assert len(td.pool) == 8 and td.pool.in_domain("es").sum() == 1
    assert d.num_groups == 8 and d.groups.shape == (d.num_train,)
    # The held-out target documents are not in the pool; all are cut to max_bytes.
    assert not set(td.pool.texts) & (set(td.target.texts) | set(td.test.texts))
    assert max(td.pool.num_bytes) <= 20
    assert d.x_train.dtype == np.int32 and d.y_train.shape == d.x_train.shape
    # Selecting a document selects all its windows.
    sub = d.subset_groups(np.array([0, 3]))
    assert sub.num_train == np.isin(d.groups, [0, 3]).sum()
    with pytest.raises(ValueError, match=r"target domain 'fr' has no documents; .*en, es"):
        text_dataset(
            _docs(),
            target_domain="fr",
            context=8,
            pool_size=4,
            target_in_pool=0,
            num_target=1,
            num_test=1,
        )
    with pytest.raises(ValueError, match="lower num_target"):
        text_dataset(
            _docs(),
            target_domain="es",
            context=8,
            pool_size=4,
            target_in_pool=4,
            num_target=2,
            num_test=2,
        )


def test_dataset_groups_are_checked():
    d = mgd.make_synthetic(num_train=6, num_val=2, num_test=2)
    with pytest.raises(ValueError, match="groups must be one integer group id"):
        d.replace(groups=np.zeros(5, int))
    grouped = d.replace(groups=np.array([0, 0, 1, 2, 2, 2]))
    assert grouped.num_groups == 3
    with pytest.raises(ValueError, match="distinct"):
        grouped.subset_groups([1, 1])


class _BigramLM(nn.Module):
    """Next-token logits from the current token alone: an LM that compiles in a moment, for
    tests of the selection machinery rather than of the transformer."""

    @nn.compact
    def __call__(self, tokens, train=False):
        del train
        return nn.Embed(BOS + 1, BOS)(tokens.astype(jnp.int32))  # bytes and BOS in, bytes out


def _lm_setup(dtype=jnp.float32, num_steps=3, positions="learned", model=None):
    td = text_dataset(
        _docs(),
        target_domain="es",
        context=6,
        pool_size=6,
        target_in_pool=2,
        num_target=2,
        num_test=2,
        max_bytes=14,
    )
    if model is None:
        model = Transformer(
            TransformerConfig(
                context=6, d_model=8, num_layers=1, num_heads=2, mlp_ratio=2, positions=positions
            )
        )
    return td, TrainingSetup(
        model,
        optax.adam(0.01, eps_root=1e-8),
        td.data,
        batch_size=4,
        num_steps=num_steps,
        loss=next_token_loss,
        meta_spec=MetaSpec(data_weights=True),
        dtype=dtype,
    )


def test_next_token_loss_and_bits_per_byte():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 5)))
    targets = jnp.asarray([[1, 4, -1], [0, -1, -1]])
    logp = jax.nn.log_softmax(logits)
    want = [-(logp[0, 0, 1] + logp[0, 1, 4]) / 3, -logp[1, 0, 0] / 3]
    np.testing.assert_allclose(next_token_loss(logits, targets), want, rtol=1e-6)
    td, setup = _lm_setup()
    state = setup.train()
    report = setup.evaluate(state, "test")
    outputs = setup.model.apply({"params": state.params}, jnp.asarray(td.data.x_test))
    y = td.data.y_test
    logp = np.asarray(jax.nn.log_softmax(outputs))
    real = y >= 0
    nats = -np.take_along_axis(logp, np.where(real, y, 0)[..., None], axis=-1)[..., 0][real]
    np.testing.assert_allclose(report["bits_per_byte"], nats.mean() / math.log(2), rtol=1e-5)
    with pytest.raises(ValueError, match="next_token_loss"):
        setup.replace(loss=mgd.train.softmax_cross_entropy)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_transformer_is_causal(positions):
    model = Transformer(TransformerConfig(context=5, d_model=8, num_heads=2, positions=positions))
    tokens = jnp.asarray([[BOS, 1, 2, 3, 4]])
    params = model.init(jax.random.PRNGKey(0), tokens)
    out = model.apply(params, tokens)
    changed = model.apply(params, tokens.at[0, 3].set(200))
    assert out.shape == (1, 5, 256)
    np.testing.assert_array_equal(out[:, :3], changed[:, :3])
    assert not np.allclose(out[:, 3:], changed[:, 3:])
    # output_scale is a pure factor on the logits (the same parameters).
    scaled = Transformer(
        TransformerConfig(context=5, d_model=8, num_heads=2, positions=positions, output_scale=0.1)
    )
    np.testing.assert_allclose(scaled.apply(params, tokens), 0.1 * out, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="must divide"):
        TransformerConfig(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="output_scale must be positive"):
        TransformerConfig(output_scale=0.0)
    with pytest.raises(ValueError, match="context=5"):
        model.apply(params, jnp.zeros((1, 6), jnp.int32))


def test_transformer_metagradient_matches_unrolled_grad(x64):
    # Per-document weights: the metagradient of each document's weight through two steps of
    # the transformer's training equals jax.grad of the unrolled loop, in float64 (two: the
    # second step's gradient depends on the first's update; the time is compiling, and the
    # replay of longer runs is checked on cheaper models). (Rotary positions change only the
    # forward function, checked by test_transformer_is_causal.)
    td, setup = _lm_setup(jnp.float64, num_steps=2)
    rng = np.random.default_rng(1)
    meta = {"data_weights": jnp.asarray(1 + 0.5 * rng.uniform(size=td.data.num_groups))}

    value, grad = jax.value_and_grad(unrolled_objective(setup))(meta)
    res = setup.metagradient(meta, checkpoint=mgd.KAryTree(2))
    assert res.grad["data_weights"].shape == (len(td.pool),)
    assert np.count_nonzero(grad["data_weights"]) >= 2
    np.testing.assert_allclose(res.value, value, rtol=1e-12)
    np.testing.assert_allclose(
        res.grad["data_weights"], grad["data_weights"], rtol=1e-10, atol=1e-14
    )


def test_hashed_features_and_dsir_prefer_the_target():
    feats = hashed_ngram_features([b"la casa la", b"\xff\xfe"], num_buckets=50)
    assert feats.shape == (2, 50) and feats[0].sum() == 5  # 3 words + 2 bigrams
    # A target large enough that its n-gram counts dominate the smoothing: the Spanish
    # candidates' log importance weights lie far above the Gumbel noise's scale.
    pool = [t.encode() for t in ENGLISH + SPANISH[:3]]
    target = [t.encode() for t in SPANISH] * 20
    spanish = set(range(len(ENGLISH), len(pool)))
    for seed in range(3):
        assert set(dsir_selection(pool, target, 3, seed=seed).indices) == spanish
    sel = dsir_selection(pool, target, 3, seed=0)
    assert sel.scores[len(ENGLISH) :].min() > sel.scores[: len(ENGLISH)].max()
    # A byte budget: the ranking's first documents until their bytes fill it.
    by_bytes = dsir_selection(pool, target, budget_bytes=40, seed=0)
    sizes = np.array([len(t) for t in pool])
    assert sizes[by_bytes.indices].sum() >= 40
    assert sizes[by_bytes.indices].sum() - sizes[by_bytes.indices].min() < 40
    with pytest.raises(ValueError, match="size"):
        dsir_selection(pool, target, 0)
    with pytest.raises(ValueError, match="exactly one"):
        dsir_selection(pool, target, 2, budget_bytes=10)
    with pytest.raises(ValueError, match="target is empty"):
        dsir_selection(pool, [], 2)


def test_domain_oracle_takes_the_domain_first():
    inside = np.array([False, True, False, True, False])
    assert set(domain_oracle_selection(inside, 2).indices) == {1, 3}
    three = domain_oracle_selection(inside, 3, seed=4).indices
    assert {1, 3} <= set(three) and len(three) == 3
    with pytest.raises(ValueError, match="size"):
        domain_oracle_selection(inside, 6)
    nbytes = np.array([5, 7, 5, 9, 5])
    assert set(domain_oracle_selection(inside, budget_bytes=10, num_bytes=nbytes).indices) == {
        1,
        3,
    }
    with pytest.raises(ValueError, match="budget_bytes"):
        domain_oracle_selection(inside, budget_bytes=100, num_bytes=nbytes)


def _text_config(tmp_path, **text):
    from mgd.config import config_from_dict
    from mgd.experiments.select import SelectConfig

    root = _write_fortunes(tmp_path / "fortunes")
    raw = {
        "fraction": 0.5,
        "data": {
            "name": "fortunes",
            "path": str(root),
            "text": {
                "languages": ["en", "es"],
                "target_domain": "es",
                "context": 8,
                "pool_size": 8,
                "target_in_pool": 2,
                "num_target": 2,
                "num_test": 2,
                # One window per document: every selection of k documents has k windows, so
                # all evaluation models share one compiled training function.
                "max_bytes": 8,
                **text,
            },
        },
        "train": {
            "model": {"name": "transformer", "context": 8, "d_model": 8, "num_layers": 1},
            "optimizer": {"name": "adam", "learning_rate": 0.01, "eps_root": 1e-8},
            "batch_size": 2,
            "num_steps": 3,
            "loss": "next_token_loss",
        },
        "outer": {"meta_steps": 1},
        "eval": {"num_seeds": 1, "num_random": 1},
        "baselines": ["dsir", "domain_oracle"],
    }
    return config_from_dict(raw, SelectConfig)


def test_select_text_run_writes_bits_per_byte(tmp_path):
    from mgd.experiments.select import run

    out = tmp_path / "out"
    done = run(_text_config(tmp_path), out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("selected", "random", "full"):
        assert metrics[name]["bits_per_byte"] > 0
    assert set(metrics["baselines"]) == {"dsir", "domain_oracle"}
    # The baselines fill the selection's bytes: with 8-byte documents, 4 documents, 2 Spanish.
    assert metrics["domain"]["bytes"]["dsir"] == metrics["domain"]["bytes"]["selected"] == 32
    assert metrics["domain"]["in_domain_fraction"]["domain_oracle"] == 0.5
    selection = json.loads((out / "selection.json").read_text())
    assert selection["size"] == 4 and len(selection["indices"]) == 4
    assert "bits per byte" in done.table()
    assert (out / "objective.png").is_file()


@pytest.mark.parametrize(
    "text, fraction, message",
    [
        ({"target_domain": "fr"}, 0.5, "target domain 'fr' has no documents"),
        ({}, 0.1, "smaller than one batch"),
        ({"context": 16}, 0.5, "shorter than the windows"),
    ],
)
def test_select_text_bad_input_exits_2_without_clobbering(
    tmp_path, capsys, text, fraction, message
):
    import yaml

    from mgd.cli import main
    from mgd.config import config_to_dict

    cfg = config_to_dict(_text_config(tmp_path, **text))
    cfg["fraction"] = fraction
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["select", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert os.listdir(out) == ["keep.txt"]


def test_per_window_metagradient_sums_to_the_documents_and_batch_indices_are_the_draws(x64):
    # select_data(step_window=...) differentiates per window (groups=None, each window taking
    # its document's weight): by the chain rule the windows' metagradients sum to the document's.
    td, setup = _lm_setup(jnp.float64, num_steps=2)
    weights = jnp.linspace(0.5, 1.5, td.data.num_groups)
    per_doc = setup.metagradient({"data_weights": weights}).grad["data_weights"]
    per_window = setup.replace(data=td.data.replace(groups=None))
    groups = np.asarray(td.data.groups)
    g = per_window.metagradient({"data_weights": weights[groups]}).grad["data_weights"]
    np.testing.assert_allclose(np.bincount(groups, g), per_doc, rtol=1e-10, atol=1e-14)
    order = setup.batch_indices()
    assert order.shape == (2, 4)
    drawn = np.zeros(td.data.num_train, bool)
    drawn[order[order >= 0]] = True
    assert np.all(np.asarray(g)[~drawn] == 0) and np.all(np.asarray(g)[drawn] != 0)


def test_select_text_dsir_start_is_dsirs_selection(tmp_path):
    import dataclasses

    from mgd.experiments.select import run

    cfg = _text_config(tmp_path)
    cfg = dataclasses.replace(cfg, outer=dataclasses.replace(cfg.outer, start="dsir"))
    done = run(cfg, None, progress=False)
    td = mgd.experiments._common.load_text_data(cfg.data)
    dsir = dsir_selection(td.pool.texts, td.target.texts, 4, seed=cfg.seed)
    assert done.result.history[0].info["indices"] == dsir.indices.tolist()
    with pytest.raises(ValueError, match="needs outer.method: exchange"):
        dataclasses.replace(cfg, outer=dataclasses.replace(cfg.outer, method="counts"))


def test_explicit_batch_order_trains_and_differentiates_exactly(x64):
    # An explicit batch order (-1: an empty slot) is what train() and the engine both follow:
    # the metagradient equals jax.grad of the unrolled loop in float64, examples never drawn or
    # drawn only into empty slots get 0, and a new order of the same shape compiles nothing.
    td, setup = _lm_setup(jnp.float64, num_steps=3, model=_BigramLM())
    per_window = setup.replace(data=td.data.replace(groups=None))
    order = np.array([[0, 1, 1, -1], [2, 2, 2, 2], [3, -1, -1, -1]])
    ordered = per_window.replace(batch_order=order)
    np.testing.assert_array_equal(ordered.batch_indices(), order)
    meta = {"data_weights": jnp.linspace(0.5, 1.5, td.data.num_train)}
    value, grad = jax.value_and_grad(unrolled_objective(ordered))(meta)
    res = ordered.metagradient(meta, checkpoint=mgd.KAryTree(2))
    np.testing.assert_allclose(res.value, value, rtol=1e-12)
    np.testing.assert_allclose(res.grad["data_weights"], grad["data_weights"], rtol=1e-10)
    g = np.asarray(res.grad["data_weights"])
    assert np.all(g[:4] != 0) and np.all(g[4:] == 0)
    trained = ordered.train(meta)
    unrolled = jax.lax.fori_loop(
        0, 3, lambda t, s: ordered.step_fn(s, meta, t), ordered.init_state()
    )
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(unrolled.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    with count_compilations() as compiled:
        ordered.replace(batch_order=order[::-1]).metagradient(meta, checkpoint=mgd.KAryTree(2))
    assert compiled == 0
    with pytest.raises(ValueError, match=r"batch_order must be int \(num_steps, batch_size\)"):
        per_window.replace(batch_order=order[:2])
    with pytest.raises(ValueError, match="batch_order"):
        per_window.replace(batch_order=np.full((3, 4), td.data.num_train))


def test_selection_inner_run_is_the_selection_plus_fresh_candidates(x64):
    # select_data(inner_batches="selection"): each batch gives round(share * b) slots to the
    # windows of the selection less a held-out part (weight b / slots), the rest to the
    # held-out documents' windows (all drawn) and a sample of unselected ones (weight 0); a
    # document's score sums exact derivatives of the target loss with respect to its weight-0
    # draws in that run (checked against jax.grad of the unrolled loop).
    from mgd.outer.selection._search import _SelectionRun

    td, setup = _lm_setup(jnp.float64, num_steps=3, model=_BigramLM())
    groups = np.asarray(td.data.groups)
    selected = np.isin(np.arange(td.data.num_groups), [0, 2])
    run = _SelectionRun(setup, 0.5, 0.5)
    trained, weight, draw_group = run(selected, seed=setup.seed)
    order = trained.batch_order
    assert order.shape == (3, 4) and np.all(order >= 0)
    slots = draw_group.reshape(3, 4)
    (kept,) = set(slots[:, :2].ravel())  # one of the two selected documents trains...
    (held,) = {0, 2} - {kept}  # ...the other is held out, all its windows drawn once
    assert kept not in slots[:, 2:]
    assert (slots[:, 2:] == held).sum() == (groups == held).sum()
    np.testing.assert_array_equal(np.asarray(weight), np.where(draw_group == kept, 2.0, 0.0))
    candidates = trained.data.x_train[order[:, 2:].ravel()]
    assert len({c.tobytes() for c in candidates}) == 6  # 6 draws of distinct windows

    def objective(doc_weights):
        return unrolled_objective(trained)({"data_weights": doc_weights[draw_group]})

    doc_weights = jnp.asarray(np.where(np.arange(td.data.num_groups) == kept, 2.0, 0.0))
    want = jax.grad(objective)(doc_weights)
    res = trained.metagradient({"data_weights": weight}, checkpoint=mgd.KAryTree(2))
    score = np.bincount(draw_group, np.asarray(res.grad["data_weights"]), td.data.num_groups)
    np.testing.assert_allclose(score, want, rtol=1e-10, atol=1e-14)
    assert score[held] != 0 and np.count_nonzero(score[~selected]) >= 1
    # select_data runs it: the first meta-step's objective is this run's target loss.
    result = mgd.select_data(
        setup,
        size=2,
        meta_steps=1,
        start=[0, 2],
        inner_batches="selection",
        selection_share=0.5,
        selection_holdout=0.5,
        progress=False,
    )
    np.testing.assert_allclose(result.history[0].objective, res.value, rtol=1e-12)
    with pytest.raises(ValueError, match="inner_batches='selection' needs fixed_budget"):
        mgd.select_data(
            setup,
            size=2,
            meta_steps=1,
            fixed_budget=False,
            inner_batches="selection",
            optimizer=mgd.outer.selection.count_descent(),
        )
    with pytest.raises(ValueError, match="selection_holdout must be in"):
        mgd.select_data(setup, size=2, meta_steps=1, inner_batches="selection", selection_holdout=1)


def test_budget_exchange_with_costs_keeps_the_byte_budget_filled():
    # Costs (a document's bytes): after the rank-ordered swaps the worst selected leave while
    # the subset exceeds the budget, then the best unselected that fit join, in rank order.
    opt = mgd.outer.selection.budget_exchange(
        num_exchange=1, costs=[1.0, 3.0, 1.0, 2.0, 1.0], budget=4
    )
    w = jnp.array([2.0, 2.0, 0.0, 0.0, 0.0])
    g = jnp.array([0.5, 1.0, -2.0, -1.0, 0.1])
    u, _ = opt.update(g, opt.init(w), w)
    # 1 (cost 3, worst) swaps for 2 (cost 1, best); 3 (cost 2) fills the freed bytes; 4 not.
    np.testing.assert_array_equal(w + u, [2.0, 0.0, 2.0, 2.0, 0.0])
    over = jnp.array([2.0, 2.0, 2.0, 0.0, 0.0])  # cost 5 > 4: the worst selected leave first
    u, _ = opt.update(jnp.array([0.5, -1.0, 0.2, 3.0, 3.0]), opt.init(over), over)
    np.testing.assert_array_equal(over + u, [0.0, 2.0, 2.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="both costs= and budget="):
        mgd.outer.selection.budget_exchange(num_exchange=1, budget=4)
    with pytest.raises(ValueError, match="costs must be positive"):
        mgd.outer.selection.budget_exchange(num_exchange=1, costs=[1.0, 0.0], budget=4)


def test_select_text_byte_budget_and_selection_inner_run(tmp_path):
    import dataclasses

    from mgd.experiments.select import run

    cfg = _text_config(tmp_path, max_bytes=16)
    outer = dataclasses.replace(cfg.outer, budget="bytes", inner_batches="selection", meta_steps=2)
    # No baselines: their byte budget is tested above; here only the selection's.
    cfg = dataclasses.replace(cfg, outer=outer, baselines=())
    done = run(cfg, None, progress=False)
    td = mgd.experiments._common.load_text_data(cfg.data)
    sizes = np.asarray(td.pool.num_bytes)
    budget = int(cfg.fraction * sizes.sum())
    for step in done.result.history:
        assert sizes[step.info["indices"]].sum() <= budget
    # The random start fills the budget (up to the first document that does not fit).
    assert sizes[done.result.history[0].info["indices"]].sum() > budget - sizes.max()
    with pytest.raises(ValueError, match="outer.budget: bytes needs outer.method: exchange"):
        dataclasses.replace(cfg.outer, method="counts", inner_batches="pool")


def test_select_data_check_keeps_only_proposals_that_pass(tmp_path):
    # A proposal (the update rule's new subset) is taken only if check(new) <= check(current);
    # a check that accepts everything gives the unchecked trajectory.
    td, setup = _lm_setup(num_steps=2)
    n = td.data.num_groups
    kwargs = dict(size=3, meta_steps=3, reseed=True, progress=False)
    opt = lambda: mgd.outer.selection.budget_exchange(num_exchange=2, momentum=0.5)  # noqa: E731
    plain = mgd.select_data(setup, optimizer=opt(), **kwargs)
    always = mgd.select_data(setup, optimizer=opt(), check=lambda idx: 0.0, **kwargs)
    assert [h.info["indices"] for h in always.history] == [h.info["indices"] for h in plain.history]
    np.testing.assert_array_equal(always.weights, plain.weights)
    # A check that prefers low candidate numbers: only proposals that lower their sum pass.
    calls = []

    def check(idx):
        calls.append(np.asarray(idx).tolist())
        return float(np.sum(idx))

    res = mgd.select_data(setup, optimizer=opt(), check=check, **kwargs)
    current = res.history[0].info["indices"]
    assert calls[0] == current  # the start is checked first
    for h, nxt in zip(res.history, [*res.history[1:], None], strict=True):
        assert h.info["indices"] == current
        proposed = h.info["check"]
        if proposed is not None:
            assert h.info["accepted"] == (proposed <= sum(current))
        after = res.indices.tolist() if nxt is None else nxt.info["indices"]
        if not h.info["accepted"]:
            assert after == current
        current = after
    assert sum(res.indices) <= sum(res.history[0].info["indices"])
    taken = [h.step for h in res.history if h.info["accepted"] and h.info["check"] is not None]
    assert res.best_step == (taken[-1] if taken else -1)
    assert len(res.indices) == 3 and res.indices.max() < n
    # Killed after 2 meta-steps and resumed: the same proposals, checks and result.
    save = dict(save_dir=tmp_path / "ck", optimizer=opt(), check=check)
    mgd.select_data(setup, **{**kwargs, "meta_steps": 2}, **save)
    resumed = mgd.select_data(setup, **kwargs, **save, resume=True)
    assert [h.info for h in resumed.history] == [h.info for h in res.history]
    np.testing.assert_array_equal(resumed.indices, res.indices)
    with pytest.raises(ValueError, match="check needs fixed_budget=True"):
        mgd.select_data(
            setup,
            size=3,
            meta_steps=1,
            fixed_budget=False,
            optimizer=mgd.outer.selection.count_descent(),
            check=check,
        )


def test_retrained_loss_trains_on_the_subset_alone():
    # The check trains only on the subset's windows: changing unselected documents' tokens
    # changes nothing; changing a selected one does.
    td, setup = _lm_setup(num_steps=3)
    check = mgd.outer.selection.retrained_loss(setup, seeds=[5, 6], metric="bits_per_byte")
    subset = np.array([0, 2, 3])
    value = check(subset)
    assert np.isfinite(value) and value > 0
    groups = np.asarray(td.data.groups)
    x = td.data.x_train.copy()
    x[~np.isin(groups, subset)] = 7
    assert (
        mgd.outer.selection.retrained_loss(
            setup.replace(data=td.data.replace(x_train=x)), seeds=[5, 6], metric="bits_per_byte"
        )(subset)
        == value
    )
    x = td.data.x_train.copy()
    x[groups == 2] = 7
    assert (
        mgd.outer.selection.retrained_loss(
            setup.replace(data=td.data.replace(x_train=x)), seeds=[5, 6], metric="bits_per_byte"
        )(subset)
        != value
    )
    with pytest.raises(ValueError, match="not metric='accuracy'"):
        mgd.outer.selection.retrained_loss(setup, seeds=[1], metric="accuracy")(subset)
    with pytest.raises(ValueError, match="seeds is empty"):
        mgd.outer.selection.retrained_loss(setup, seeds=[])


def test_select_text_check_holds_out_validation_documents(tmp_path):
    import dataclasses

    from mgd.experiments.select import run

    cfg = _text_config(tmp_path, num_target=4)
    outer = dataclasses.replace(cfg.outer, check_share=0.5, check_seeds=1, meta_steps=1)
    cfg = dataclasses.replace(cfg, outer=outer, baselines=())
    done = run(cfg, None, progress=False)
    td = mgd.experiments._common.load_text_data(cfg.data)
    # The objective's target split: the first two validation documents' windows only.
    x, _, _ = token_windows(td.target.texts[:2], 8)
    np.testing.assert_array_equal(done.setup.data.x_val, x)
    check = done.metrics["check"]
    assert check["held_out_documents"] == 2 and check["seeds"] == [20_000]
    kept = [h.info["kept"] for h in done.result.history]
    assert kept == sorted(kept, reverse=True)  # the kept subset's check never worsens
    assert check["final_bits_per_byte"] == kept[-1] <= check["start_bits_per_byte"]
    with pytest.raises(ValueError, match=r"outer.check_share must be in \[0, 1\)"):
        dataclasses.replace(cfg.outer, check_share=1.0)
    bad = dataclasses.replace(cfg, outer=dataclasses.replace(outer, check_share=0.1))
    with pytest.raises(ValueError, match="leaves 0 for the check"):
        run(bad, None, progress=False)
