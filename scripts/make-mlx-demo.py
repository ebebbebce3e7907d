#!/usr/bin/env python3
"""Writes the SmolLM2-135M demo model as an MLX 4-bit folder, for comparing bodega's speed on the same
weights in two formats (docs/perf.md): the GGUF Q4_1 file is de-quantized with the `gguf` package
(Q/K rows put back in transformers' order), saved as a float16 safetensors folder, and quantized by
mlx-lm's own converter to 4 bits with groups of 32 and float16 scales, which bodega repacks into Q4_1
blocks exactly at load time.

    python3 scripts/make-mlx-demo.py [--gguf PATH] [--out DIR]

Needs transformers, torch, gguf, accelerate, mlx[cpu] and mlx-lm (tests/fixtures/README.md has the
pip line). Defaults: the demo file where scripts/fetch-test-models.sh puts it, and
$BODEGA_HOME/models/smollm2-135m-mlx-4bit.
"""

import argparse
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from mlx_lm import convert
from safetensors.numpy import save_file

HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def models_dir() -> Path:
    home = os.environ.get("BODEGA_HOME") or Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "bodega"
    return Path(home) / "models"


def write_hf(path: Path, out: Path):
    """The GGUF's weights, de-quantized, as a transformers Llama folder."""
    reader = gguf.GGUFReader(str(path))
    meta = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("tokenizer.ggml.")}
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    tensors = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, module, kind = t.name.split(".")
            name = f"model.layers.{layer}.{HF_NAMES[module]}.{kind}"
            n = {"attn_q": heads, "attn_k": kv_heads}.get(module)
            if n:  # llama.cpp's converter interleaved the rotary pairs; transformers rotates halves
                w = w.reshape(n, w.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        tensors[name] = np.ascontiguousarray(w.astype(np.float16))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = transformers.LlamaConfig(
        vocab_size=tensors["model.embed_tokens.weight"].shape[0],
        hidden_size=meta["llama.embedding_length"],
        intermediate_size=meta["llama.feed_forward_length"],
        num_hidden_layers=meta["llama.block_count"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=meta["llama.context_length"],
        rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": meta.get("llama.rope.freq_base", 10000.0)},
        tie_word_embeddings="lm_head.weight" not in tensors,
        dtype=torch.float16,
    )
    config.save_pretrained(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--out", type=Path, default=models_dir() / "smollm2-135m-mlx-4bit")
    args = parser.parse_args()
    if not args.gguf.is_file():
        raise SystemExit(f"{args.gguf} is missing: run scripts/fetch-test-models.sh first")
    with tempfile.TemporaryDirectory() as tmp:
        write_hf(args.gguf, Path(tmp))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name)
        tokenizer.save_pretrained(tmp)
        convert(tmp, str(args.out), quantize=True, q_bits=4, q_group_size=32, dtype="float16")
    print(args.out)


if __name__ == "__main__":
    main()
