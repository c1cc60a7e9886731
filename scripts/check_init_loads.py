#!/usr/bin/env python3
"""check_init_loads.py: does `frugal init` write a model Hugging Face transformers loads as is?

Usage: /opt/frugal-venv/bin/python scripts/check_init_loads.py BUILD_DIR/frugal [TOKENIZER_JSON]

1. `frugal init --preset tiny` into a temp dir; AutoModelForCausalLM.from_pretrained with
   output_loading_info: no missing / unexpected / mismatched keys; the weights equal the
   safetensors bytes; statistics N(0, 0.02^2) / norms 1; a forward gives finite logits of the right shape.
2. `frugal init --preset small` (tied embeddings) loads with the same checks and 134,515,008 parameters.
3. `frugal init --preset tiny --tokenizer TOKENIZER_JSON` (default: the shared Llama-3 tokenizer):
   vocab_size 128256, bos/eos 128000/128001, AutoTokenizer loads the dir and round-trips text, and the
   model runs on the tokenized text.
4. The same seed gives identical files; a non-empty dir is refused without --force.
Not run by CI (needs the Python venv); run by hand after changing init or the config writer.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def run(args, expect_ok=True):
    r = subprocess.run(args, capture_output=True, text=True)
    print("$", " ".join(args), "->", r.returncode, (r.stdout + r.stderr).strip())
    if expect_ok and r.returncode != 0:
        sys.exit(f"FAIL: command failed: {' '.join(args)}")
    return r


def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)
    print("ok:", msg)


def load_checked(d):
    model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True, dtype=torch.bfloat16)
    print("loading info:", info)
    check(not info["missing_keys"], f"no missing keys ({info['missing_keys']})")
    check(not info["unexpected_keys"], f"no unexpected keys ({info['unexpected_keys']})")
    check(not info.get("mismatched_keys"), f"no mismatched keys ({info.get('mismatched_keys')})")
    # what transformers holds is what frugal wrote (not a re-initialization)
    sd = load_file(os.path.join(d, "model.safetensors"))
    msd = model.state_dict()
    for name, t in sd.items():
        check_eq = torch.equal(msd[name], t)
        if not check_eq:
            sys.exit(f"FAIL: {name} differs between the file and the loaded model")
    print(f"ok: all {len(sd)} tensors loaded unchanged")
    return model, sd


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    exe = os.path.abspath(sys.argv[1])
    tok = sys.argv[2] if len(sys.argv) > 2 else "/work/shared/data/tokenizers/llama3/tokenizer.json"
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "tiny")
        run([exe, "init", "--preset", "tiny", "--out", d, "--seed", "7"])
        cfg = json.load(open(os.path.join(d, "config.json")))
        print("config.json:", json.dumps(cfg, sort_keys=True))
        model, sd = load_checked(d)
        for name, t in sd.items():
            t = t.float()
            if "norm" in name:
                check_all = bool((t == 1).all())
                if not check_all:
                    sys.exit(f"FAIL: {name} is not all ones")
            else:
                n = t.numel()
                if abs(t.mean().item()) > 5 * 0.02 / n**0.5 or abs(t.std().item() / 0.02 - 1) > 5 / (2 * n) ** 0.5 + 1 / 512:
                    sys.exit(f"FAIL: {name}: mean {t.mean().item()} std {t.std().item()}")
        print("ok: weights ~ N(0, 0.02^2), norms = 1")
        ids = torch.randint(0, cfg["vocab_size"], (2, 37))
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        check(tuple(out.logits.shape) == (2, 37, cfg["vocab_size"]), f"logits shape {tuple(out.logits.shape)}")
        check(bool(torch.isfinite(out.logits.float()).all()), "finite logits")
        # random init: loss close to ln(V) (logits are small)
        lnV = torch.log(torch.tensor(float(cfg["vocab_size"]))).item()
        check(abs(out.loss.item() - lnV) < 0.5, f"loss {out.loss.item():.4f} ~ ln(V) = {lnV:.4f}")

        # same seed -> same bytes; non-empty dir refused; --force accepted
        d2 = os.path.join(tmp, "tiny2")
        run([exe, "init", "--preset", "tiny", "--out", d2, "--seed", "7"])
        same = open(os.path.join(d, "model.safetensors"), "rb").read() == open(os.path.join(d2, "model.safetensors"), "rb").read()
        check(same, "same seed, identical model.safetensors")
        r = run([exe, "init", "--preset", "tiny", "--out", d2, "--seed", "8"], expect_ok=False)
        check(r.returncode != 0 and "--force" in r.stderr, "non-empty dir refused")
        run([exe, "init", "--preset", "tiny", "--out", d2, "--seed", "8", "--force"])

        # tied embeddings (SmolLM2-135M shapes): no lm_head.weight in the file, HF ties it
        ds = os.path.join(tmp, "small")
        run([exe, "init", "--preset", "small", "--out", ds, "--seed", "1"])
        model, sd = load_checked(ds)
        check("lm_head.weight" not in sd, "tied: no lm_head.weight written")
        check(model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head tied to embed_tokens")
        n = sum(p.numel() for p in model.parameters())
        check(n == 134515008, f"{n} parameters == SmolLM2-135M's 134,515,008")
        del model, sd

        # with a tokenizer
        dt = os.path.join(tmp, "tiny_tok")
        run([exe, "init", "--preset", "tiny", "--out", dt, "--seed", "7", "--tokenizer", tok])
        cfg = json.load(open(os.path.join(dt, "config.json")))
        print("config.json:", json.dumps(cfg, sort_keys=True))
        model, sd = load_checked(dt)
        tk = AutoTokenizer.from_pretrained(dt)
        print("tokenizer:", type(tk).__name__, "len", len(tk), "bos", tk.bos_token_id, "eos", tk.eos_token_id)
        check(cfg["vocab_size"] == len(tk), f"vocab_size {cfg['vocab_size']} == len(tokenizer) {len(tk)}")
        text = "Hello world, frugal init works."
        enc = tk(text, return_tensors="pt")
        print("ids:", enc["input_ids"].tolist())
        check(tk.decode(enc["input_ids"][0], skip_special_tokens=True) == text, "tokenizer round trip")
        check(tk.bos_token_id == cfg["bos_token_id"] and tk.eos_token_id == cfg["eos_token_id"],
              "tokenizer and config.json agree on bos/eos")
        if "llama3" in tok:
            check(cfg["bos_token_id"] == 128000 and cfg["eos_token_id"] == 128001, "bos/eos 128000/128001")
        with torch.no_grad():
            out = model(**enc)
        check(bool(torch.isfinite(out.logits.float()).all()), "forward on tokenized text")
    print("PASS")


if __name__ == "__main__":
    main()
