"""The config fields' metadata: one validation for Python and the command line, flags and
HParams made from the fields, and the resume comparison."""

import dataclasses

import pytest

from jaxae import config
from jaxae.cli import sweep, train
from jaxae.config import ConfigError, Member, ModelConfig, TrainConfig


@pytest.fixture
def classifier_dir():
    """No digit classifier: nothing here trains or scores a model."""


CONFIGS = (ModelConfig, TrainConfig)


def test_every_field_has_its_help_and_check():
    for cls in CONFIGS:
        for f in dataclasses.fields(cls):
            assert f.metadata["help"] and callable(f.metadata["check"]), (cls, f.name)
            # the default passes its own check unchanged
            assert config.check_field(f, f.default) == f.default, (cls, f.name)


# (config, field, bad value, the one line that says why)
BAD = [
    (ModelConfig, "latent", 0, "latent must be a positive integer, got 0"),
    (ModelConfig, "hidden", (8, 0), "hidden must be a positive integer, got 0"),
    (ModelConfig, "hidden", 8, "hidden must be a sequence, got 8"),
    (ModelConfig, "beta", float("nan"), "beta must be >= 0, got nan"),
    (ModelConfig, "kind", "gan", "kind must be one of ('ae', 'vae'), got 'gan'"),
    (ModelConfig, "warmup", -1, "warmup must be >= 0, got -1"),
    (ModelConfig, "lr", 0.0, "lr must be > 0, got 0.0"),
    (ModelConfig, "image_shape", (28, 28), "image_shape must have 3 values, got (28, 28)"),
    (TrainConfig, "epochs", 0, "epochs must be a positive integer, got 0"),
    (TrainConfig, "lr", -1.0, "lr must be > 0, got -1.0"),
    (TrainConfig, "lr", float("nan"), "lr must be > 0, got nan"),
    (TrainConfig, "lr", float("inf"), "lr must be > 0, got inf"),
    (TrainConfig, "schedule", "step", "schedule must be one of ('constant', 'cosine', "),
    (TrainConfig, "seed", 1.5, "seed must be an integer, got 1.5"),
    (TrainConfig, "binarize", "no", "binarize must be True or False, got 'no'"),
    (TrainConfig, "eval_examples", -1, "eval_examples must be >= 0, got -1"),
    (TrainConfig, "max_to_keep", 0, "max_to_keep must be a positive integer, got 0"),
    (TrainConfig, "train_size", 0, "train_size must be a positive integer, got 0"),
    (TrainConfig, "dataset", "", "dataset must be a non-empty string, got ''"),
]


@pytest.mark.parametrize(
    "cls,name,value,message", BAD, ids=[f"{b[0].__name__}.{b[1]}" for b in BAD]
)
def test_a_bad_field_is_one_line_that_names_it(cls, name, value, message):
    with pytest.raises(ConfigError) as e:
        cls(**{name: value})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_fields_are_converted_by_their_checks():
    m = ModelConfig(hidden=[16, 8.0], latent="3", beta=2, lr=None)
    assert m.hidden == (16, 8) and m.latent == 3 and m.beta == 2.0 and isinstance(m.beta, float)
    assert TrainConfig(train_size=None, binarize=0).binarize is False


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
        (["--lr", "nan"], "argument --lr: must be > 0, got nan"),
        (["--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
        (["--hidden", "8", "0"], "argument --hidden: must be a positive integer, got 0"),
        (["--seed", "x"], "argument --seed: must be an integer, got x"),
        (["--lr-schedule", "step"], "argument --lr-schedule: invalid choice: 'step'"),
    ],
)
def test_a_flag_is_checked_by_its_field_s_check(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        train.parser().parse_args(argv)
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {message}") and line.endswith(
        "(see python -m jaxae.train --help)"
    )


def test_the_flags_defaults_are_the_fields():
    args = train.parser().parse_args([])
    assert train.model_config(args) == ModelConfig()
    assert train.train_config(args) == TrainConfig()
    args = train.parser().parse_args(["--kind", "ae", "--lr-schedule", "cosine", "--no-binarize"])
    assert train.model_config(args).likelihood == config.default_likelihood("ae")
    assert train.train_config(args) == TrainConfig(schedule="cosine", binarize=False)
    p = sweep.sweep_parser("x", "a sweep", epochs=4, latent=[2])
    t = sweep.build_sweep(p.parse_args([])).train
    assert t == TrainConfig(epochs=4, eval_examples=2000)


