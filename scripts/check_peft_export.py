#!/usr/bin/env python3
"""check_peft_export.py FRUGAL_BIN [--workdir DIR] [--steps N]

Interop check of frugal's exports with PyPI's transformers + peft (run in the venv of
scripts/make_venv.sh, e.g. /opt/frugal-venv/bin/python scripts/check_peft_export.py build/frugal):

 1. `frugal train recipes/tiny_qlora.toml` for a few steps (the tiny preset is created on the fly),
    then `frugal export --adapter` and `frugal export --merged` (small shard limit: several shards);
 2. the adapter loads with peft.PeftModel.from_pretrained on transformers' LlamaForCausalLM and its
    eval loss on a .ids window file and on the run's HDF5 dataset (loss masks) equals
    `frugal eval --adapter` on the same data;
 3. the merged dir loads with transformers (index + shards) and its loss equals `frugal eval` on it
    and the PEFT loss;
 4. adapters made by peft itself (get_peft_model, random lora_B, save_pretrained): a
    target_modules list + rsLoRA + dropout, a regex string, a list + layers_to_transform, give the
    same loss in `frugal eval --adapter` as in peft;
 5. a run with train.trainable = embed_tokens, norms, lm_head: its adapter (modules_to_save) loads
    in peft with every saved module weight in peft's ModulesToSaveWrapper bit for bit, and its
    merged export in transformers gives peft's loss (within the merged bound above).

Tolerance: frugal rounds every GEMM operand to bf16 (u = 2^-9) and accumulates in fp32; torch runs
fp32 here. The mean CE then differs by ≲1e-3 relative (test_model.cpp measures ≤ 3.5e-4 on its
fixtures; here ~1e-5); bound 2e-3 relative. A wrong LoRA scale could hide inside that when the
adapter moves the loss by little, so the LoRA effect itself, loss(base+adapter) − loss(base), is
compared too: frugal's vs peft's within 5e-2 relative (bf16 noise ~1e-4 absolute against effects
≥ 5e-3 absolute, which the script demands; a wrong scale, e.g. alpha/r instead of alpha/√r, moves
the effect by O(1) relative). The merged weights are rounded to bf16 once more,
which moves the merged model's loss against PEFT-on-the-base by a similar amount (same bound).
Exits non-zero on any failure; prints every figure.
"""
import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 2e-3         # relative, on a loss
EFFECT_TOL = 5e-2  # relative, on the LoRA effect: loss(base + adapter) - loss(base)
MIN_EFFECT = 5e-3  # absolute: an adapter must move the loss at least this much to be tested
failures = []


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout, r.stderr, file=sys.stderr)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout


def frugal_eval(fb, model, data, seq_len, adapter=None):
    cmd = [fb, "eval", "--model", model, "--data", data, "--seq-len", str(seq_len), "--batch", "4", "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    return json.loads(run(cmd).strip().splitlines()[-1])


def windows_loss(model, ids, seq_len):
    """Mean next-token CE over non-overlapping windows (frugal eval's .ids semantics)."""
    n = len(ids) // seq_len
    x = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    with torch.no_grad():
        logits = model(input_ids=x).logits.float()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                           reduction="sum")
    return ce.item() / (n * (seq_len - 1)), n * (seq_len - 1)


def h5_loss(model, path, seq_len):
    """Each sample alone, truncated to seq_len; targets only where loss_mask[t+1] = 1."""
    with h5py.File(path, "r") as f:
        tokens, offsets, mask = f["tokens"][:], f["offsets"][:], f["loss_mask"][:]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(offsets) - 1):
            a, b = int(offsets[i]), min(int(offsets[i + 1]), int(offsets[i]) + seq_len)
            if b - a < 2:
                continue
            x = torch.tensor(tokens[a:b], dtype=torch.long)[None]
            logits = model(input_ids=x).logits.float()[0]
            tgt = x[0, 1:].clone()
            tgt[torch.tensor(mask[a + 1:b] == 0)] = -100
            ce = torch.nn.functional.cross_entropy(logits[:-1], tgt, reduction="sum", ignore_index=-100)
            total += ce.item()
            count += int((tgt != -100).sum())
    return total / count, count


