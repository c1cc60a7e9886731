#!/usr/bin/env python3
"""gen_model_fixtures.py: golden outputs of transformers' LlamaForCausalLM for tests/test_model.cpp.

Run in the fixture venv (scripts/make_venv.sh):
    /opt/frugal-venv/bin/python scripts/gen_model_fixtures.py
Writes tests/fixtures/model/<name>/ for each config:
  config.json          HF config (transformers 5 writes `rope_parameters`; the legacy `rope_theta` and
                       `rope_scaling` keys of published Llama-3.1 checkpoints are written alongside)
  model.safetensors    weights, BF16 (all values bf16-representable, so nothing is lost)
  reference.safetensors
    input_ids [B,T] I32, labels [B,T] I32 (-100 = ignored)
    logits [B,T,V] F32, loss [] F32 (HF mean CE over shifted labels)
    grad.inputs_embeds [B,T,C] F32        d loss / d inputs_embeds
    grad.<hf tensor name> F32             d loss / d weight for a few weights
    emu.logits, emu.loss, emu.grad.inputs_embeds: the same in frugal's precision, emulated in torch
                       (bf16-rounded GEMM inputs and output gradients, fp32 accumulation)
    nf4.logits [B,T,V] F32, nf4.loss [] F32: the same model with every decoder linear weight replaced
                       by bitsandbytes' own NF4 round trip (quantize_4bit nf4, blocksize 64,
                       compress_statistics=True, then dequantize_4bit), quantized from bf16.
The forward runs in fp32 with eager attention; the reference is thus fp32 math on bf16 weights.
"""
import json
import os

import torch
import bitsandbytes.functional as bnbf
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

B, T = 2, 37
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "model")

CONFIGS = {
    # (A) GQA: 6 query heads share 2 KV heads, default RoPE, untied lm_head.
    "gqa": dict(
        cfg=dict(vocab_size=131, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                 max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0,
                 rope_scaling=None, tie_word_embeddings=False),
        seed=1234,
        grads=["model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
               "model.layers.0.input_layernorm.weight", "model.norm.weight", "lm_head.weight"],
    ),
    # (B) Llama-3.1 style rope scaling with original_max_position_embeddings (16) < T (37), so the
    # llama3 frequency rewrite matters; tied embeddings (lm_head = embed_tokens).
    "llama3_tied": dict(
        cfg=dict(vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                 max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                 rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                 tie_word_embeddings=True),
        seed=4321,
        grads=["model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
               "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"],
    ),
}

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def init_weights(model, g):
    # std 0.15 so attention scores and MLP activations are O(1), not trivial; norms around 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
            p.copy_(p.bfloat16().float())  # bf16-representable: frugal loads them exactly


def run(model, ids, labels, grads):
    """Forward with inputs_embeds = embed(ids) kept in the graph (tied grads include both uses)."""
    model.zero_grad(set_to_none=True)
    emb = model.model.embed_tokens(ids)
    emb.retain_grad()
    out = model(inputs_embeds=emb, labels=labels)
    out.loss.backward()
    params = dict(model.named_parameters())
    res = {"logits": out.logits.detach().float().contiguous(),
           "loss": out.loss.detach().float().reshape([]).contiguous(),
           "grad.inputs_embeds": emb.grad.detach().float().contiguous()}
    for n in grads:
        res["grad." + n] = params[n].grad.detach().float().contiguous()
    return res


class _RoundFwd(torch.autograd.Function):  # bf16-round a GEMM input, straight-through gradient
    @staticmethod
    def forward(ctx, x):
        return x.bfloat16().float()

    @staticmethod
    def backward(ctx, g):
        return g


class _RoundBwd(torch.autograd.Function):  # identity; bf16-round the gradient entering the GEMM
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.bfloat16().float()


def emulate_frugal_precision(model):
    """Hooks making every nn.Linear (decoder linears and lm_head) a bf16-operand GEMM as frugal
    does: inputs rounded to bf16 in forward, output gradients rounded to bf16 in backward, fp32
    accumulation; norms, RoPE, attention, SiLU and the loss stay fp32. Returns the hook handles."""
    hs = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            hs.append(m.register_forward_pre_hook(lambda mod, args: (_RoundFwd.apply(args[0]),)))
            hs.append(m.register_forward_hook(lambda mod, args, out: _RoundBwd.apply(out)))
    return hs


