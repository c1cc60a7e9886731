#!/usr/bin/env python3
"""Golden full fine-tuning fixture from transformers + torch.optim.AdamW (tests/test_trainables.cpp).

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_full_ft_fixture.py
Writes tests/fixtures/full_ft/:
  config.json, model.safetensors   a small LlamaForCausalLM (2 layers, hidden 64, 4 heads / 2 KV
                                   heads, ffn 88, vocab 61, untied lm_head), weights stored in bf16
  reference.safetensors            input_ids [2,19] int32, and fp32:
    hyper [5]   lr, beta1, beta2, eps, weight_decay
    loss  [4]   mean next-token CE before each of 3 AdamW steps and after the third
    grad.<name> gradient of the mean loss at step 0 for two linears (model.layers.0.self_attn.q_proj,
                model.layers.1.mlp.down_proj)
Full fine-tuning: every decoder linear (q,k,v,o,gate,up,down) trains, embeddings/norms/lm_head stay
frozen; the model runs in fp32 from the bf16 weights (frugal keeps fp32 masters and computes with
their bf16 copies). HF's loss: labels = input_ids, shifted inside, mean over B·(T-1) targets.
"""
import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
torch.manual_seed(0)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "full_ft")
os.makedirs(OUT, exist_ok=True)

cfg = LlamaConfig(vocab_size=61, hidden_size=64, intermediate_size=88, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  initializer_range=0.1, attn_implementation="eager")
model = LlamaForCausalLM(cfg)
with torch.no_grad():  # norms away from 1 so their values matter; everything bf16-representable
    for n, p in model.named_parameters():
        if "norm" in n:
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        p.copy_(p.to(torch.bfloat16).to(torch.float32))
model.to(torch.bfloat16).save_pretrained(OUT, safe_serialization=True)
model = LlamaForCausalLM.from_pretrained(OUT, dtype=torch.float32, attn_implementation="eager")

LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01
g = torch.Generator().manual_seed(3)
ids = torch.randint(0, cfg.vocab_size, (2, 19), generator=g)
linears = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
params = []
for n, p in model.named_parameters():
    p.requires_grad_(any(f".{l}." in n for l in linears))
    if p.requires_grad:
        params.append(p)
opt = torch.optim.AdamW(params, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, foreach=False)
losses, grads = [], {}
for step in range(3):
    opt.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    losses.append(loss.item())
    if step == 0:
        named = dict(model.named_parameters())
        for n in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
            grads["grad." + n] = named[n].grad.detach().numpy().astype(np.float32).copy()
    opt.step()
with torch.no_grad():
    losses.append(model(input_ids=ids, labels=ids).loss.item())
print("losses", losses)
t = {"input_ids": ids.numpy().astype(np.int32), "hyper": np.array([LR, B1, B2, EPS, WD], np.float32),
     "loss": np.array(losses, np.float32)}
t.update(grads)
save_file(t, os.path.join(OUT, "reference.safetensors"))
for f in os.listdir(OUT):
    if f not in ("config.json", "model.safetensors", "reference.safetensors"):
        os.remove(os.path.join(OUT, f))
