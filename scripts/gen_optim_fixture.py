#!/usr/bin/env python3
"""Golden optimizer / LR-schedule fixtures from PyTorch and transformers (tests/test_optim.cpp).

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_optim_fixture.py
Writes tests/fixtures/optim/optim.safetensors (little-endian, fp32 unless noted):
  AdamW runs (torch.optim.AdamW, foreach=False: the _single_tensor_adam path), two configs:
    <run>.hyper   [6]  beta1, beta2, eps, weight_decay, max_norm (<= 0: no clipping), steps
    <run>.lr      [S]  lr of each step (fp32 values; torch gets them as Python floats)
    <run>.p{i}.w0      initial weight of param i (odd shapes [7,13], [59], [3,37])
    <run>.s{s}.p{i}.g  gradient handed to step s (before clipping)
    <run>.s{s}.norm [1] total norm returned by torch.nn.utils.clip_grad_norm_ (fp32)
    <run>.s{s}.p{i}.w / .m / .v   weight, exp_avg, exp_avg_sq after step s
  Run "a": betas (0.9, 0.999), eps 1e-8, weight_decay 0.1, clip at 1.0 (steps 0, 1, 3 clip).
  Run "b": betas (0.3, 0.95), eps 1e-6, weight_decay 0, no clipping (lerp weight 0.7 >= 0.5
           takes torch's other lerp branch).
  Schedules (transformers.optimization, LambdaLR, base lr 3e-3 as an fp32 value), F64 [25]:
    sched.constant / sched.linear / sched.cosine: get_*_schedule_with_warmup(warmup 3, total 20)
    sched.cosine_min: get_cosine_with_min_lr_schedule_with_warmup(warmup 3, total 20, min_lr_rate 0.1)
    sched.cosine_w0: get_cosine_schedule_with_warmup(warmup 0, total 7)
  The lr of optimizer step k (0-based) is the scheduler's lr before its k-th scheduler.step().
"""
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers.optimization import (get_constant_schedule_with_warmup,
                                       get_cosine_schedule_with_warmup,
                                       get_cosine_with_min_lr_schedule_with_warmup,
                                       get_linear_schedule_with_warmup)

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "optim")
os.makedirs(OUT, exist_ok=True)
SHAPES = [(7, 13), (59,), (3, 37)]
STEPS = 5
tensors = {}


def f32(x):
    return float(np.float32(x))


def adamw_run(tag, beta1, beta2, eps, wd, max_norm, lrs, grad_scales, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float32)) for s in SHAPES]
    for i, p in enumerate(params):
        tensors[f"{tag}.p{i}.w0"] = p.detach().numpy().copy()
    opt = torch.optim.AdamW(params, lr=f32(lrs[0]), betas=(f32(beta1), f32(beta2)), eps=f32(eps),
                            weight_decay=f32(wd), foreach=False)
    for s in range(STEPS):
        for i, p in enumerate(params):
            gr = torch.randn(p.shape, generator=g, dtype=torch.float32) * grad_scales[s]
            tensors[f"{tag}.s{s}.p{i}.g"] = gr.numpy().copy()
            p.grad = gr.clone()
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, f32(max_norm), foreach=False)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        tensors[f"{tag}.s{s}.norm"] = np.array([norm.item()], dtype=np.float32)
        opt.param_groups[0]["lr"] = f32(lrs[s])
        opt.step()
        for i, p in enumerate(params):
            st = opt.state[p]
            tensors[f"{tag}.s{s}.p{i}.w"] = p.detach().numpy().copy()
            tensors[f"{tag}.s{s}.p{i}.m"] = st["exp_avg"].numpy().copy()
            tensors[f"{tag}.s{s}.p{i}.v"] = st["exp_avg_sq"].numpy().copy()
    tensors[f"{tag}.hyper"] = np.array([beta1, beta2, eps, wd, max_norm, STEPS], dtype=np.float32)
    tensors[f"{tag}.lr"] = np.array(lrs, dtype=np.float32)


# Gradient scales: the total norm of unit-normal grads over 59+91+111 elements is ~16, so
# scales 0.2/0.1/0.01/1/0.03 give norms ~3.2, 1.6, 0.16, 16, 0.5 (clip at 1: steps 0, 1, 3).
adamw_run("a", 0.9, 0.999, 1e-8, 0.1, 1.0, [1e-3, 2e-3, 3e-3, 2.5e-3, 1e-3], [0.2, 0.1, 0.01, 1.0, 0.03], 1)
adamw_run("b", 0.3, 0.95, 1e-6, 0.0, 0.0, [5e-2, 4e-2, 3e-2, 2e-2, 1e-2], [1.0, 0.5, 0.001, 2.0, 0.1], 2)


def sched_lrs(make, n=25):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=f32(3e-3))
    sch = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return np.array(out, dtype=np.float64)


tensors["sched.constant"] = sched_lrs(lambda o: get_constant_schedule_with_warmup(o, 3))
tensors["sched.linear"] = sched_lrs(lambda o: get_linear_schedule_with_warmup(o, 3, 20))
tensors["sched.cosine"] = sched_lrs(lambda o: get_cosine_schedule_with_warmup(o, 3, 20))
tensors["sched.cosine_min"] = sched_lrs(
    lambda o: get_cosine_with_min_lr_schedule_with_warmup(o, 3, 20, min_lr_rate=0.1))
tensors["sched.cosine_w0"] = sched_lrs(lambda o: get_cosine_schedule_with_warmup(o, 0, 7), n=10)

save_file(tensors, os.path.join(OUT, "optim.safetensors"),
          metadata={"generator": "scripts/gen_optim_fixture.py", "torch": torch.__version__,
                    "transformers": transformers.__version__})
print("wrote", len(tensors), "tensors to", OUT)