def nf4_roundtrip(w):
    """bitsandbytes NF4 (blocksize 64, double quant) of the bf16 weight, dequantized back.

    bitsandbytes 0.50's CPU dequantize_4bit kernel takes the 2-D shape as rows of blocks and picks
    the wrong absmax when the row length is not a multiple of the blocksize (96 % 64 here): 2-D
    results are off by ~20% relative. Quantization is flat (row-major) anyway, so the tensor is
    quantized and dequantized as one flat row (numel % 64 == 0: every block aligned), and checked
    against bitsandbytes' generic flat dequantization (backends/default) with the nested absmax.
    """
    flat = w.bfloat16().reshape(-1).contiguous()
    assert flat.numel() % 64 == 0
    q, st = bnbf.quantize_4bit(flat, blocksize=64, compress_statistics=True, quant_type="nf4")
    deq = bnbf.dequantize_4bit(q, st).reshape(-1)  # the CPU kernel returns [1, numel]
    absmax = bnbf.dequantize_blockwise(st.absmax, st.state2) + st.offset
    gen = _dequantize_4bit_compute(q.reshape(-1), absmax, st.code, 64, (flat.numel(),), torch.bfloat16)
    assert torch.equal(deq, gen), "bitsandbytes CPU and generic NF4 dequantization disagree"
    return deq.float().reshape(w.shape)


def main():
    torch.set_grad_enabled(True)
    for name, spec in CONFIGS.items():
        g = torch.Generator().manual_seed(spec["seed"])
        kw = dict(spec["cfg"])
        rope_scaling = kw.pop("rope_scaling")
        if rope_scaling is not None:
            kw["rope_scaling"] = dict(rope_scaling)  # transformers adds rope_theta into it
        cfg = LlamaConfig(**kw, attn_implementation="eager")
        cfg.architectures = ["LlamaForCausalLM"]
        model = LlamaForCausalLM(cfg).float().eval()
        assert model.config._attn_implementation == "eager"
        init_weights(model, g)

        V = cfg.vocab_size
        ids = torch.randint(0, V, (B, T), generator=g)
        labels = ids.clone()
        labels[0, :5] = -100                              # a masked prompt
        labels[torch.rand((B, T), generator=g) < 0.2] = -100  # and scattered holes

        ref = run(model, ids, labels, spec["grads"])
        # the same model in frugal's precision: how far bf16 GEMM operands alone move each output
        hooks = emulate_frugal_precision(model)
        emu = run(model, ids, labels, spec["grads"])
        for h in hooks:
            h.remove()
        for k in ["logits", "loss", "grad.inputs_embeds"]:
            ref["emu." + k] = emu[k]
        rel = lambda a, b: ((a - b).norm() / b.norm()).item()
        print(f"{name}: bf16-emulated vs fp32: " + ", ".join(
            f"{k} {rel(emu[k], ref[k]):.2e}" for k in emu if k != "loss"))

        # NF4 variant: replace every decoder linear weight by its bitsandbytes round trip.
        with torch.no_grad():
            for i in range(cfg.num_hidden_layers):
                layer = model.model.layers[i]
                for lin in LINEARS:
                    mod = layer.get_submodule(lin)
                    mod.weight.copy_(nf4_roundtrip(mod.weight))
            out = model(inputs_embeds=model.model.embed_tokens(ids), labels=labels)
        ref["nf4.logits"] = out.logits.float().contiguous()
        ref["nf4.loss"] = out.loss.float().reshape([]).contiguous()
        init_weights(model, torch.Generator().manual_seed(spec["seed"]))  # restore (same draws)

        ref["input_ids"] = ids.to(torch.int32).contiguous()
        ref["labels"] = labels.to(torch.int32).contiguous()

        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        # config.json: transformers' own serialization plus the legacy rope keys.
        cj = json.loads(cfg.to_json_string())
        cj["architectures"] = ["LlamaForCausalLM"]
        cj["torch_dtype"] = "bfloat16"
        cj["rope_theta"] = spec["cfg"]["rope_theta"]
        cj["rope_scaling"] = rope_scaling
        cj.pop("attn_implementation", None)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cj, f, indent=2, sort_keys=True)
        sd = {k: v.detach().bfloat16().contiguous() for k, v in model.state_dict().items()
              if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        save_file(ref, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
        print(f"{name}: loss {ref['loss'].item():.6f}  nf4 loss {ref['nf4.loss'].item():.6f}  "
              f"logits std {ref['logits'].std().item():.3f}  "
              f"valid targets {(labels[:, 1:] != -100).sum().item()}")


if __name__ == "__main__":
    main()
