#!/usr/bin/env python3
"""Writes the GGUF fixtures of tests/test_gguf.cpp with PyPI's gguf (GGUFWriter, gguf.quants).

tests/fixtures/gguf/
  quants.gguf       one tensor per ggml type (F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K..Q6_K), each
                    followed by "<name>.ref": gguf-py's dequantize() of it as F32 (the truth for the
                    bit-exact test). Q-types gguf-py can quantize are quantized from random data; the
                    K-types (gguf-py has no quantizer) are random valid blocks with finite fp16 scales.
  tiny_llama.gguf   tests/fixtures/model/gqa (HF LlamaForCausalLM, bf16) converted the way llama.cpp's
                    convert_hf_to_gguf.py does (Q/K rows permuted for ggml's rope, llama.* metadata),
                    tensors stored in a mix of types, plus a byte-level BPE tokenizer ("gpt2", pre
                    "smollm") and a chat template.
  tiny_llama.tokenizer.json   transformers' own tokenizer built from tiny_llama.gguf (reference).
  spm.gguf          tokenizer-only GGUF of model "llama" (SentencePiece: tokens + scores, no merges).
  spm.tokenizer.json          transformers' tokenizer built from spm.gguf (merges derived from scores).
  rope_llama3_tied.gguf, rope_llama31.gguf   config-only GGUFs (llama.* metadata, a small token_embd)
                    with rope_freqs.weight as llama.cpp writes it for HF rope_type "llama3": the
                    parameters of tests/fixtures/model/llama3_tied (factor 4, omp 16, head_dim 16) and
                    of Llama-3.1-8B (factor 8, low 1, high 4, omp 8192, theta 500000, head_dim 128).
Run: /opt/frugal-venv/bin/python scripts/gen_gguf_fixture.py
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
GQA = os.path.join(ROOT, "tests", "fixtures", "model", "gqa")
rng = np.random.default_rng(1234)


def fp16_bytes(x):
    return np.asarray(x, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def random_kblocks(qt, n_blocks):
    """Random valid K-quant blocks: random code/scale bytes, finite fp16 d (and dmin)."""
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    b = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    d = rng.uniform(1e-4, 2e-2, size=n_blocks)
    if qt == QT.Q6_K:  # ql[128] qh[64] scales[16] d
        b[:, 208:210] = fp16_bytes(d)
    elif qt == QT.Q3_K:  # hmask[32] qs[64] scales[12] d
        b[:, 108:110] = fp16_bytes(d)
    elif qt == QT.Q2_K:  # scales[16] qs[64] d dmin
        b[:, 80:82] = fp16_bytes(d)
        b[:, 82:84] = fp16_bytes(rng.uniform(1e-4, 1e-2, size=n_blocks))
    else:  # Q4_K / Q5_K: d, dmin first
        b[:, 0:2] = fp16_bytes(d)
        b[:, 2:4] = fp16_bytes(rng.uniform(1e-4, 1e-2, size=n_blocks))
    return b


def write_quants():
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    # odd row counts; row lengths multiples of the block size (32 or 256)
    cases = [(QT.F32, (3, 37)), (QT.F16, (5, 21)), (QT.BF16, (3, 19)), (QT.Q4_0, (7, 64)), (QT.Q4_1, (5, 96)),
             (QT.Q5_0, (3, 64)), (QT.Q5_1, (5, 32)), (QT.Q8_0, (7, 64)), (QT.Q4_K, (3, 256)), (QT.Q5_K, (3, 256)),
             (QT.Q6_K, (5, 256)), (QT.Q2_K, (3, 512)), (QT.Q3_K, (3, 256))]
    for qt, shape in cases:
        name = qt.name.lower()
        if qt in (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K):
            nb = shape[0] * shape[1] // 256
            raw = random_kblocks(qt, nb).reshape(shape[0], -1)
        else:
            x = rng.standard_normal(shape).astype(np.float32) * 0.05
            x[0, 0] = 0.0
            if qt == QT.F16:  # subnormal, negative zero, large value: exercise the half conversion
                x[0, 1], x[0, 2], x[0, 3] = 3e-7, -0.0, 60000.0
            raw = gguf.quants.quantize(x, qt)
        ref = gguf.quants.dequantize(raw, qt).astype(np.float32).reshape(shape)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qt)
        w.add_tensor(name + ".ref", ref)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def permute(weights, n_head, n_head_kv):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def bf16_to_f32(a):  # torch bf16 tensor -> exact fp32 numpy
    return a.float().numpy()


# byte-level BPE vocabulary of 131 tokens: 3 control tokens, 1 user-defined, the printable ASCII
# bytes (as GPT-2's byte->unicode spells them: space = 'Ġ'), then merges built from them.
def byte_level_vocab(V):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = list(specials) + ["<think>"]
    types = [3, 3, 3, 4]
    base = ["Ġ", "Ċ"] + [chr(c) for c in range(0x21, 0x7F)]
    tokens += base
    types += [1] * len(base)
    merges = ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t", "Ġ w", "Ġ o", "e n", "Ġ c",
              "i t", "i s", "a n", "o r", "e s", "Ġ b", "e d", "Ġ f", "in g", "Ġ p", "o u",
              "Ġ m", "l e", "Ġ d", "Ġ h", "a l", "Ġ 1", "1 2", "Ġ i"]
    for m in merges:
        if len(tokens) >= V:
            break
        tokens.append(m.replace(" ", ""))
        types.append(1)
    used = merges[: len(tokens) - len(specials) - 1 - len(base)]
    # "Ġthe" needs "Ġt" + "he": both are earlier merges, so the list is consistent
    assert len(tokens) == V, (len(tokens), V)
    return tokens, types, used


CHAT = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_model():
    cfg = json.load(open(os.path.join(GQA, "config.json")))
    sd = load_file(os.path.join(GQA, "model.safetensors"))
    H, Hkv, L, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"], cfg["vocab_size"]
    path = os.path.join(OUT, "tiny_llama.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("frugal tiny gqa fixture")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(V)
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    tokens, types, merges = byte_level_vocab(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT)
    # one type per tensor: lossless (F32, BF16) and lossy ones, both layers different
    types_of = {
        "model.embed_tokens.weight": QT.Q8_0, "lm_head.weight": QT.F16, "model.norm.weight": QT.F32,
        0: {"q_proj": QT.Q4_0, "k_proj": QT.Q4_1, "v_proj": QT.Q8_0, "o_proj": QT.F16, "gate_proj": QT.Q5_0,
            "up_proj": QT.Q5_1, "down_proj": QT.Q4_0},
        1: {"q_proj": QT.F32, "k_proj": QT.BF16, "v_proj": QT.F32, "o_proj": QT.BF16, "gate_proj": QT.F16,
            "up_proj": QT.Q8_0, "down_proj": QT.F32},
    }
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

    def add(gname, x, qt):
        x = np.ascontiguousarray(x.astype(np.float32))
        if qt == QT.F32:
            w.add_tensor(gname, x)
        elif qt == QT.F16:
            w.add_tensor(gname, x.astype(np.float16))
        else:
            raw = gguf.quants.quantize(x, qt)
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=qt)

    add("token_embd.weight", bf16_to_f32(sd["model.embed_tokens.weight"]), types_of["model.embed_tokens.weight"])
    for i in range(L):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", bf16_to_f32(sd[p + "input_layernorm.weight"]), QT.F32)
        add(f"blk.{i}.ffn_norm.weight", bf16_to_f32(sd[p + "post_attention_layernorm.weight"]), QT.F32)
        for hf, gg in names.items():
            part = "self_attn" if hf.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            x = bf16_to_f32(sd[f"{p}{part}.{hf}.weight"])
            if hf == "q_proj":
                x = permute(x, H, H)
            elif hf == "k_proj":
                x = permute(x, H, Hkv)
            add(f"blk.{i}.{gg}.weight", x, types_of[i][hf])
    add("output_norm.weight", bf16_to_f32(sd["model.norm.weight"]), QT.F32)
    add("output.weight", bf16_to_f32(sd["lm_head.weight"]), types_of["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_spm():
    # SentencePiece-style vocabulary: <unk> <s> </s>, byte tokens <0x00>..<0xFF>, pieces with scores.
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)  # BYTE
    pieces = ["▁", "e", "t", "a", "o", "h", "n", "s", "r", "é", "▁t", "he", "▁a", "in", "▁the", "er", "on", "▁s", "re",
              "at", "▁th", "en", "▁é", "té", "▁thé", "or", "an", "es", "ed", "▁o"]
    for k, p in enumerate(pieces):
        tokens.append(p)
        scores.append(-float(k) if len(p) > 1 else -1000.0 - k)  # single chars last, like sentencepiece
        types.append(1)
    w = gguf.GGUFWriter(os.path.join(OUT, "spm.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama3_rope_freqs(head_dim, theta, factor, lff, hff, omp):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wl, high_wl = omp / lff, omp / hff
    out = []
    for freq in freqs:
        wl = 2 * np.pi / freq
        if wl < high_wl:
            out.append(1)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (omp / wl - lff) / (hff - lff)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_rope_gguf(name, hidden, heads, kv_heads, ctx, theta, eps, factor, lff, hff, omp, vocab=16):
    w = gguf.GGUFWriter(os.path.join(OUT, name), "llama")
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(2 * hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tensor("token_embd.weight", (rng.standard_normal((vocab, hidden)) * 0.02).astype(np.float16))
    w.add_tensor("rope_freqs.weight", llama3_rope_freqs(hidden // heads, theta, factor, lff, hff, omp))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference_tokenizer(gguf_name, out_name):
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(OUT, gguf_file=gguf_name)
    j = json.loads(t.backend_tokenizer.to_str())
    with open(os.path.join(OUT, out_name), "w") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    write_quants()
    write_model()
    write_spm()
    t = json.load(open(os.path.join(ROOT, "tests", "fixtures", "model", "llama3_tied", "config.json")))
    rs = t["rope_scaling"]
    write_rope_gguf("rope_llama3_tied.gguf", t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"],
                    t["max_position_embeddings"], t["rope_theta"], t["rms_norm_eps"], rs["factor"], rs["low_freq_factor"],
                    rs["high_freq_factor"], rs["original_max_position_embeddings"])
    write_rope_gguf("rope_llama31.gguf", 4096, 32, 8, 131072, 500000.0, 1e-5, 8.0, 1.0, 4.0, 8192, vocab=2)
    reference_tokenizer("tiny_llama.gguf", "tiny_llama.tokenizer.json")
    reference_tokenizer("spm.gguf", "spm.tokenizer.json")
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))
    sys.exit(0)
