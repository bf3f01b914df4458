"""find_layers on transformers: Hugging Face BERT/RoBERTa/GPT-2/ViT/T5 built from tiny configs, timm-style ViT and
torch's nn.TransformerEncoder: the embedding group, then one layer per block, head excluded; then FreezeOut on them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freezeout import FreezeOut, find_layers, param_groups
from freezeout.layers import as_layers
from freezeout.tensors import run_model
from tests.helpers.lookalikes import VisionTransformer

hf = pytest.importorskip("tests.helpers.hf", exc_type=ImportError, reason="needs the [transformers] extra")

# name -> (builder, input builder, the layers expected, modules with parameters left to the rest that run first)
CASES = {
    "bert": (lambda: hf.tiny_bert("model"), hf.tokens, ["embeddings", "encoder.layer.0", "encoder.layer.1"], []),
    "bert-classify": (
        lambda: hf.tiny_bert("classify"),
        hf.tokens,
        ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1"],
        [],
    ),
    "bert-mlm": (
        lambda: hf.tiny_bert("mlm"),
        hf.tokens,
        [
            "bert.embeddings.token_type_embeddings+bert.embeddings.position_embeddings+bert.embeddings.LayerNorm",
            "bert.encoder.layer.0",
            "bert.encoder.layer.1",
        ],
        ["bert.embeddings.word_embeddings"],  # tied to the decoder: it trains with the head
    ),
    "roberta": (
        hf.tiny_roberta,
        hf.tokens,
        ["roberta.embeddings", "roberta.encoder.layer.0", "roberta.encoder.layer.1"],
        [],
    ),
    "gpt2": (hf.tiny_gpt2, hf.tokens, ["transformer.wpe", "transformer.h.0", "transformer.h.1"], ["transformer.wte"]),
    "vit": (hf.tiny_vit, hf.pixels, ["vit.embeddings", "vit.layers.0", "vit.layers.1"], []),
    # embed_tokens' weight is also `shared`'s, a module that never runs: listed with the layer, no tie
    "t5-encoder": (
        hf.tiny_t5_encoder,
        hf.tokens,
        ["encoder.embed_tokens+shared.weight", "encoder.block.0", "encoder.block.1"],
        [],
    ),
}


def names(model: nn.Module, layers: list) -> list[str]:
    """Each layer's module name; a group as ``member+member+...``; a parameter by its first name."""
    by_id = {id(m): n for n, m in model.named_modules()} | {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(x)] if isinstance(x, nn.Module) else "+".join(by_id[id(m)] for m in x) for x in layers]


def run_first(model: nn.Module, layers: list, example) -> list[str]:
    """Modules holding parameters of their own, outside every layer, that start running before the first layer."""
    inside = {id(m) for layer in as_layers(layers) for m in layer.all_modules()}
    first = as_layers(layers)[0].modules[0]
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n))
        for n, m in model.named_modules()
        if m is first or (id(m) not in inside and next(m.parameters(recurse=False), None) is not None)
    ]
    with torch.no_grad():
        run_model(model, example)
    for h in hooks:
        h.remove()
    return order[: order.index(next(n for n, m in model.named_modules() if m is first))]


@pytest.mark.parametrize("case", sorted(CASES))
def test_embedding_then_one_layer_per_block_head_excluded(case):
    build, example, want, tied = CASES[case]
    model = build()
    layers = find_layers(model, example(batch=1))
    assert names(model, layers) == want
    assert run_first(model, layers, example(batch=1)) == tied


def test_timm_style_vit_and_torch_transformer_encoder():
    vit = VisionTransformer(depth=3)
    got = names(vit, find_layers(vit, torch.randn(1, 3, 8, 8)))
    assert got == ["patch_embed+cls_token+pos_embed", "blocks.0", "blocks.1", "blocks.2"]
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    bare = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(16), enable_nested_tensor=False)
    x = torch.randn(1, 5, 16)
    assert names(bare, find_layers(bare, x)) == ["layers.0", "layers.1", "layers.2"]  # the norm is the head
    bare.norm = None  # a model ending with a block: that block is its head, it trains to the end
    assert names(bare, find_layers(bare, x)) == ["layers.0", "layers.1"]


def test_batch_encoding_and_dict_inputs_find_the_same_layers():
    model = hf.tiny_bert("classify")
    enc = hf.tokens(batch=1)
    assert type(enc).__name__ == "BatchEncoding" and not isinstance(enc, dict)
    assert find_layers(model, enc) == find_layers(model, dict(enc))
    # a tuple is passed as positional arguments, a tensor as the one argument
    assert find_layers(model, (enc["input_ids"], enc["attention_mask"])) == find_layers(model, enc["input_ids"])


