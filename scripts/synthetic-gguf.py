#!/usr/bin/env python3
"""Writes a GGUF of Llama-3.2-1B's shape with random weights, for llama.cpp on the GPU machine (which
has no model files and no network): the counterpart of `bodega bench --synthetic llama-3.2-1b:TYPE`.
F16 weights are small random values; Q8_0 blocks get one fixed small scale and random codes (speed
does not depend on the values). No vocabulary: llama.cpp's `no_vocab` kind with dummy tokens.

    PYTHONPATH=llama.cpp/gguf-py python3 scripts/synthetic-gguf.py OUT.gguf f16|q8_0
"""
import sys

import numpy as np
import gguf

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 2048, 16, 32, 8, 8192, 128256
HEAD_DIM = HIDDEN // HEADS


def matrix(rng, rows, cols, kind):
    if kind == "f16":
        return rng.uniform(-0.03, 0.03, size=(rows, cols)).astype(np.float16), None
    # Q8_0: blocks of 32 codes after one f16 scale (34 bytes), as raw bytes.
    blocks = rng.integers(-127, 128, size=(rows, cols // 32, 34), dtype=np.int8).view(np.uint8)
    blocks[:, :, 0:2] = np.frombuffer(np.float16(0.001).tobytes(), dtype=np.uint8)
    return blocks.reshape(rows, cols // 32 * 34), gguf.GGMLQuantizationType.Q8_0


def main():
    out, kind = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(out, "llama")
    w.add_name(f"synthetic llama-3.2-1b {kind}")
    w.add_context_length(131072)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("no_vocab")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)

    def add(name, rows, cols):
        data, raw = matrix(rng, rows, cols, kind)
        w.add_tensor(name, data, raw_dtype=raw)

    add("token_embd.weight", VOCAB, HIDDEN)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    for i in range(LAYERS):
        add(f"blk.{i}.attn_q.weight", HEADS * HEAD_DIM, HIDDEN)
        add(f"blk.{i}.attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        add(f"blk.{i}.attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        add(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        add(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        add(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        add(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(out)


if __name__ == "__main__":
    main()
