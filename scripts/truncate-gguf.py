#!/usr/bin/env python3
"""Writes a copy of a Llama-family GGUF keeping only its first N blocks (with the embeddings, output
norm, output layer and tokenizer), so that a real-weight model fits the GPU machine's 64 MiB carry.
The result is a smaller, worse model, but the CPU and CUDA backends can be compared on the same file.

    python scripts/truncate-gguf.py IN.gguf OUT.gguf --layers 8    # needs the `gguf` package
"""
import argparse
import re

import gguf


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("dest")
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(args.dest, arch)
    block_count_key = f"{arch}.block_count"
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = args.layers if name == block_count_key else field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, vtype)

    kept = []
    for tensor in reader.tensors:
        m = re.match(r"blk\.(\d+)\.", tensor.name)
        if m and int(m.group(1)) >= args.layers:
            continue
        kept.append(tensor)
    for tensor in kept:
        # The raw bytes go through untouched; for quantized types the reader's shape is in bytes.
        writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{args.dest}: {len(kept)} tensors, {args.layers} blocks")


if __name__ == "__main__":
    main()
