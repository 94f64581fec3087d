"""Shared fixtures: tiny random models of every family (built from configs, no download) and a
fresh cache for the embedded model, so each test session exercises the real cold path once."""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
import torch

# Never reach a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from graftlens.models.tiny import TINY_VOCAB, tiny_configs, tiny_model  # noqa: E402

VOCAB = TINY_VOCAB


FAMILIES = list(tiny_configs())


def make_tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in fp32, eval mode, its default attention."""
    return tiny_model(family, seed).model


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def graftlens_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A cache directory for this test session (GRAFTLENS_CACHE wins if the caller set it)."""
    path = os.environ.get("GRAFTLENS_TEST_CACHE") or str(tmp_path_factory.mktemp("graftlens-cache"))
    os.environ["GRAFTLENS_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def embedded(graftlens_cache: str):
    """The embedded SmolLM2-135M model, loaded once per session."""
    from graftlens import load_model

    return load_model("smollm2-135m")


def make_tiny_tokenizer():
    """A word-level tokenizer over ``VOCAB`` tokens (``w0 w1 ...``), saved with the tiny models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def save_tiny_model(family: str, path, seed: int = 0):
    """Save a tiny model and its tokenizer as a ``save_pretrained`` directory; return the model."""
    model = make_tiny_model(family, seed)
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return model


def make_text_tokenizer(texts: list[str], vocab_size: int = 320):
    """A small byte-level BPE tokenizer trained on ``texts`` (offsets fold the leading space in, like GPT-2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def make_text_model(family: str, tokenizer, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of ``family`` whose vocabulary fits ``tokenizer``."""
    from transformers import AutoModelForCausalLM

    config = tiny_configs()[family]()
    config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def small_facts():
    """A small new-fact dataset (4 facts) for fast tests."""
    from graftlens.data.dataset import build_dataset

    return build_dataset("fake_actors", n_facts=4, seed=0)


@pytest.fixture(scope="session")
def text_tokenizer(small_facts):
    texts = [t.text for t in small_facts.train] + [e.prompt + e.target for e in small_facts.test]
    return make_text_tokenizer(texts)


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory, text_tokenizer) -> str:
    """A tiny llama with the BPE tokenizer, saved as a ``save_pretrained`` directory."""
    path = tmp_path_factory.mktemp("text-llama")
    make_text_model("llama", text_tokenizer).save_pretrained(path)
    text_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def et_model_dir(tmp_path_factory) -> str:
    """A tiny llama whose tokenizer has every object and box label as one token."""
    from graftlens.data.entity_tracking import OBJECTS

    texts = [
        " ".join(OBJECTS) * 3,
        " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3,
        "The apple is in Box F, the key. Box contains the",
    ] * 20
    tokenizer = make_text_tokenizer(texts, vocab_size=400)
    path = tmp_path_factory.mktemp("et-llama")
    make_text_model("llama", tokenizer, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def donor_dir(tmp_path_factory, text_tokenizer) -> str:
    """A second tiny llama with the same tokenizer: the CMAP donor."""
    path = tmp_path_factory.mktemp("donor-llama")
    make_text_model("llama", text_tokenizer, seed=7).save_pretrained(path)
    text_tokenizer.save_pretrained(path)
    return str(path)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-examples",
        default="30",
        help="mutated recipes the recipe fuzzer runs per shipped recipe (tests/test_recipe_fuzzer.py; default 30, seeded)",
    )


class Interrupted(RuntimeError):
    """What a kill at that moment leaves behind: raised by :func:`stopped_after`."""


@contextlib.contextmanager
def stopped_after(batches: int):
    """Within it, a run stops (raising :class:`Interrupted`) once it has written ``batches``
    units (a configuration's rows of one batch each), as a kill after that commit would."""
    from graftlens.experiments.units import UnitWriter

    original = UnitWriter.add
    written = itertools.count()

    def add(self, unit, rows):
        if next(written) >= batches:
            raise Interrupted(f"stopped after {batches} batches")
        original(self, unit, rows)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UnitWriter, "add", add)
        yield
