#!/usr/bin/env python3
"""Golden GaLore-AdamW fixture from galore_torch (tests/test_galore.cpp).

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_galore_fixture.py
Writes tests/fixtures/galore/galore.safetensors (fp32):
  hyper          [8]  lr, beta1, beta2, eps, weight_decay, rank, update_proj_gap, scale
  p{i}.w0             initial weights: p0 [12,8], p1 [8,12], p2 [10,10] (GaLore group),
                      p3 [8] (the non-GaLore group: plain transformers-style AdamW)
  s{s}.p{i}.g         gradient of step s (Gaussian, seeded; the same for every proj_type)
  {proj}.s{s}.p{i}.w  weight after step s, proj in std, reverse_std, left, right, full
7 steps with update_proj_gap 3: refreshes at steps 0, 3, 6. Exact SVD (torch.linalg.svd) with the
sign convention of src/train/galore_projector.h patched in: each singular pair (u_k, v_k) is
flipped so that the largest-|.| component of v_k (lowest index on a tie) is positive.
"""
import os

import numpy as np
import torch
from safetensors.numpy import save_file

import galore_torch.galore_projector as gp
from galore_torch import GaLoreAdamW

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "galore")
os.makedirs(OUT, exist_ok=True)
SHAPES = [(12, 8), (8, 12), (10, 10), (8,)]
STEPS = 7
PROJ = ["std", "reverse_std", "left", "right", "full"]


def f32(x):
    return float(np.float32(x))


LR, B1, B2, EPS, WD = f32(1e-2), f32(0.9), f32(0.999), f32(1e-6), f32(0.1)
RANK, GAP, SCALE = 4, 3, 0.25


def signed_svd(matrix, full_matrices=False):
    U, s, Vh = torch.linalg.svd(matrix, full_matrices=False)
    for k in range(Vh.shape[0]):
        j = int(torch.argmax(Vh[k].abs()))  # first index of the max: lowest index on a tie
        if Vh[k, j] < 0:
            Vh[k] = -Vh[k]
            U[:, k] = -U[:, k]
    return U, s, Vh


class _Linalg:  # torch.linalg as galore_projector sees it, with the sign-fixed SVD
    def __getattr__(self, name):
        return signed_svd if name == "svd" else getattr(torch.linalg, name)


class _Torch:
    linalg = _Linalg()

    def __getattr__(self, name):
        return getattr(torch, name)


gp.torch = _Torch()

tensors = {"hyper": np.array([LR, B1, B2, EPS, WD, RANK, GAP, SCALE], dtype=np.float32)}
g = torch.Generator().manual_seed(1234)
w0 = [torch.randn(s, generator=g, dtype=torch.float32) for s in SHAPES]
for i, w in enumerate(w0):
    tensors[f"p{i}.w0"] = w.numpy().copy()
grads = [[torch.randn(s, generator=g, dtype=torch.float32) * (0.5 + 0.25 * st) for s in SHAPES]
         for st in range(STEPS)]
for st in range(STEPS):
    for i in range(len(SHAPES)):
        tensors[f"s{st}.p{i}.g"] = grads[st][i].numpy().copy()

for proj in PROJ:
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    groups = [{"params": params[3:]},
              {"params": params[:3], "rank": RANK, "update_proj_gap": GAP, "scale": SCALE, "proj_type": proj}]
    opt = GaLoreAdamW(groups, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, no_deprecation_warning=True)
    for st in range(STEPS):
        for i, p in enumerate(params):
            p.grad = grads[st][i].clone()
        opt.step()
        for i, p in enumerate(params):
            tensors[f"{proj}.s{st}.p{i}.w"] = p.detach().numpy().copy()

save_file(tensors, os.path.join(OUT, "galore.safetensors"))
print("wrote", len(tensors), "tensors to", OUT)
