#!/usr/bin/env python3
"""Builds bench-configs/copy-edit.jsonl from bench-configs/copy-edit.txt: two chat prompts per paragraph
(the instruction before it, and after it) asking for the paragraph back with one word replaced. The reply copies most of its prompt, which is
what speculative decoding with n-gram prompt lookup is for (`bodega bench --config
bench-configs/copy-edit.toml --speculative ngram --spec-compare`).

The text file holds paragraphs, each followed by a line `|WORD|REPLACEMENT`."""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent.parent / "bench-configs"
lines = (HERE / "copy-edit.txt").read_text().splitlines()
with open(HERE / "copy-edit.jsonl", "w") as out:
    for paragraph, edit in zip(lines[0::2], lines[1::2]):
        _, word, replacement = edit.split("|")
        prompts = [
            f'Rewrite the paragraph below exactly as it is, except that the word "{word}" becomes '
            f'"{replacement}". Reply with the rewritten paragraph only.\n\n{paragraph}',
            f'{paragraph}\n\nCopy the paragraph above word for word, but write "{replacement}" wherever it '
            f'says "{word}".',
        ]
        for prompt in prompts:
            line = {"messages": [{"role": "user", "content": prompt}], "output_len": 128}
            out.write(json.dumps(line) + "\n")