def compare_effect(what, ours, ours_base, ref, ref_base):
    eff, ref_eff = ours - ours_base, ref - ref_base
    rel = abs(eff - ref_eff) / abs(ref_eff)
    ok = rel <= EFFECT_TOL and abs(ref_eff) >= MIN_EFFECT
    print(f"  {what:<58} frugal {eff:+.6f}  reference {ref_eff:+.6f}  rel {rel:.2e}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what + (" (effect too small to test)" if abs(ref_eff) < MIN_EFFECT else ""))


def compare(what, ours, ref):
    rel = abs(ours - ref) / abs(ref)
    ok = rel <= TOL
    print(f"  {what:<58} frugal {ours:.6f}  reference {ref:.6f}  rel {rel:.2e}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("frugal")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    fb = os.path.abspath(a.frugal)
    work = a.workdir or tempfile.mkdtemp(prefix="frugal_peft_check_")
    os.makedirs(work, exist_ok=True)
    base, run_dir = os.path.join(work, "base"), os.path.join(work, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaForCausalLM

    # 1. train + export
    run([fb, "train", os.path.join(REPO, "recipes", "tiny_qlora.toml"), "-q", "--set", f"model.path={base}",
         "--set", f"train.steps={a.steps}", "--set", f"train.output_dir={run_dir}", "--set", "checkpoint.every=0"])
    ckpt = os.path.join(run_dir, "checkpoints", f"step-{a.steps}.h5")
    if not os.path.exists(ckpt):
        ckpts = sorted(f for f in os.listdir(os.path.join(run_dir, "checkpoints")) if f.endswith(".h5"))
        ckpt = os.path.join(run_dir, "checkpoints", ckpts[-1])
    adapter, merged = os.path.join(work, "adapter"), os.path.join(work, "merged")
    shutil.rmtree(adapter, ignore_errors=True)
    shutil.rmtree(merged, ignore_errors=True)
    run([fb, "export", "--checkpoint", ckpt, "--adapter", adapter])
    run([fb, "export", "--checkpoint", ckpt, "--merged", merged, "--shard-size", "1000000"])
    shards = sorted(f for f in os.listdir(merged) if f.endswith(".safetensors"))
    print(f"  merged export: {len(shards)} shards {shards[0]} .. {shards[-1]}")

    # Eval data: the run's synthetic dataset (HDF5 with loss masks) and its first tokens as .ids.
    h5 = os.path.join(run_dir, "data.h5")
    seq_len = 64
    with h5py.File(h5, "r") as f:
        stream = f["tokens"][: 8 * seq_len].tolist()
    ids_path = os.path.join(work, "eval.ids")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, stream)) + "\n")

    hf = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    base_loss, _ = windows_loss(hf, stream, seq_len)

    # 2. our adapter in peft
    print("frugal adapter -> peft.PeftModel.from_pretrained:")
    pm = PeftModel.from_pretrained(hf, adapter).eval()
    peft_loss, n = windows_loss(pm, stream, seq_len)
    print(f"  base loss {base_loss:.6f}, base+adapter (peft) {peft_loss:.6f} over {n} targets")
    fbase = frugal_eval(fb, base, ids_path, seq_len)["loss"]
    compare(".ids windows: frugal eval base vs transformers", fbase, base_loss)
    ours = frugal_eval(fb, base, ids_path, seq_len, adapter)["loss"]
    compare(".ids windows: frugal eval --adapter vs peft", ours, peft_loss)
    compare_effect(".ids windows: LoRA effect on the loss", ours, fbase, peft_loss, base_loss)
    peft_h5, nh5 = h5_loss(pm, h5, seq_len)
    fe = frugal_eval(fb, base, h5, seq_len, adapter)
    if fe["predicted"] != nh5:
        failures.append(f"HDF5 target count {fe['predicted']} != {nh5}")
    compare(f"HDF5 ({nh5} masked targets): frugal eval --adapter vs peft", fe["loss"], peft_h5)
    merged_peft = pm.merge_and_unload()  # the reference merge in fp32 (no bf16 rounding)

    # 3. merged dir in transformers
    print("frugal merged -> transformers:")
    hm = LlamaForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    merged_loss, _ = windows_loss(hm, stream, seq_len)
    compare(".ids windows: frugal eval merged vs transformers merged",
            frugal_eval(fb, merged, ids_path, seq_len)["loss"], merged_loss)
    compare(".ids windows: transformers merged vs peft (base+adapter)", merged_loss, peft_loss)
    fw = dict(merged_peft.named_parameters())
    worst = 0.0
    for name, p in hm.named_parameters():
        ref = fw[name].detach()
        worst = max(worst, ((p.detach() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item())
    # bf16 round-to-nearest: |error| <= half an ulp <= 2^-8·|w|; slack for fp32 summation order.
    print(f"  merged weights vs peft merge_and_unload (fp32): max rel diff {worst:.4e} (bf16 rounding: <= 2^-8 = 3.906e-3)")
    if not worst <= 2 ** -8 * 1.001:
        failures.append("merged weights differ from peft's merge by more than bf16 rounding")
    del merged_peft, pm, hm

    # 4. adapters made by peft
    for tag, cfg in [("list+rslora", dict(r=4, lora_alpha=8, use_rslora=True, lora_dropout=0.05,
                                          target_modules=["q_proj", "v_proj", "down_proj"])),
                     ("regex", dict(r=6, lora_alpha=12, target_modules=r"model\.layers\.1\.mlp\.(gate|up)_proj")),
                     ("list+layers", dict(r=3, lora_alpha=5, target_modules=["k_proj", "o_proj"],
                                          layers_to_transform=[0]))]:
        print(f"peft-made adapter ({tag}) -> frugal eval --adapter:")
        hf = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        pm = get_peft_model(hf, LoraConfig(task_type="CAUSAL_LM", **cfg))
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        pm.eval()
        pdir = os.path.join(work, "peft_" + tag.replace("+", "_"))
        shutil.rmtree(pdir, ignore_errors=True)
        pm.save_pretrained(pdir)
        ref, _ = windows_loss(pm, stream, seq_len)
        print(f"  peft loss {ref:.6f} (base {base_loss:.6f})")
        ours = frugal_eval(fb, base, ids_path, seq_len, pdir)["loss"]
        compare(f".ids windows: frugal eval --adapter vs peft ({tag})", ours, ref)
        compare_effect(f".ids windows: LoRA effect ({tag})", ours, fbase, ref, base_loss)

    # 5. dense trainables (train.trainable): adapter with modules_to_save in peft, merged in transformers
    print("frugal adapter with modules_to_save (embed_tokens, norms, lm_head) -> peft; merged -> transformers:")
    run_d = os.path.join(work, "run_dense")
    shutil.rmtree(run_d, ignore_errors=True)
    run([fb, "train", os.path.join(REPO, "recipes", "tiny_qlora.toml"), "-q", "--set", f"model.path={base}",
         "--set", f"train.steps={a.steps}", "--set", f"train.output_dir={run_d}", "--set", "checkpoint.every=0",
         "--set", 'train.trainable=["embed_tokens", "norm", "input_layernorm", "lm_head"]'])
    ck_d = os.path.join(run_d, "checkpoints", sorted(f for f in os.listdir(os.path.join(run_d, "checkpoints"))
                                                     if f.endswith(".h5"))[-1])
    ad_d, mg_d = os.path.join(work, "adapter_dense"), os.path.join(work, "merged_dense")
    shutil.rmtree(ad_d, ignore_errors=True)
    shutil.rmtree(mg_d, ignore_errors=True)
    run([fb, "export", "--checkpoint", ck_d, "--adapter", ad_d])
    run([fb, "export", "--checkpoint", ck_d, "--merged", mg_d])
    from safetensors.torch import load_file
    saved = load_file(os.path.join(ad_d, "adapter_model.safetensors"))
    hf = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    pm = PeftModel.from_pretrained(hf, ad_d).eval()
    # peft must have put every saved module weight into its ModulesToSaveWrapper (not the base copy)
    params = dict(pm.named_parameters())
    n_mod, worst = 0, 0.0
    for k, v in saved.items():
        if "lora_" in k:
            continue
        live = k[: -len(".weight")] + ".modules_to_save.default.weight"
        if live not in params:
            failures.append(f"peft has no {live}")
            continue
        n_mod += 1
        worst = max(worst, (params[live].detach() - v).abs().max().item())
    print(f"  {n_mod} modules_to_save tensors loaded by peft, max |peft - file| {worst:.3e}")
    if n_mod == 0 or worst != 0.0:
        failures.append("modules_to_save tensors not loaded exactly by peft")
    peft_d, _ = windows_loss(pm, stream, seq_len)
    hm = LlamaForCausalLM.from_pretrained(mg_d, dtype=torch.float32).eval()
    merged_d, _ = windows_loss(hm, stream, seq_len)
    print(f"  base loss {base_loss:.6f}, peft (adapter + modules_to_save) {peft_d:.6f}")
    compare(".ids windows: transformers merged vs peft (dense trainables)", merged_d, peft_d)
    compare(".ids windows: frugal eval merged vs transformers merged (dense trainables)",
            frugal_eval(fb, mg_d, ids_path, seq_len)["loss"], merged_d)
    compare_effect(".ids windows: training effect (dense trainables)", merged_d, base_loss, peft_d, base_loss)

    print(f"work dir: {work}")
    if failures:
        print("FAILED:", "; ".join(failures))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
