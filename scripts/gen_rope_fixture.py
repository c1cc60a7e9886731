#!/usr/bin/env python3
"""gen_rope_fixture.py: golden RoPE tables from transformers' own LlamaRotaryEmbedding.

For each rope type (default, linear, dynamic, yarn, llama3) with realistic parameters, builds a
LlamaConfig, runs LlamaRotaryEmbedding.forward on a few positions (fp32 input, so cos/sin stay fp32;
for dynamic the positions reach beyond max_position_embeddings so the NTK update fires) and dumps
  <case>.inv_freq.f32   [head_dim/2]          the module's inv_freq after the forward
  <case>.cos.f32        [P, head_dim/2]       first half of cos (the second half is checked equal)
  <case>.sin.f32        [P, head_dim/2]
plus index.json with the parameters, positions and the attention factor.
Run: /opt/frugal-venv/bin/python scripts/gen_rope_fixture.py  (writes tests/fixtures/rope/)
"""
import json
import os

import numpy as np
import torch
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "rope")

CASES = [
    # name, head_dim, theta, max_position_embeddings, rope_scaling (None = default), positions
    ("default", 64, 10000.0, 2048, None, [0, 1, 2, 17, 255, 1000, 2047]),
    ("linear", 80, 10000.0, 4096, {"rope_type": "linear", "factor": 2.0}, [0, 1, 3, 100, 999, 4095]),
    # dynamic NTK: seq_len = max(position_ids)+1 = 5000 > max_position_embeddings 2048
    ("dynamic", 128, 10000.0, 2048, {"rope_type": "dynamic", "factor": 2.0}, [0, 1, 5, 333, 2047, 3000, 4999]),
    # YaRN as Qwen2.5 long-context: factor 4 over 32768 original positions
    ("yarn", 128, 1000000.0, 131072,
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
     [0, 1, 7, 4096, 32767, 100000, 131071]),
    # YaRN without truncation and with DeepSeek-style mscale / mscale_all_dim (attention factor ratio)
    ("yarn_mscale", 64, 10000.0, 32768,
     {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "truncate": False,
      "mscale": 1.0, "mscale_all_dim": 0.5},
     [0, 1, 3, 1024, 4095, 30000, 32767]),
    # Llama-3.1
    ("llama3", 128, 500000.0, 131072,
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192},
     [0, 1, 9, 511, 8191, 65536, 131071]),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    index = {"generator": "scripts/gen_rope_fixture.py", "transformers": transformers.__version__,
             "torch": torch.__version__, "cases": []}
    for name, head_dim, theta, mpe, scaling, positions in CASES:
        rope_parameters = {"rope_type": "default", "rope_theta": theta}
        if scaling is not None:
            rope_parameters = dict(scaling, rope_theta=theta)
        cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                          max_position_embeddings=mpe, rope_parameters=rope_parameters)
        emb = LlamaRotaryEmbedding(cfg)
        x = torch.zeros(1, dtype=torch.float32)
        pos = torch.tensor([positions], dtype=torch.int64)
        cos, sin = emb(x, pos)  # [1, P, head_dim] fp32
        cos, sin = cos[0].numpy(), sin[0].numpy()
        half = head_dim // 2
        assert np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])
        inv = emb.inv_freq.detach().numpy().astype(np.float32)
        assert inv.shape == (half,)
        files = {}
        for key, arr in (("inv_freq", inv), ("cos", cos[:, :half]), ("sin", sin[:, :half])):
            fn = f"{name}.{key}.f32"
            np.ascontiguousarray(arr, dtype="<f4").tofile(os.path.join(OUT, fn))
            files[key] = fn
        rp = cfg.rope_parameters
        case = {"name": name, "rope_type": rp["rope_type"], "head_dim": head_dim, "rope_theta": theta,
                "max_position_embeddings": mpe, "factor": rp.get("factor", 1.0),
                "low_freq_factor": rp.get("low_freq_factor", 1.0), "high_freq_factor": rp.get("high_freq_factor", 4.0),
                "original_max_position_embeddings": rp.get("original_max_position_embeddings", 0),
                "truncate": bool(rp.get("truncate", True)), "mscale": float(rp.get("mscale") or 0.0),
                "mscale_all_dim": float(rp.get("mscale_all_dim") or 0.0),
                "seq_len": max(positions) + 1, "positions": positions,
                "attention_factor": float(emb.attention_scaling), "files": files}
        index["cases"].append(case)
        print(name, "attention_factor", case["attention_factor"], "inv_freq[0,1,-1]", inv[0], inv[1], inv[-1])
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