def test_every_flag_of_a_field_reaches_its_config():
    argv = ["--kind", "ae", "--arch", "conv", "--hidden", "32", "--latent", "3"]
    argv += ["--likelihood", "bernoulli", "--beta", "2", "--warmup", "5", "--seed", "4"]
    argv += ["--dataset", "fashion_mnist", "--epochs", "2", "--batch-size", "64"]
    argv += ["--lr", "0.01", "--lr-schedule", "linear", "--data-seed", "7", "--no-binarize"]
    argv += ["--train-size", "640", "--chunk", "9", "--eval-examples", "100"]
    args = train.parser().parse_args(argv)
    assert train.model_config(args) == ModelConfig(
        kind="ae", arch="conv", hidden=(32,), latent=3, likelihood="bernoulli", beta=2.0, warmup=5
    )
    assert train.train_config(args) == TrainConfig(
        dataset="fashion_mnist",
        epochs=2,
        batch_size=64,
        lr=0.01,
        schedule="linear",
        seed=4,
        data_seed=7,
        binarize=False,
        train_size=640,
        chunk=9,
        eval_examples=100,
    )


def test_hparams_are_the_marked_fields():
    m = Member(ModelConfig(kind="ae", hidden=(16, 8), latent=3, warmup=5), seed=2)
    t = TrainConfig(lr=0.01, schedule="cosine", epochs=3, data_seed=1, dataset="fashion_mnist")
    assert config.hparams(m, t) == {
        "kind": "ae",
        "arch": "mlp",
        "likelihood": "bernoulli",
        "latent": 3,
        "beta": 1.0,
        "warmup": 5,
        "iw_k": 1,
        "seed": 2,
        "hidden": "16-8",
        "lr": 0.01,
        "lr_schedule": "cosine",
        "batch_size": 128,
        "epochs": 3,
        "data_seed": 1,
        "dataset": "fashion_mnist",
    }
    # a member's own learning rate is its hyperparameter
    own = Member(dataclasses.replace(m.model, lr=0.003), seed=2)
    assert config.hparams(own, t)["lr"] == 0.003


# --- resuming: the saved config compared field by field ------------------------------------


def test_the_resumable_fields_are_marked_once():
    assert config.RESUMABLE == {
        "epochs", "chunk", "eval_batch", "eval_examples", "max_to_keep", "keep"
    }  # fmt: skip


def _saved(model=None, **train):
    """A one-model run's config as ``to_dict`` writes it."""
    return {
        "type": "model",
        "model": config.to_dict(model or ModelConfig()),
        "train": config.to_dict(TrainConfig(**train)),
    }


def test_changes_lists_every_changed_field_but_the_resumable_ones():
    saved = _saved(epochs=2, lr=0.001)
    assert config.changes(saved, _saved(epochs=5, chunk=7, eval_examples=9, max_to_keep=1)) == []
    new = _saved(ModelConfig(beta=4.0), epochs=5, lr=0.01, batch_size=64)
    assert config.changes(saved, new) == [
        ("model.beta", 4.0, 1.0),
        ("train.batch_size", 64, 128),
        ("train.lr", 0.01, 0.001),
    ]


def test_a_field_missing_from_an_older_run_had_its_class_default():
    saved = {"type": "model", "model": {"kind": "vae", "latent": 2}, "train": {"epochs": 2}}
    same = {"type": "model", "model": {"kind": "vae", "latent": 2, "warmup": 0, "lr": None}}
    same["train"] = {"epochs": 2, "lr": 1e-3}  # a model's lr and the run's have own defaults
    new = {"type": "model", "model": {"kind": "vae", "latent": 2, "warmup": 100}}
    assert config.changes(saved, same) == []
    assert config.changes(saved, new) == [("model.warmup", 100, 0)]
    sweep = {"type": "sweep", "sweep": {"members": [{"model": {"kind": "vae"}, "seed": 0}]}}
    newer = {"type": "sweep", "sweep": {"members": [{"model": {"kind": "vae", "beta": 4.0}}]}}
    assert config.changes(sweep, newer) == [("sweep.members.0.model.beta", 4.0, 1.0)]
    # other members: the list as a whole
    more = {"type": "sweep", "sweep": {"members": [{"model": {}}, {"model": {}}]}}
    assert config.changes(sweep, more)[0][0] == "sweep.members"


def test_a_change_names_the_field_and_its_flags():
    assert config.describe_change("train.lr", 0.01, 0.001) == (
        "train.lr 0.01 differs from the run's 0.001 (--lr)"
    )
    assert config.flags_of("sweep.train.schedule") == ("--lr-schedule",)
    assert config.flags_of("sweep.train.binarize") == ("--no-binarize",)
    assert config.flags_of("sweep.members.3.model.latent") == ("--latent", "--latents")
    assert config.flags_of("model.lr") == ("--lrs",)  # a member's own rate: the sweep axis
    assert config.flags_of("train.eval_batch") == () == config.flags_of("sweep.members")
    assert config.describe_change("type", "sweep", "model") == (
        "type sweep differs from the run's model"
    )
