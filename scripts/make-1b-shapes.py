#!/usr/bin/env python3
"""Writes one random model of Llama 3.2 1B's shape in three formats, for load-time and peak-memory
measurements per format (scripts/perf-formats.sh): a bf16 safetensors folder, the same weights as a
Q8_0 GGUF (the `gguf` package's quantizer), and an MLX 4-bit folder (mlx-lm's converter, groups of 64).
The tokenizer is the tiny one of tests/fixtures/tiny/llama (its 384 tokens are ids the model accepts).

    python3 scripts/make-1b-shapes.py OUT_DIR [--layers N]

About 5 GB of disk and 6 GB of memory; a few minutes. Needs torch, transformers, gguf, mlx[cpu] and
mlx-lm (tests/fixtures/README.md has the pip line).
"""

import argparse
import shutil
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from mlx_lm import convert
from safetensors import safe_open

TINY = Path(__file__).resolve().parent.parent / "tests/fixtures/tiny/llama"
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf(hf: Path, config, out: Path):
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("random-llama-1b-shape")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(config.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    # The tiny fixture's tokenizer metadata, copied field by field.
    tiny = gguf.GGUFReader(str(TINY / "model.gguf"))
    for field in tiny.fields.values():
        if field.name.startswith("tokenizer."):
            w.add_key_value(field.name, field.contents(), field.types[0],
                            sub_type=field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    with safe_open(str(hf / "model.safetensors"), "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name).to(torch.float32).numpy()
            if name == "model.embed_tokens.weight":
                gname = "token_embd.weight"
            elif name == "model.norm.weight":
                gname = "output_norm.weight"
            else:
                parts = name.split(".")
                module = GGUF_NAMES[".".join(parts[3:-1])]
                gname = f"blk.{parts[2]}.{module}.{parts[-1]}"
                if module in heads:  # llama.cpp's interleaved rotary pairs
                    n = heads[module]
                    t = t.reshape(n, 2, t.shape[0] // n // 2, -1).swapaxes(1, 2).reshape(t.shape)
            if t.ndim == 2:
                w.add_tensor(gname, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(gname, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args()
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=args.layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    hf = args.out / "safetensors-bf16"
    model.save_pretrained(hf, max_shard_size="100GB")
    del model
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / "hf" / name, hf / name)
    write_gguf(hf, config, args.out / "llama-1b-shape-Q8_0.gguf")
    convert(str(hf), str(args.out / "mlx-4bit-g64"), quantize=True, q_bits=4, q_group_size=64, dtype="bfloat16")
    print(args.out)


if __name__ == "__main__":
    main()
