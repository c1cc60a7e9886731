#!/usr/bin/env python3
"""Chat-template reference renderings for tests/test_prepare.cpp.

Runs transformers' apply_chat_template (tokenize=False and tokenize=True) with
  - Meta's Llama-3 template + tokenizer (../shared/data/tokenizers/llama3), and
  - SmolLM2-135M-Instruct's ChatML template (tokenizer_config.json of an imported SmolLM2 dir,
    default /tmp/smol_frugal; its chat_template text is copied into the fixture),
on a few conversations, and writes tests/fixtures/chat/chat_templates.json.
Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_chat_fixtures.py [SMOL_DIR]
"""
import json
import os
import sys

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA3 = os.path.join(ROOT, "..", "shared", "data", "tokenizers", "llama3")
SMOL = sys.argv[1] if len(sys.argv) > 1 else "/tmp/smol_frugal"
OUT = os.path.join(ROOT, "tests", "fixtures", "chat", "chat_templates.json")

CONVERSATIONS = {
    "system_user_assistant": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
    ],
    "multi_turn": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour ! Comment puis-je vous aider ?"},
        {"role": "user", "content": "Name a cheese, please."},
        {"role": "assistant", "content": "Le comté, affiné 18 mois."},
    ],
    # No system message (SmolLM2 inserts its default); whitespace around contents (Llama-3 trims).
    "no_system_whitespace": [
        {"role": "user", "content": "  Define cynic.\n"},
        {"role": "assistant", "content": "A blackguard whose faulty vision sees things as they are.\n\n"},
    ],
    "prompt_only": [
        {"role": "user", "content": "Write a haiku about 1024 GPUs."},
    ],
}


def main():
    cases = []
    for tmpl, path in (("llama3", LLAMA3), ("chatml", SMOL)):
        tok = AutoTokenizer.from_pretrained(path)
        for name, msgs in CONVERSATIONS.items():
            for gen in (False, True):
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
                if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer versions
                    ids = ids["input_ids"]
                cases.append({
                    "template": tmpl,
                    "name": name,
                    "add_generation_prompt": gen,
                    "messages": msgs,
                    "text": text,
                    "ids": [int(i) for i in ids],
                    # The bos text the template renders (Llama-3: bos_token first; ChatML: none).
                    "bos_text": tok.bos_token if tmpl == "llama3" else "",
                })
    smol_cfg = json.load(open(os.path.join(SMOL, "tokenizer_config.json")))
    out = {
        "generator": "scripts/gen_chat_fixtures.py (transformers apply_chat_template)",
        "chatml_chat_template": smol_cfg["chat_template"],
        "llama3_chat_template": json.load(open(os.path.join(LLAMA3, "tokenizer_config.json")))["chat_template"],
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
