#!/usr/bin/env python3
"""Independent reference for bodega: Hugging Face transformers (CPU, float32) on the same GGUF.

Writes tests/fixtures/reference-smollm2.json (--model smollm2, the default) or
tests/fixtures/reference-gemma3.json (--model gemma3): for each prompt case, the token ids the model
is fed, 32 greedy continuation tokens, and the top-5 logits at each of 32 teacher-forced positions.
The bodega test suite compares its own tokenizer and forward pass against these files; the fixtures
are committed, so the tests do not need Python. The gemma3 fixture also has "tokenizer_cases":
tokenization-only checks of tricky strings (no logits).

How to run (from the repo root; the models come from scripts/fetch-test-models.sh):

    scripts/fetch-test-models.sh
    python3 -m venv .venv
    .venv/bin/pip install transformers==5.24.0 tokenizers==0.23.3 torch==2.15.0 gguf==0.19.0 \
        accelerate==1.15.0 numpy==2.4.6 sentencepiece==0.2.3 protobuf==7.36.2
    .venv/bin/python scripts/make-reference.py [MODEL.gguf] [--out tests/fixtures/reference-smollm2.json]
    .venv/bin/python scripts/make-reference.py --model gemma3 [MODEL.gguf] [--out tests/fixtures/reference-gemma3.json]

Versions used to produce the committed fixtures (also recorded in each fixture's "generator"):
Python 3.11.7, transformers 5.24.0, torch 2.15.0 (the default PyPI wheel, which reports
2.15.0+cu132; run on CPU, no GPU needed), gguf 0.19.0,
accelerate 1.15.0 (transformers needs it to load a GGUF), tokenizers 0.23.3, numpy 2.4.6.
On the project's 2-core x86-64 machine SmolLM2 takes 1-6 minutes (~25 s loading and de-quantizing,
the rest ~700 single-token float32 forward passes; 71 s on an idle machine, 177-378 s under load) and
Gemma 3 takes 2.5-8 minutes (~75 s reading the 262144-token vocabulary and loading/de-quantizing, then
~480 forward passes through a 262144-row output layer; 152 s idle, 326 s and 495 s while other builds
ran, ~4.5 GB peak RSS). The output is deterministic (byte-identical reruns).

MODEL defaults to the place scripts/fetch-test-models.sh installs it:
    ${BODEGA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/bodega}/models/SmolLM2-135M-Instruct.Q4_1.gguf
    ${BODEGA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/bodega}/models/gemma-3-270m-Q4_K_M.gguf  (--model gemma3)

Choices (the Rust side must make the same ones to match):

* Loading: AutoTokenizer.from_pretrained(dir, gguf_file=name) and
  AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32). transformers
  de-quantizes every tensor to float32 and runs an ordinary float32 forward pass; the logits
  therefore come from exactly the GGUF's (de-quantized) weights, without quantized activations.
  For the llama architecture transformers un-permutes attn_q/attn_k (llama.cpp's converter stores
  them permuted for its interleaved "normal" RoPE), so the forward pass is mathematically the
  same as llama.cpp's. For gemma3 nothing is permuted (llama.cpp runs Gemma 3 with NEOX RoPE, as
  transformers does) and transformers subtracts 1 from every *norm.weight tensor, because the GGUF
  stores Gemma's RMSNorm weights with the +1 already added while transformers' Gemma3RMSNorm
  computes x * (1 + w); both therefore scale by the GGUF value.

* BOS: each GGUF's tokenizer.ggml.add_bos_token decides. SmolLM2 says false (and transformers'
  tokenizer agrees: it adds no BOS with add_special_tokens=True), so nothing is prepended, neither
  to raw prompts nor to chat prompts. Gemma 3 says true, so every prompt starts with <bos> (id 2),
  and no EOS is appended (add_eos_token = false). Raw prompts get BOS from the tokenizer and chat
  prompts get BOS prepended unless the rendered template already starts with it (what llama.cpp
  does). Absent flag => false (as the brief specifies).

* Raw cases: prompt_ids = tokenizer(text, add_special_tokens=<add_bos_token>).
  Chat cases (SmolLM2 only; the Gemma 3 270m base GGUF has no chat template, so all its cases are
  raw): text = tokenizer.apply_chat_template(messages, tokenize=False,
  add_generation_prompt=True) using the GGUF's own tokenizer.chat_template, and
  prompt_ids = tokenizer(text, add_special_tokens=False) (+BOS if the flag said so). Control
  tokens such as <|im_start|> in the text are matched whole as single special tokens.

* Pre-tokenizer fix (SmolLM2): the GGUF's tokenizer.ggml.pre is "smollm". llama.cpp (and SmolLM2's own
  tokenizer.json) pre-tokenize it as: first split every digit \\p{N} off on its own, then the
  GPT-2 byte-level regex. transformers' GGUF loader does not know "smollm" and falls back to the
  plain GPT-2 byte-level regex, which differs whenever whitespace is followed by a digit (e.g.
  "a   1" -> stock ["a","ĠĠ","Ġ","1"] vs smollm ["a","ĠĠĠ","1"]). This script therefore replaces
  the backend pre-tokenizer with Sequence([Digits(individual_digits=True),
  ByteLevel(add_prefix_space=False, use_regex=True)]). Cases where the stock transformers
  tokenization differs carry it in "stock_transformers_prompt_ids" (informational only; the model
  is fed prompt_ids).

* SentencePiece fix (Gemma 3, tokenizer.ggml.model = "llama", add_space_prefix = false): prompt_ids
  come from LlamaCppSpm below, a line-by-line Python port of llama.cpp's SPM tokenizer run on the
  GGUF's own vocabulary (tokens, scores, token types): first every USER_DEFINED / CONTROL token
  text is cut out of the raw text whole, longest token first (runs of 2-31 real spaces, 1-31
  newlines, 1-31 tabs, HTML tags such as <table>, <b>, <s>; control tokens like <start_of_turn>
  too, i.e. parse_special = true), then each remaining piece has ' ' replaced by U+2581 (no
  prefix space) and is merged pairwise, highest-scoring resulting token first (ties: leftmost),
  and characters that end up outside the vocabulary become <0xXX> byte tokens. transformers' GGUF
  tokenizer (a BPE with merges rebuilt from the vocabulary order, and the space-run tokens
  respelled as U+2581 runs) agrees with it except (1) runs of 32 or more spaces: transformers
  splits them into 16-space chunks (32 spaces + "b" -> [16sp, 16sp, "b"]), llama.cpp takes
  31 spaces first and the rest normally ([31sp, "▁b"]); (2) a literal U+2581 in the text, which
  transformers cannot tell from a space (so "▁▁" becomes the two-space token). Where they
  differ, "stock_transformers_prompt_ids" holds transformers' ids; the model is fed prompt_ids.
  --check-llama-cpp additionally compares every case and probe against llama.cpp itself through
  the optional llama-cpp-python package (vocab only; the output file does not depend on it; it is
  not in the pip line above because it compiles llama.cpp, 10-20 minutes on 2 cores:
  `python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python==0.3.36`, then run
  with PYTHONPATH=/tmp/llvenv/lib/python3.11/site-packages). For the committed fixture, LlamaCppSpm
  and llama.cpp (llama-cpp-python 0.3.36) gave identical ids for all 86 case and probe texts and
  for 3000 random concatenations of tricky pieces, with parse_special both true and false.

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
GEMMA3_MODEL_NAME = "gemma-3-270m-Q4_K_M.gguf"
N_GREEDY = 32
TOP_K = 5
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "reference-smollm2.json"
GEMMA3_DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "reference-gemma3.json"

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

# A second, different paragraph: gemma3's "long-sliding-window" case puts it in front of LONG_PARAGRAPH so
# that the prompt is longer than Gemma 3's 512-token sliding window.
SECOND_PARAGRAPH = (
    "Lighthouses tell a similar story of slow, practical progress. The earliest ones were simply fires "
    "kept burning on hilltops or towers so that sailors could find a harbour at night, and the famous "
    "Pharos of Alexandria, built in the third century BC, stood for well over a thousand years. For "
    "most of history the light itself was weak: burning wood, coal or candles gave a glow that could be "
    "seen for only a few miles, and much of it was wasted because it spread in every direction. In 1822 "
    "the French physicist Augustin Fresnel designed a lens made of concentric rings of glass prisms that "
    "bent the scattered light into a single powerful beam. His lens was thinner and lighter than a solid "
    "one of the same size, and a lighthouse fitted with it could be seen from more than twenty miles "
    "away. Engineers then gave each tower its own signature, a pattern of flashes and pauses printed on "
    "charts, so that a captain who saw two long flashes every ten seconds knew exactly which stretch of "
    "coast lay ahead. Keepers and their families lived at the stations, trimming wicks, polishing brass "
    "and winding the clockwork that turned the lens, often for months without visitors. During the "
    "twentieth century electric lamps replaced oil, radio beacons and then satellite navigation took "
    "over most of the work, and nearly every light became automatic. Many towers are now museums or "
    "holiday cottages, but the old lenses still turn on stormy coasts, and sailors still learn to read "
    "their flashes. "
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

# Gemma 3 270m (base model, no chat template): raw prompts only.
GEMMA3_CASES: list[tuple[str, str, object]] = [
    ("plain-simple", "raw", "The quick brown fox jumps over the lazy dog. Once upon a time, there was a"),
    ("single-word", "raw", "Hello"),
    ("leading-trailing-space", "raw", " The weather today is "),
    # Runs of 2-31 spaces are single USER_DEFINED tokens; the run of 33 takes the 31-space token and then
    # the 2-space one (transformers' GGUF tokenizer splits it 16 + 17 instead: see notes).
    ("multiple-spaces", "raw",
     "Name:  Alice   Smith    (age 30)" + " " * 33 + "City:     Paris. Two  spaces  between  words and a"),
    ("newlines-blank-lines", "raw",
     "First line\nSecond line\n\nA new paragraph after one blank line.\n\n\nAnd after two blank lines,\n"
     " a line that starts with a space\nand a last line that"),
    ("tabs", "raw",
     "Name:\tAlice\nAge:\t\t30\n\tindented with one tab\n\t\t\tthree tabs\n \t mixed \t\t spaces and tabs\tend"),
    ("html", "raw",
     "<html><body><h1>Prices</h1><table><tr><th>Item</th><th>Price</th></tr><tr><td>Tea</td><td>2.50</td>"
     "</tr></table><p>Some <b>bold</b>, <em>emphasis</em> and <code>x = 1</code>.</p><ul><li>first</li><li>"),
    ("code-python", "raw",
     "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"),
    ("unicode-french", "raw",
     "Le café était délicieux, et l'été à Montréal fut très agréable. Où sont passées les années ? "
     "Ça, c'est une bonne question, répondit-elle en"),
    # 𠮷 (U+20BB7) is outside the vocabulary and falls back to four <0xXX> byte tokens.
    ("unicode-japanese", "raw", "日本の首都は東京です。富士山は日本で一番高い山で、𠮷野家の牛丼も有名です。"),
    ("unicode-cyrillic", "raw", "Москва — столица России. Зимой в Москве очень холодно, и поэтому"),
    # 🪿 (U+1FABF) is outside the vocabulary and falls back to byte tokens.
    ("emoji", "raw", "I love pizza 🍕 and tacos 🌮! My favourite emoji is 😂 because 👍🏽 and ❤️ and 🪿 are"),
    ("numbers-arithmetic", "raw",
     "Question: What is 12 + 35?\nAnswer: 12 + 35 = 47.\nQuestion: What is 128 * 4?\nAnswer: 128 * 4 ="),
    ("long-paragraph", "raw", LONG_PARAGRAPH),
    # Longer than the 512-token sliding window, so the sliding-window layers see only the last 512 tokens.
    ("long-sliding-window", "raw", SECOND_PARAGRAPH + LONG_PARAGRAPH),
]

# Tokenization-only checks for gemma3 ("tokenizer_cases" in the fixture): where SentencePiece rules are easy
# to get wrong. ids follow llama.cpp (BOS first); transformers_ids is present where transformers differs.
GEMMA3_TOKENIZER_PROBES: list[str] = [
    "Hello", " Hello", "  Hello", "Hello ", "Hello  ", "a b", "a  b", "a   b", "a    b",
    "a" + " " * 31 + "b", "a" + " " * 32 + "b", "a" + " " * 33 + "b", " " * 40, "x" + " " * 64 + "y",
    " ", "  ", "\n", "\n\n", "\n\n\n", "a\nb", "a\n\nb", "a\n b", "a \nb", "a\n  b", "\n" * 40,
    "\t", "\t\t", "a\tb", "a \tb", "a\t b", "\t\t\tx", "\t" * 35,
    "<table><tr><td>1</td></tr></table>", "x<b>bold</b>y", "<div class=\"a\">hi</div>", "<s>", "a<s>b",
    "<p>para</p>", "<h1> Title </h1>",
    "𠜎𠜱𠝹", "鿕", "😂", "👍🏽", "❤️", "🦀 crab", "🪿", "\u200b", "\x00", "\x7f", "ÿ", "\U0010FFFF",
    "<0x41>", "<unused0>", "[multimodal]", "<mask>", "<start_of_turn>user", "<bos>x",
    "The quick brown fox", "Ça va? Où est l'été", "日本語のテキスト", "Привет, мир!",
    "12345 678.9 1,000,000", "def f(x):\n    return x**2\n", "a_b-c/d\\e ~`^|",
    "   leading", "trailing   ", " \t \n ", "\u2581", "\u2581\u2581", "a\u2581b", "a \u2581 b",
]

MODELS = {
    "smollm2": {"file": MODEL_NAME, "out": DEFAULT_OUT, "cases": CASES},
    "gemma3": {"file": GEMMA3_MODEL_NAME, "out": GEMMA3_DEFAULT_OUT, "cases": GEMMA3_CASES},
}


class LlamaCppSpm:
    """llama.cpp's SentencePiece ("llama") tokenizer (llama-vocab.cpp: tokenizer_st_partition +
    llm_tokenizer_spm_session), ported to Python and run on the GGUF's own vocabulary."""

    def __init__(self, tokens, scores, types, add_space_prefix: bool):
        self.tokens = list(tokens)
        self.scores = [float(x) for x in scores]
        self.types = [int(x) for x in types]
        self.add_space_prefix = add_space_prefix
        self.token_to_id: dict[str, int] = {}
        for i, text in enumerate(self.tokens):
            self.token_to_id[text] = i  # the last one wins, as in llama.cpp
        # cache_special_tokens: UNKNOWN (2), CONTROL (3) and USER_DEFINED (4), longest text first.
        special = [i for i, t in enumerate(self.types) if t in (2, 3, 4) and self.tokens[i]]
        self.special = sorted(special, key=lambda i: -len(self.tokens[i].encode("utf-8")))

    def _partition(self, text: str, parse_special: bool) -> list:
        frags: list = [text]
        for tid in self.special:
            if not parse_special and self.types[tid] in (2, 3):
                continue  # USER_DEFINED tokens are cut out even without parse_special
            needle = self.tokens[tid]
            out: list = []
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                start = 0
                while (j := frag.find(needle, start)) >= 0:
                    if j > start:
                        out.append(frag[start:j])
                    out.append(tid)
                    start = j + len(needle)
                if start < len(frag):
                    out.append(frag[start:])
            frags = out
        return frags

    def _spm(self, text: str, out: list[int]) -> None:
        import heapq

        syms = list(text)  # one symbol per Unicode character (llama.cpp: per UTF-8 sequence)
        n = len(syms)
        if n == 0:
            return
        nxt = [i + 1 if i + 1 < n else -1 for i in range(n)]
        prv = [i - 1 for i in range(n)]
        heap: list = []

        def add_bigram(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            merged = syms[left] + syms[right]
            tid = self.token_to_id.get(merged)
            if tid is not None:  # highest score first, then leftmost
                heapq.heappush(heap, (-self.scores[tid], left, right, len(merged)))

        for i in range(1, n):
            add_bigram(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not syms[left] or not syms[right] or len(syms[left]) + len(syms[right]) != size:
                continue  # stale: one side was merged since
            syms[left] += syms[right]
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            add_bigram(prv[left], left)
            add_bigram(left, nxt[left])
        i = 0
        while i != -1:
            tid = self.token_to_id.get(syms[i])
            if tid is not None:
                out.append(tid)
            else:  # byte fallback
                out.extend(self.token_to_id["<0x%02X>" % b] for b in syms[i].encode("utf-8"))
            i = nxt[i]

    def encode(self, text: str, add_bos: bool, bos_id: int, parse_special: bool = True) -> list[int]:
        out = [bos_id] if add_bos else []
        prev_special = True
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
            else:
                piece = (" " if self.add_space_prefix and prev_special else "") + frag
                self._spm(piece.replace(" ", "\u2581"), out)
                prev_special = False
        return out


def default_model_path(model_name: str = MODEL_NAME) -> Path:
    home = os.environ.get("BODEGA_HOME")
    if not home:
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        home = os.path.join(data, "bodega")
    return Path(home) / "models" / model_name


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
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre", "tokenizer.ggml.model",
                "tokenizer.ggml.add_space_prefix", "general.architecture"):
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
    # One tokenizer_cases entry per line (gemma3).
    text = re.sub(
        r'\{\s*("text": "(?:[^"\\]|\\.)*"),\s*("ids": \[[^\]]*\])(?:,\s*("transformers_ids": \[[^\]]*\]))?\s*\}',
        lambda m: "{" + ", ".join(g for g in m.groups() if g) + "}",
        text,
    )
    return text + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=None,
                    help=f"path to {MODEL_NAME} or, with --model gemma3, {GEMMA3_MODEL_NAME} "
                         "(default: where scripts/fetch-test-models.sh installs it)")
    ap.add_argument("--model", dest="choice", choices=sorted(MODELS), default="smollm2",
                    help="which reference to make (default: smollm2)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"fixture to write (default: {DEFAULT_OUT} or {GEMMA3_DEFAULT_OUT})")
    ap.add_argument("--check-llama-cpp", action="store_true",
                    help="SentencePiece models: also compare every prompt and tokenizer probe with llama.cpp's own "
                         "tokenizer through llama-cpp-python (must be installed; does not change the output)")
    args = ap.parse_args()
    spec = MODELS[args.choice]
    out_path: Path = args.out or spec["out"]

    t_start = time.time()
    model_path: Path = (args.model or default_model_path(spec["file"])).resolve()
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
    if add_bos:
        bos_note = (f"Every prompt_ids starts with BOS {tok.bos_token} (id {tok.bos_token_id}) because the GGUF says "
                    f"tokenizer.ggml.add_bos_token={meta['tokenizer.ggml.add_bos_token']}; no EOS is appended "
                    f"(tokenizer.ggml.add_eos_token={meta['tokenizer.ggml.add_eos_token']}).")
    else:
        bos_note = ("prompt_ids are fed as-is; no BOS is prepended because the GGUF says tokenizer.ggml.add_bos_token="
                    f"{meta['tokenizer.ggml.add_bos_token']}.")
    notes = [
        bos_note,
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

    spm = None
    if meta["tokenizer.ggml.model"] == "llama":
        from gguf import GGUFReader

        fields = GGUFReader(str(model_path)).fields
        space_prefix = meta["tokenizer.ggml.add_space_prefix"]
        spm = LlamaCppSpm(fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.scores"].contents(),
                          fields["tokenizer.ggml.token_type"].contents(),
                          add_space_prefix=True if space_prefix is None else bool(space_prefix))
        notes.append(
            "Tokenizer (tokenizer.ggml.model 'llama' = SentencePiece, add_space_prefix="
            f"{spm.add_space_prefix}): prompt_ids follow llama.cpp's rules, computed by a Python port of "
            "llama.cpp's SPM tokenizer on the GGUF vocabulary (scripts/make-reference.py, LlamaCppSpm): "
            "USER_DEFINED and CONTROL token texts are cut out of the raw text whole, longest first (runs of "
            "2-31 real spaces, 1-31 newlines, 1-31 tabs, HTML tags such as <table> <b> <s>, and control "
            "tokens like <start_of_turn>: parse_special=true); each remaining piece gets ' ' -> U+2581, no "
            "prefix space, then pairwise merges, best score first (ties leftmost); characters outside the "
            "vocabulary become <0xXX> byte tokens, one per UTF-8 byte."
        )
        notes.append(
            "transformers' GGUF tokenizer (BPE with merges rebuilt from the vocabulary, space-run tokens "
            "respelled as U+2581 runs) agrees with llama.cpp except: (1) runs of 32 or more spaces, which "
            "transformers cuts into 16-space chunks ('a'+32 spaces+'b' -> a,16sp,16sp,b) while llama.cpp takes "
            "the 31-space token first and tokenizes the rest normally (a,31sp,'▁b'); (2) a literal U+2581 in "
            "the text, which transformers cannot tell from a space. Cases where they differ carry "
            "stock_transformers_prompt_ids (informational; the model is fed prompt_ids); tokenizer_cases "
            "entries carry transformers_ids."
        )

    if spm is not None and args.check_llama_cpp:
        if check_with_llama_cpp(model_path, spm, add_bos, bos_id,
                                [p for _, k, p in spec["cases"] if k == "raw"] + GEMMA3_TOKENIZER_PROBES):
            return 1

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
    tokenizer_cases = None
    if spm is not None:
        tokenizer_cases = []
        for text in GEMMA3_TOKENIZER_PROBES:
            ids = spm.encode(text, add_bos, bos_id)
            entry: dict = {"text": text, "ids": ids}
            hf_ids = encode(stock_tok, text, "raw")
            if hf_ids != ids:
                entry["transformers_ids"] = hf_ids
                print(f"note: tokenizer probe {text!r}: transformers differs", file=sys.stderr)
            tokenizer_cases.append(entry)
        n_diff = sum(1 for e in tokenizer_cases if "transformers_ids" in e)
        notes.append(f"tokenizer_cases: {len(tokenizer_cases)} tokenization-only strings (ids with BOS, as fed); "
                     f"transformers differs on {n_diff} of them.")

    if meta["general.architecture"] == "gemma3":
        notes.append(gemma3_config_note(model))

    with torch.inference_mode():
        for name, kind, payload in spec["cases"]:
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
            if spm is not None:
                if kind != "raw":
                    print(f"error: {name}: chat cases are not implemented for SentencePiece models", file=sys.stderr)
                    return 1
                prompt_ids = spm.encode(text, add_bos, bos_id)
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
        "model": spec["file"],
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
    if tokenizer_cases is not None:
        fixture["tokenizer_cases"] = tokenizer_cases
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(to_json(fixture), encoding="utf-8")
    tmp.replace(out_path)
    print(f"wrote {out_path} ({len(out_cases)} cases, {n_chat} chat); smallest top1-top2 logit margin "
          f"{worst_margin[0]:.4f} at {worst_margin[1]}; total {time.time() - t_start:.1f}s", file=sys.stderr)
    return 0


def gemma3_config_note(model) -> str:
    """What transformers' Gemma 3 forward pass does, as configured from this GGUF (for implementers)."""
    import torch

    cfg = model.config
    full = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
    rope = cfg.rope_parameters
    scale = model.model.embed_tokens.embed_scale.to(torch.float32)
    return (
        f"Gemma 3 as transformers runs it from this GGUF: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} query heads and {cfg.num_key_value_heads} KV head of head_dim {cfg.head_dim}, "
        f"gated MLP {cfg.intermediate_size} with {cfg.hidden_activation} (tanh-approximated GELU) on the gate. "
        f"Layers {full} use full causal attention (every layer i with i % 6 == 5); the other layers use a "
        f"sliding window of {cfg.sliding_window} (query i sees keys i-{cfg.sliding_window - 1}..i). RoPE is "
        f"NEOX-style (rotate halves) over the whole head: rope_theta {rope['full_attention']['rope_theta']:g} on "
        f"full-attention layers, {rope['sliding_attention']['rope_theta']:g} (rope_local_base_freq; the GGUF does "
        f"not store it, transformers' and llama.cpp's default) on sliding layers, no scaling. "
        f"query_pre_attn_scalar={cfg.query_pre_attn_scalar}: scores are scaled by {cfg.query_pre_attn_scalar}^-0.5. "
        f"attn_logit_softcapping={cfg.attn_logit_softcapping}, final_logit_softcapping={cfg.final_logit_softcapping} "
        f"(no soft-capping in Gemma 3). Token embeddings are multiplied by sqrt({cfg.hidden_size}) as a float32 "
        f"scalar ({float(scale):.9g}); the output layer is the tied token embedding matrix. "
        f"RMSNorm (eps {cfg.rms_norm_eps:g}) is y = x / sqrt(mean(x^2) + eps) * w in float32, with w the GGUF value "
        f"as stored (the GGUF already holds 1 + w; transformers loads w - 1 and computes x * (1 + w)). Per layer: "
        f"h = x + post_attention_norm(attn(attn_norm(x))); out = h + post_ffw_norm(mlp(ffn_norm(h))); "
        f"attn_q_norm / attn_k_norm normalize each query and key head (over head_dim) before RoPE, values are "
        f"not normalized; output_norm before the output layer."
    )


def check_with_llama_cpp(model_path: Path, spm: LlamaCppSpm, add_bos: bool, bos_id: int, texts: list[str]) -> int:
    """Compare LlamaCppSpm with llama.cpp itself (llama-cpp-python, vocab only). Returns the number of mismatches."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    bad = 0
    for text in texts:
        ours = spm.encode(text, add_bos, bos_id)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if ours != list(theirs):
            bad += 1
            print(f"error: llama.cpp tokenizes {text!r} as {list(theirs)}, LlamaCppSpm as {ours}", file=sys.stderr)
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) check: {len(texts) - bad} of {len(texts)} texts agree",
          file=sys.stderr)
    return bad


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
