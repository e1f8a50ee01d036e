"""layer_groups(by="block_type"): transformer parameters grouped by what they do.

Ground truth is the parameter list of each architecture written out by hand: every trainable
parameter lands in exactly one group, and the group's label is the one the docstring promises.
"""

import pytest
import torch
from torch import nn

import hesse


class HandAttention(nn.Module):
    """Separate q/k/v projections, as in BERT or LLaMA."""

    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)


class HandBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = HandAttention(d)
        self.norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)


class HandLM(nn.Module):
    def __init__(self, d=4, vocab=7, n_layer=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(HandBlock(d) for _ in range(n_layer))
        self.lm_head = nn.Linear(d, vocab, bias=False)


def encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def test_torch_encoder_block_types():
    groups = hesse.layer_groups(encoder(), by="block_type")
    expected = {}
    for i in range(2):
        p = f"layers.{i}."
        expected[f"layers.{i} attn.qkv"] = [p + "self_attn.in_proj_weight", p + "self_attn.in_proj_bias"]
        expected[f"layers.{i} attn.out"] = [p + "self_attn.out_proj.weight", p + "self_attn.out_proj.bias"]
        expected[f"layers.{i} mlp.in"] = [p + "linear1.weight", p + "linear1.bias"]
        expected[f"layers.{i} mlp.out"] = [p + "linear2.weight", p + "linear2.bias"]
        expected[f"layers.{i} layernorm"] = [p + s for s in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")]
    assert groups == expected


def test_hand_written_separate_projections_and_pooling():
    model = HandLM()
    groups = hesse.layer_groups(model, by="block_type")
    assert groups["embed.token"] == ["embed_tokens.weight"]
    assert groups["head"] == ["lm_head.weight"]
    for i in range(2):
        for kind, mod in [("attn.q", "attn.q_proj"), ("attn.k", "attn.k_proj"), ("attn.v", "attn.v_proj"),
                          ("attn.out", "attn.o_proj"), ("mlp.in", "fc1"), ("mlp.out", "fc2"),
                          ("layernorm", "norm")]:
            assert groups[f"blocks.{i} {kind}"] == [f"blocks.{i}.{mod}.weight", f"blocks.{i}.{mod}.bias"]
    pooled = hesse.layer_groups(model, by="block_type", pool_layers=True)
    assert set(pooled) == {"embed.token", "attn.q", "attn.k", "attn.v", "attn.out", "mlp.in", "mlp.out",
                           "layernorm", "head"}
    assert pooled["attn.k"] == ["blocks.0.attn.k_proj.weight", "blocks.0.attn.k_proj.bias",
                                "blocks.1.attn.k_proj.weight", "blocks.1.attn.k_proj.bias"]


@pytest.mark.parametrize("by", ["module", "block_type"])
@pytest.mark.parametrize("make", [encoder, HandLM])
def test_every_trainable_parameter_in_exactly_one_group(make, by):
    model = make()
    next(model.parameters()).requires_grad_(False)
    groups = hesse.layer_groups(model, by=by)
    flat = [n for names in groups.values() for n in names]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(flat) == sorted(trainable) and len(flat) == len(set(flat))


def test_default_is_module_grouping():
    model = encoder()
    assert hesse.layer_groups(model) == hesse.layer_groups(model, by="module")
    assert "layers.0.linear1 (Linear)" in hesse.layer_groups(model)


def test_bad_by_is_refused():
    with pytest.raises(ValueError, match="by must be one of"):
        hesse.layer_groups(encoder(), by="layer")
    with pytest.raises(ValueError, match="needs by='block_type'"):
        hesse.layer_groups(encoder(), pool_layers=True)


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=50, max_position_embeddings=16)
    return transformers.BertForMaskedLM(cfg)


def test_gpt2_block_types():
    groups = hesse.layer_groups(_tiny_gpt2(), by="block_type")
    assert groups["embed.token"] == ["transformer.wte.weight"]  # lm_head is tied to wte
    assert groups["embed.position"] == ["transformer.wpe.weight"]
    assert groups["layernorm"] == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    for i in range(2):
        p = f"transformer.h.{i}."
        assert groups[f"h.{i} attn.qkv"] == [p + "attn.c_attn.weight", p + "attn.c_attn.bias"]
        assert groups[f"h.{i} attn.out"] == [p + "attn.c_proj.weight", p + "attn.c_proj.bias"]
        assert groups[f"h.{i} mlp.in"] == [p + "mlp.c_fc.weight", p + "mlp.c_fc.bias"]
        assert groups[f"h.{i} mlp.out"] == [p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"]
        assert groups[f"h.{i} layernorm"] == [p + s for s in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")]
    assert len(groups) == 3 + 2 * 5


def test_bert_block_types():
    groups = hesse.layer_groups(_tiny_bert(), by="block_type")
    assert groups["embed.token"] == ["bert.embeddings.word_embeddings.weight"]
    assert groups["embed.position"] == ["bert.embeddings.position_embeddings.weight"]
    assert groups["embed.token_type"] == ["bert.embeddings.token_type_embeddings.weight"]
    assert groups["head"] == ["cls.predictions.bias", "cls.predictions.transform.dense.weight",
                              "cls.predictions.transform.dense.bias"]
    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        for kind, mod in [("attn.q", "attention.self.query"), ("attn.k", "attention.self.key"),
                          ("attn.v", "attention.self.value"), ("attn.out", "attention.output.dense"),
                          ("mlp.in", "intermediate.dense"), ("mlp.out", "output.dense")]:
            assert groups[f"layer.{i} {kind}"] == [p + mod + ".weight", p + mod + ".bias"]
    assert "other" not in groups