def activation_bytes(model: nn.Module, x: dict) -> int:
    """``saved_tensor_bytes`` of the loss, less the parameters autograd saves (resident anyway)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_of(run_model(model, x))
    return sum(seen.values())


def loss_of(out) -> torch.Tensor:
    """The model's loss if it computed one, else a loss on what its head gives (BertModel: the pooler's output)."""
    if out.get("loss") is not None:
        return out.loss
    key = next(k for k in ("logits", "pooler_output", "last_hidden_state") if out.get(k) is not None)
    return out[key].square().mean()


def labelled(case: str, step: int) -> dict:
    """A batch for ``case``, with labels where the model computes its own loss."""
    example = CASES[case][1]
    batch = dict(example(batch=2, seed=step))
    if case in ("bert-mlm", "gpt2"):
        batch["labels"] = batch["input_ids"]
    elif case in ("bert-classify", "roberta", "vit"):
        batch["labels"] = torch.tensor([step % 3, (step + 1) % 3])
    return batch


@pytest.mark.parametrize("case", sorted(CASES))
def test_freezeout_trains_to_the_end_frozen_layers_still_and_out_of_backward(case):
    build = CASES[case][0]
    model = build()
    layers = find_layers(model, labelled(case, 0))
    opt = torch.optim.AdamW(param_groups(model, layers, weight_decay=0.01), lr=1e-3)
    total = 10  # linear, t0 = 0.2: the last of 3 layers freezes at step 8 of 10
    sched = FreezeOut(opt, layers, total, t0=0.2, schedule="linear")
    frozen_at: dict[int, list[torch.Tensor]] = {}
    for step in range(total):
        model.train()
        opt.zero_grad()
        loss_of(run_model(model, labelled(case, step))).backward()
        opt.step()
        sched.step()
        for i in range(sched.num_frozen):
            frozen_at.setdefault(i, [p.detach().clone() for p in as_layers([layers[i]])[0].parameters()])
        if sched.num_frozen == len(layers) and "head" not in frozen_at:
            head = [p for p in model.parameters() if p.requires_grad]
            frozen_at["head"] = [p.detach().clone() for p in head]
    assert sched.num_frozen == len(layers) == 3
    for i in range(3):
        now = as_layers([layers[i]])[0].parameters()
        assert all(torch.equal(a, b) for a, b in zip(frozen_at[i], now, strict=True)), f"layer {i} moved"
    assert any(not torch.equal(a, b) for a, b in zip(frozen_at["head"], head, strict=True))  # the head trains on

    # Everything frozen: autograd keeps what a hand-frozen copy keeps, whose head alone trains (its tied
    # embedding's output detached by hand), not the frozen blocks' activations.
    oracle = build()
    oracle.load_state_dict(model.state_dict())
    mine = {id(p) for layer in as_layers(layers) for p in layer.parameters()}
    for (_, p), q in zip(model.named_parameters(), oracle.parameters(), strict=True):
        q.requires_grad_(id(p) not in mine)
    by_name = dict(oracle.named_modules())
    for name in CASES[case][3]:
        by_name[name].register_forward_hook(lambda m, args, out: out.detach())
    oracle.train()
    for layer in as_layers(find_layers(oracle, labelled(case, 0))):
        for m in layer.modules:
            m.eval()
    x = labelled(case, 0)
    ours, want = activation_bytes(model, x), activation_bytes(oracle, x)
    # The cut is at the frozen layers' inputs, the oracle's at the tied embedding's output: in between, at most
    # one hidden-state tensor is recorded, and freed as soon as the cut detaches it (GPT-2: the dropout).
    assert want <= ours <= want + 2 * 7 * hf.HIDDEN * 4
    assert ours < 0.3 * activation_bytes(build().train(), x)  # the frozen blocks' activations are gone


class FunctionalLM(nn.Module):
    """A head that reads the token embedding's weight by hand (``h @ wte.weight.T``: no module holds it twice);
    a forward that first reads that weight's dtype, as Hugging Face's ``model.dtype`` does."""

    def __init__(self, vocab: int = 11, dim: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(8, dim)
        self.h = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        dtype = self.wpe.weight.dtype  # metadata: not a use of the weight
        x = (self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))).to(dtype)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def test_a_weight_used_again_after_its_module_is_tied_a_dtype_read_is_no_use():
    m = FunctionalLM()
    assert names(m, find_layers(m, torch.randint(0, 11, (1, 5)))) == ["wpe", "h.0", "h.1"]
