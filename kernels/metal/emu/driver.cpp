// Runs bodega's Metal kernels on the CPU through the MSL shim (metal_stdlib here), launched exactly as
// the host launches them (src/ops/metal.rs), for tests/metal_emulated.rs:
//
//   driver attention IN OUT    paged attention of one batch (decode + reduce, and prefill)
//   driver kv_write IN OUT     one kv_write call
//
// IN and OUT are raw little-endian files whose layout the test writes (tests/metal_emulated.rs, `Case`).
// Outputs and scratch buffers start as NaN, so that anything a kernel fails to write shows.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include <kv_write.metal>
#include <paged_attention.metal>

namespace {

/// Reads the whole input file and hands out its sections in order.
struct Input {
  std::vector<char> bytes;
  size_t at = 0;
  explicit Input(const char* path) {
    std::ifstream f(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  template <typename T> std::vector<T> take(size_t n) {
    if (at + n * sizeof(T) > bytes.size()) {
      std::fprintf(stderr, "driver: input too short\n");
      std::exit(2);
    }
    std::vector<T> v(n);
    std::memcpy(v.data(), bytes.data() + at, n * sizeof(T));
    at += n * sizeof(T);
    return v;
  }
  template <typename T> T one() { return take<T>(1)[0]; }
};

template <typename T> void write(const char* path, const std::vector<T>& v) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <typename T> T poison() { return T(NAN); }

template <typename T> void run_kv_write(Input& in, const char* out_path) {
  const KvWriteParams p{in.one<uint>(), in.one<uint>()};
  const uint tokens = in.one<uint>();
  const auto src = in.take<T>(size_t(tokens) * p.row_len);
  const auto slots = in.take<uint>(tokens);
  auto cache = in.take<T>(size_t(p.num_slots) * p.row_len);
  const unsigned threads = 128;
  msl_emu::dispatch({tokens, 1, 1}, threads, [&](msl_emu::Grid g, unsigned tid) {
    kv_write<T>(src.data(), slots.data(), cache.data(), p, g.x, tid, threads);
  });
  write(out_path, cache);
}

template <typename T, uint D> void run_attention(Input& in, const char* out_path) {
  const uint num_heads = in.one<uint>(), num_kv_heads = in.one<uint>(), num_blocks = in.one<uint>();
  const uint max_blocks = in.one<uint>(), num_seqs = in.one<uint>(), num_tokens = in.one<uint>();
  const uint window = in.one<uint>();
  const float scale = in.one<float>();
  const auto q = in.take<T>(size_t(num_tokens) * num_heads * D);
  const size_t cache_len = size_t(num_blocks) * BLOCK_SIZE * num_kv_heads * D;
  const auto k_cache = in.take<T>(cache_len), v_cache = in.take<T>(cache_len);
  const auto tables = in.take<uint>(size_t(num_seqs) * max_blocks);
  const auto cu = in.take<uint>(num_seqs + 1);
  const auto ctx = in.take<uint>(num_seqs);

  // The host's launch (src/ops/metal.rs): scratch sized by the longest decode context, tiles by the
  // most rows of a prefill sequence.
  const uint group = num_heads / num_kv_heads;
  uint max_partitions = 1, max_rows = 0;
  for (uint s = 0; s < num_seqs; ++s) {
    const uint q_len = cu[s + 1] - cu[s];
    if (q_len == 1) max_partitions = std::max(max_partitions, (ctx[s] + PARTITION_SIZE - 1) / PARTITION_SIZE);
    else max_rows = std::max(max_rows, q_len * group);
  }
  const AttentionParams p{num_heads, num_kv_heads, max_blocks, window, max_partitions, scale};
  std::vector<T> out(q.size(), poison<T>());
  const size_t parts = size_t(num_seqs) * num_heads * max_partitions;
  std::vector<float> acc(parts * D, NAN), mx(parts, NAN), sum(parts, NAN);

  const uint chunks = (group + MAX_GROUP - 1) / MAX_GROUP;
  msl_emu::dispatch({num_kv_heads * chunks, num_seqs, max_partitions}, SIMD_WIDTH, [&](msl_emu::Grid g, unsigned t) {
    paged_attention_decode<T, D>(q.data(), k_cache.data(), v_cache.data(), tables.data(), cu.data(), ctx.data(),
                                 acc.data(), mx.data(), sum.data(), p, uint3(g.x, g.y, g.z), t);
  });
  msl_emu::dispatch({num_heads, num_seqs, 1}, SIMD_WIDTH, [&](msl_emu::Grid g, unsigned t) {
    paged_attention_reduce<T, D>(acc.data(), mx.data(), sum.data(), cu.data(), ctx.data(), out.data(), p,
                                 uint3(g.x, g.y, g.z), t);
  });
  if (max_rows > 0) {
    constexpr uint rows = 8 * prefill_simdgroups<D>();
    const uint tiles = (max_rows + rows - 1) / rows;
    msl_emu::dispatch({num_kv_heads, num_seqs, tiles}, SIMD_WIDTH * prefill_simdgroups<D>(),
                      [&](msl_emu::Grid g, unsigned t) {
                        paged_attention_prefill<T, D>(q.data(), k_cache.data(), v_cache.data(), tables.data(),
                                                      cu.data(), ctx.data(), out.data(), p, uint3(g.x, g.y, g.z),
                                                      t, t / SIMD_WIDTH, t % SIMD_WIDTH);
                      });
  }
  write(out_path, out);
}

template <typename T> void run_attention_dim(Input& in, uint head_dim, const char* out_path) {
  switch (head_dim) {
    case 64: return run_attention<T, 64>(in, out_path);
    case 128: return run_attention<T, 128>(in, out_path);
    case 256: return run_attention<T, 256>(in, out_path);
    default: std::fprintf(stderr, "driver: no kernel for head dim %u\n", head_dim); std::exit(2);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: driver attention|kv_write IN OUT\n");
    return 2;
  }
  const std::string op = argv[1];
  Input in(argv[2]);
  const uint is_bfloat = in.one<uint>();
  if (op == "kv_write") {
    is_bfloat ? run_kv_write<bfloat>(in, argv[3]) : run_kv_write<half>(in, argv[3]);
  } else if (op == "attention") {
    const uint head_dim = in.one<uint>();
    is_bfloat ? run_attention_dim<bfloat>(in, head_dim, argv[3]) : run_attention_dim<half>(in, head_dim, argv[3]);
  } else {
    std::fprintf(stderr, "driver: unknown op %s\n", op.c_str());
    return 2;
  }
  return 0;
}
