#!/usr/bin/env python3
"""gen_lora_fixture.py: PyTorch + PEFT reference of LoRA training for tests/test_lora.cpp.

Run in the fixture venv (scripts/make_venv.sh):
    /opt/frugal-venv/bin/python scripts/gen_lora_fixture.py
Takes the `gqa` model of tests/fixtures/model (bf16-valued weights, run here in fp32 with eager
attention) and its fixed batch (input_ids, labels [2,37]), wraps it with
peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0, all 7 linears), sets
  lora_A ~ U(-1/sqrt(in), 1/sqrt(in)) (seeded torch RNG; PEFT's init distribution)
  lora_B = 0.05 * N(0,1)              (NONZERO, so gradients reach lora_A too)
and runs 3 steps of torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
with clip_grad_norm_(1.0) after each backward. Variants: "plain" (s = alpha/r = 2) and "rslora"
(s = alpha/sqrt(r) = 4), from the same initial weights.
Writes tests/fixtures/lora/reference.safetensors (PEFT tensor names, without ".default"):
  input_ids, labels [2,37] I32
  init.<name>          initial lora_A / lora_B
  <v>.loss [3]         loss before each of the 3 optimizer steps
  <v>.grad.<name>      gradients of step 0 (before clipping), d mean-CE / d lora weight
  <v>.final.<name>     weights after the 3 steps
  plain.emu.grad.<name> step-0 gradients with frugal's precision emulated: every LoRA-wrapped linear
                       gets its input rounded to bf16 and its output gradient rounded to bf16 (the
                       base GEMM and the fp32 LoRA path see the same rounded x and dy, as in
                       frugal), and so does lm_head.
"""
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_model_fixtures import _RoundBwd, _RoundFwd  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "tests", "fixtures", "model", "gqa")
OUT = os.path.join(ROOT, "tests", "fixtures", "lora")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA, STEPS = 4, 8, 3


def lora_params(model):
    """(peft name without .default, parameter) in named_parameters order."""
    return [(n.replace(".default", ""), p) for n, p in model.named_parameters() if "lora_" in n]


def build(rslora, init):
    base = LlamaForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                     use_rslora=rslora, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in lora_params(model):
            p.copy_(init[n])
    return model


def emulate(model):
    hs = []
    mods = [m for m in model.modules() if isinstance(m, LoraLinear)]
    mods.append(model.base_model.model.lm_head)
    for m in mods:
        hs.append(m.register_forward_pre_hook(lambda mod, args: (_RoundFwd.apply(args[0]),)))
        hs.append(m.register_forward_hook(lambda mod, args, out: _RoundBwd.apply(out)))
    return hs


def main():
    ref_in = load_file(os.path.join(MODEL, "reference.safetensors"))
    ids = ref_in["input_ids"].long()
    labels = ref_in["labels"].long()

    # initial LoRA weights (shared by both variants)
    g = torch.Generator().manual_seed(20261124)
    base = LlamaForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    tmp = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS))
    init = {}
    for n, p in lora_params(tmp):
        if ".lora_A." in n:
            bound = 1.0 / p.shape[1] ** 0.5
            init[n] = (torch.rand(p.shape, generator=g) * 2 - 1) * bound
        else:
            init[n] = 0.05 * torch.randn(p.shape, generator=g)
    del tmp, base

    out = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32)}
    out.update({"init." + n: t.contiguous() for n, t in init.items()})
    for variant, rslora in (("plain", False), ("rslora", True)):
        model = build(rslora, init)
        params = [p for _, p in lora_params(model)]
        opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        losses = []
        for step in range(STEPS):
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            losses.append(loss.item())
            if step == 0:
                for n, p in lora_params(model):
                    out[f"{variant}.grad.{n}"] = p.grad.detach().clone().contiguous()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            print(f"{variant} step {step}: loss {loss.item():.6f} grad norm {norm.item():.4f}")
            opt.step()
        out[f"{variant}.loss"] = torch.tensor(losses, dtype=torch.float32)
        for n, p in lora_params(model):
            out[f"{variant}.final.{n}"] = p.detach().clone().contiguous()
        # The same 3 steps with frugal's precision emulated: how far bf16 operands alone move the
        # losses and the final weights (printed; the test's tolerances follow from these figures).
        model = build(rslora, init)
        hs = emulate(model)
        params = [p for _, p in lora_params(model)]
        opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        for step in range(STEPS):
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            print(f"{variant} emulated step {step}: loss {loss.item():.6f} "
                  f"(rel {abs(loss.item() - losses[step]) / losses[step]:.2e} from fp32)")
            if step == 0 and variant == "plain":
                num = den = 0.0
                for n, p in lora_params(model):
                    out[f"plain.emu.grad.{n}"] = p.grad.detach().clone().contiguous()
                    num += (p.grad - out[f"plain.grad.{n}"]).pow(2).sum().item()
                    den += out[f"plain.grad.{n}"].pow(2).sum().item()
                print(f"emulated bf16 operands vs fp32: step-0 LoRA grads rel L2 {(num / den) ** 0.5:.3e}")
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        for h in hs:
            h.remove()
        num = den = 0.0
        flips = 0
        for n, p in lora_params(model):
            ref, w0 = out[f"{variant}.final.{n}"], init[n]
            num += (p.detach() - ref).pow(2).sum().item()
            den += ref.pow(2).sum().item()
            flips += ((p.detach() - w0) * (ref - w0) < 0).sum().item()
        print(f"{variant} emulated vs fp32 after {STEPS} steps: LoRA weights rel L2 {(num / den) ** 0.5:.3e}, "
              f"{flips} updates point the other way")

    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "reference.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path,
              metadata={"format": "pt", "r": str(R), "lora_alpha": str(ALPHA), "lr": "1e-2",
                        "weight_decay": "0.01", "clip": "1.0", "steps": str(STEPS)})
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
