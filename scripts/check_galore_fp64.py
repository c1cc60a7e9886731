#!/usr/bin/env python3
"""How far galore_torch's own fp32 run is from its fp64 run on the tests/fixtures/galore inputs.

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/check_galore_fp64.py
Explains the tolerance of tests/test_galore.cpp for proj_type "full": the reference itself moves
by ~1e-3 of an update between fp32 and fp64 there (~2e-5 for std), so an fp32 reimplementation
can only be held to that order against it. Prints max|w32 - w64| / max|w64 - w0| per refresh step.
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.argv = ["gen_galore_fixture.py"]
# the fixture script's settings and its sign-fixed SVD patch, without writing the fixture
exec(open(os.path.join(HERE, "gen_galore_fixture.py")).read().split("tensors = {")[0])
from safetensors.numpy import load_file

fx = load_file(os.path.join(HERE, "..", "tests", "fixtures", "galore", "galore.safetensors"))
def run(dtype, proj):
    w0=[torch.tensor(fx[f"p{i}.w0"]).to(dtype) for i in range(4)]
    params=[torch.nn.Parameter(w.clone()) for w in w0]
    groups=[{"params":params[3:]},{"params":params[:3],"rank":RANK,"update_proj_gap":GAP,"scale":SCALE,"proj_type":proj}]
    opt=GaLoreAdamW(groups, lr=LR, betas=(B1,B2), eps=EPS, weight_decay=WD, no_deprecation_warning=True)
    out=[]
    for st in range(STEPS):
        for i,p in enumerate(params): p.grad=torch.tensor(fx[f"s{st}.p{i}.g"]).to(dtype)
        opt.step(); out.append([p.detach().double().numpy().copy() for p in params])
    return out
for proj in ["std","full"]:
    a=run(torch.float32,proj); b=run(torch.float64,proj)
    for st in [0,3,6]:
        w0=[fx[f"p{i}.w0"].astype(np.float64) for i in range(3)]
        e=max(np.abs((a[st][i]-b[st][i])).max()/np.abs(b[st][i]-w0[i]).max() for i in range(3))
        print(proj, st, "fp32 torch vs fp64 torch: max|diff| / max|update| = %.2e"%e)
