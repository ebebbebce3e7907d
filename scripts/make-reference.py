#!/usr/bin/env python3
"""Independent reference for bodega: Hugging Face transformers (CPU, float32) on the same GGUF.

Writes tests/fixtures/reference-smollm2.json: for each prompt case, the token ids the model is fed,
32 greedy continuation tokens, and the top-5 logits at each of 32 teacher-forced positions. The
bodega test suite compares its own tokenizer and forward pass against this file; the fixture is
committed, so the tests do not need Python.

How to run (from the repo root; the model comes from scripts/fetch-test-models.sh):

    scripts/fetch-test-models.sh
    python3 -m venv .venv
    .venv/bin/pip install transformers==5.24.0 tokenizers==0.23.3 torch==2.15.0 gguf==0.19.0 \
        accelerate==1.15.0 numpy==2.4.6 sentencepiece==0.2.3 protobuf==7.36.2
    .venv/bin/python scripts/make-reference.py [MODEL.gguf] [--out tests/fixtures/reference-smollm2.json]

Versions used to produce the committed fixture (also recorded in the fixture's "generator"):
Python 3.11.7, transformers 5.24.0, torch 2.15.0 (the default PyPI wheel, which reports
2.15.0+cu132; run on CPU, no GPU needed), gguf 0.19.0,
accelerate 1.15.0 (transformers needs it to load a GGUF), tokenizers 0.23.3, numpy 2.4.6.
It takes 3-6 minutes on the project's 2-core x86-64 machine (~25 s loading and de-quantizing,
the rest ~700 single-token float32 forward passes); the output is deterministic (byte-identical reruns).

MODEL defaults to the place scripts/fetch-test-models.sh installs it:
    ${BODEGA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/bodega}/models/SmolLM2-135M-Instruct.Q4_1.gguf

Choices (the Rust side must make the same ones to match):

* Loading: AutoTokenizer.from_pretrained(dir, gguf_file=name) and
  AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32). transformers
  de-quantizes every tensor to float32 and runs an ordinary float32 forward pass; the logits
  therefore come from exactly the GGUF's (de-quantized) weights, without quantized activations.
  For the llama architecture transformers un-permutes attn_q/attn_k (llama.cpp's converter stores
  them permuted for its interleaved "normal" RoPE), so the forward pass is mathematically the
  same as llama.cpp's.

* BOS: the GGUF says tokenizer.ggml.add_bos_token = false (and transformers' tokenizer agrees: it
  adds no BOS with add_special_tokens=True). So nothing is prepended, neither to raw prompts nor to
  chat prompts. The script reads the flag from the GGUF: if a model said true, raw prompts would
  get BOS from the tokenizer and chat prompts would get BOS prepended unless the rendered template
  already starts with it (what llama.cpp does). Absent flag => false (as the brief specifies).

* Raw cases: prompt_ids = tokenizer(text, add_special_tokens=<add_bos_token>).
  Chat cases: text = tokenizer.apply_chat_template(messages, tokenize=False,
  add_generation_prompt=True) using the GGUF's own tokenizer.chat_template, and
  prompt_ids = tokenizer(text, add_special_tokens=False) (+BOS if the flag said so). Control
  tokens such as <|im_start|> in the text are matched whole as single special tokens.

* Pre-tokenizer fix: the GGUF's tokenizer.ggml.pre is "smollm". llama.cpp (and SmolLM2's own
  tokenizer.json) pre-tokenize it as: first split every digit \\p{N} off on its own, then the
  GPT-2 byte-level regex. transformers' GGUF loader does not know "smollm" and falls back to the
  plain GPT-2 byte-level regex, which differs whenever whitespace is followed by a digit (e.g.
  "a   1" -> stock ["a","ĠĠ","Ġ","1"] vs smollm ["a","ĠĠĠ","1"]). This script therefore replaces
  the backend pre-tokenizer with Sequence([Digits(individual_digits=True),
  ByteLevel(add_prefix_space=False, use_regex=True)]). Cases where the stock transformers
  tokenization differs carry it in "stock_transformers_prompt_ids" (informational only; the model
  is fed prompt_ids).

* Greedy: 32 tokens by argmax over the raw logits, with a KV cache, NOT stopping at EOS/<|im_end|>
  (so every case has exactly 32). Teacher forcing: one forward pass (no cache) over
  prompt_ids + greedy_ids[:-1]; the top-5 logits (rounded to 4 decimals) are recorded at positions
  len(prompt_ids)-1 .. len(prompt_ids)+30 (32 entries; entry i predicts greedy_ids[i]). The script
  checks that greedy_ids equal the teacher-forced argmax chain and fails if not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_GREEDY = 32
TOP_K = 5
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "reference-smollm2.json"

LONG_PARAGRAPH = (
    "The history of the bicycle is a story of many small improvements made by people in different "
    "countries over almost two centuries. In 1817 the German inventor Karl Drais built a wooden "
    "running machine with two wheels and no pedals; the rider pushed it along with his feet and could "
    "travel faster than a person walking. Several decades later, French mechanics attached cranks and "
    "pedals directly to the front wheel, creating the velocipede, which was often called the "
    "boneshaker because its iron tyres made every cobblestone felt. To go faster, makers enlarged the "
    "front wheel, and the result was the penny-farthing, an elegant but dangerous machine from which "
    "riders were frequently thrown head first. The real breakthrough came in the 1880s with the safety "
    "bicycle: two wheels of equal size, a chain driving the rear wheel, and a diamond-shaped frame of "
    "steel tubes. Soon afterwards John Boyd Dunlop's pneumatic tyre made the ride comfortable, and "
    "cycling became a craze across Europe and North America. Bicycles gave ordinary workers cheap "
    "transport, helped women gain independence and new forms of dress, and pushed governments to "
    "build smoother roads long before cars were common. Today engineers continue to refine the design "
    "with lighter materials such as aluminium and carbon fibre, better gears and brakes, and electric "
    "motors, yet the basic shape of the safety bicycle has hardly changed. In many cities, planners "
    "now see the bicycle as"
)

# (name, kind, payload): raw payload is the prompt text, chat payload is the message list.
CASES: list[tuple[str, str, object]] = [
    ("plain-simple", "raw", "The quick brown fox jumps over the lazy dog. Once upon a time, there was a"),
    ("single-word", "raw", "Hello"),
    ("leading-trailing-space", "raw", " The weather today is "),
    ("code-python", "raw",
     "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"),
    ("unicode-french", "raw",
     "Le café était délicieux, et l'été à Montréal fut très agréable. Où sont passées les années ? "
     "Ça, c'est une bonne question, répondit-elle en"),
    ("unicode-japanese", "raw", "日本の首都は東京です。富士山は日本で一番高い山で、"),
    ("unicode-cyrillic", "raw", "Москва — столица России. Зимой в Москве очень холодно, и поэтому"),
    ("emoji", "raw", "I love pizza 🍕 and tacos 🌮! My favourite emoji is 😂 because 👍🏽 and ❤️ are"),
    ("numbers-arithmetic", "raw",
     "Question: What is 12 + 35?\nAnswer: 12 + 35 = 47.\nQuestion: What is 128 * 4?\nAnswer: 128 * 4 ="),
    ("whitespace-heavy", "raw",
     "Name:\t\tAlice\nAge:    30\n\n\nCity:  \t Paris\n    indented line\n\t\ttabbed   42\n  \n"),
    ("json-like", "raw",
     '{"name": "bodega", "version": "0.1.0", "features": ["gguf", "cpu"], '
     '"config": {"threads": 2, "temperature": 0.7, "enabled": true, "stop": null}, "authors": ['),
    ("punctuation-mix", "raw",
     "Wait... what?! It's 5:30pm -- they've gone (again) [really] {ok} <b>#tag</b> @user $9.99 "
     "100% a_b-c/d\\e ~`^|"),
    ("long-paragraph", "raw", LONG_PARAGRAPH),
    ("chat-system", "chat", [
        {"role": "system", "content": "You are a concise assistant. Answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]),
    ("chat-no-system", "chat", [
        {"role": "user", "content": "Write a haiku about the sea."},
    ]),
    ("chat-multi-turn", "chat", [
        {"role": "user", "content": "Hi! My name is Ana and I live in Lisbon."},
        {"role": "assistant", "content": "Nice to meet you, Ana! Lisbon is a beautiful city. How can I help you today?"},
        {"role": "user", "content": "Can you remind me what my name is and where I live?"},
    ]),
    ("chat-code", "chat", [
        {"role": "system", "content": "You are an expert Python programmer."},
        {"role": "user", "content": "Write a Python function that reverses a string."},
    ]),
    ("chat-unicode", "chat", [
        {"role": "user", "content": "Traduis en anglais : « Je suis très fatigué aujourd'hui, mais l'été arrive bientôt. »"},
    ]),
    ("chat-arithmetic", "chat", [
        {"role": "system", "content": "You are a calculator. Reply with the number only."},
        {"role": "user", "content": "What is 17 times 3?"},
    ]),
    ("chat-json", "chat", [
        {"role": "user", "content": "Give me a JSON object with the keys \"city\" and \"country\" for Tokyo."},
    ]),
]


def default_model_path() -> Path:
    home = os.environ.get("BODEGA_HOME")
    if not home:
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        home = os.path.join(data, "bodega")
    return Path(home) / "models" / MODEL_NAME


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_metadata(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre", "tokenizer.ggml.model"):
        field = reader.fields.get(key)
        out[key] = field.contents() if field is not None else None
    return out


def to_json(obj) -> str:
    """Indented JSON, but with every list of numbers kept on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    text = re.sub(
        r"\[\s*((?:-?[0-9][0-9.eE+-]*\s*,\s*)*-?[0-9][0-9.eE+-]*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    # One teacher-forced entry per line.
    text = re.sub(
        r'\{\s*("top_ids": \[[^\]]*\]),\s*("top_logits": \[[^\]]*\])\s*\}',
        r"{\1, \2}",
        text,
    )
    return text + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=None,
                    help=f"path to {MODEL_NAME} (default: where scripts/fetch-test-models.sh installs it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"fixture to write (default: {DEFAULT_OUT})")
    args = ap.parse_args()

    t_start = time.time()
    model_path: Path = (args.model or default_model_path()).resolve()
    if not model_path.is_file():
        print(f"error: model not found: {model_path} (run scripts/fetch-test-models.sh first)", file=sys.stderr)
        return 1

    # Everything is local: never let transformers/huggingface_hub try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import copy
    import inspect

    import gguf
    import tokenizers
    import torch
    import transformers
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    meta = gguf_metadata(model_path)
    add_bos = bool(meta["tokenizer.ggml.add_bos_token"]) if meta["tokenizer.ggml.add_bos_token"] is not None else False
    print(f"GGUF metadata: {meta}", file=sys.stderr)

    model_dir, model_file = str(model_path.parent), model_path.name
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    stock_tok = copy.deepcopy(tok)
    notes = [
        "prompt_ids are fed as-is; no BOS is prepended because the GGUF says tokenizer.ggml.add_bos_token="
        f"{meta['tokenizer.ggml.add_bos_token']}.",
        "greedy_ids are 32 argmax tokens that do not stop at EOS; teacher_forced[i] is the distribution "
        "that predicts greedy_ids[i] (position len(prompt_ids)-1+i).",
        "Logits come from transformers' float32 forward pass over the de-quantized GGUF weights.",
    ]
    if meta["tokenizer.ggml.pre"] == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
        notes.append(
            "tokenizer.ggml.pre is 'smollm': digits are split off individually before the GPT-2 byte-level "
            "regex (as llama.cpp and SmolLM2's tokenizer.json do). transformers' GGUF loader omits the digit "
            "split; cases where its stock tokenization differs carry stock_transformers_prompt_ids."
        )
    bos_id = tok.bos_token_id

    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=model_file, dtype=torch.float32)
    model.eval()
    # transformers 5.x renamed the KV-cache argument/output `past_key_values` -> `cache`.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(output):
        c = getattr(output, "cache", None)
        return c if c is not None else output.past_key_values
    t_loaded = time.time()
    print(f"loaded tokenizer+model in {t_loaded - t_start:.1f}s", file=sys.stderr)

    def encode(t, text: str, kind: str) -> list[int]:
        if kind == "raw":
            ids = t(text, add_special_tokens=add_bos)["input_ids"]
        else:
            ids = t(text, add_special_tokens=False)["input_ids"]
        if add_bos and bos_id is not None and (not ids or ids[0] != bos_id):
            ids = [bos_id] + ids
        return list(ids)

    out_cases = []
    names = set()
    worst_margin = (float("inf"), None)
    with torch.inference_mode():
        for name, kind, payload in CASES:
            assert name not in names, name
            names.add(name)
            case: dict = {"name": name, "kind": kind}
            if kind == "chat":
                text = tok.apply_chat_template(payload, tokenize=False, add_generation_prompt=True)
                case["text"] = text
                case["messages"] = payload
            else:
                text = payload
                case["text"] = text
            prompt_ids = encode(tok, text, kind)
            stock_ids = encode(stock_tok, text, kind)
            case["prompt_ids"] = prompt_ids
            if stock_ids != prompt_ids:
                case["stock_transformers_prompt_ids"] = stock_ids
                print(f"note: {name}: stock transformers tokenization differs", file=sys.stderr)

            # Greedy generation with a KV cache, ignoring EOS.
            inp = torch.tensor([prompt_ids], dtype=torch.long)
            out = model(input_ids=inp, use_cache=True)
            past = cache_of(out)
            greedy = []
            nxt = int(torch.argmax(out.logits[0, -1]))
            greedy.append(nxt)
            while len(greedy) < N_GREEDY:
                out = model(input_ids=torch.tensor([[nxt]], dtype=torch.long), use_cache=True, **{cache_kw: past})
                past = cache_of(out)
                nxt = int(torch.argmax(out.logits[0, -1]))
                greedy.append(nxt)
            case["greedy_ids"] = greedy
            case["greedy_text"] = tok.decode(greedy, skip_special_tokens=False)

            # Teacher forcing: one pass over prompt + greedy[:-1].
            full = torch.tensor([prompt_ids + greedy[:-1]], dtype=torch.long)
            logits = model(input_ids=full, use_cache=False).logits[0].float()
            start = len(prompt_ids) - 1
            tf = []
            for i in range(N_GREEDY):
                row = logits[start + i]
                vals, idx = torch.topk(row, TOP_K)
                tf.append({"top_ids": [int(x) for x in idx], "top_logits": [round(float(v), 4) for v in vals]})
                if int(idx[0]) != greedy[i]:
                    print(f"error: {name}: teacher-forced argmax at step {i} is {int(idx[0])}, greedy gave {greedy[i]}",
                          file=sys.stderr)
                    return 1
                margin = float(vals[0] - vals[1])
                if margin < worst_margin[0]:
                    worst_margin = (margin, f"{name} step {i}")
            case["teacher_forced"] = tf
            out_cases.append(case)
            print(f"{name:24s} {kind:4s} prompt={len(prompt_ids):4d} tokens  -> {case['greedy_text']!r}",
                  file=sys.stderr)

    n_chat = sum(1 for c in out_cases if c["kind"] == "chat")
    fixture = {
        "model": MODEL_NAME,
        "model_sha256": sha256_file(model_path),
        "generator": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
            "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0],
            "script": "scripts/make-reference.py",
        },
        "add_bos_token": add_bos,
        "top_k": TOP_K,
        "notes": notes,
        "cases": out_cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(to_json(fixture), encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(out_cases)} cases, {n_chat} chat); smallest top1-top2 logit margin "
          f"{worst_margin[0]:.4f} at {worst_margin[1]}; total {time.time() - t_start:.1f}s", file=sys.stderr)
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
