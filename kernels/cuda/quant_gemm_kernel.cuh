#pragma once
// The quantized GEMM kernel, written once over the weight format (dense int4,
// dense int8, 2:4 int4, GGUF Q4_K/Q5_K/Q6_K) and the number of 8-token tiles per
// block (1, 2, 4, 8). Instantiated in w4a16_gemm.cu (dense), sparse24_gemm.cu
// (2:4) and kquant_gemm.cu (K-quants); see quant_gemm.h for the design,
// fragment_layout.h and kquant_layout.h for every index.
//
// Block: 8 warps; warp w owns weight tile (rows) n_block * 128 + 16 w .. +15 for
// all kMTiles * 8 tokens of the block's token range and the block's chunk range.
// Stage s of the 4-deep cp.async pipeline holds, for one 64-input chunk:
//   [x: kMBlock rows x 128 B, swizzled][8 weight blobs][4 slots x 128 scale records][4 tile groups]
//   [K-quants only: 128 sub-scale records]
// Per chunk a warp does, for each 32-input half ("pair"): ldmatrix.x4 the B
// fragments of every token tile, dequantize its A fragments in registers (two
// m16n8k16 tiles, or one m16n8k32 sparse unit), and mma into fp32 accumulators.
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/fragment_layout.h"
#include "kernels/cuda/kquant_layout.h"
#include "kernels/cuda/quant_gemm.h"

namespace nibble::kernels::cuda::detail {

using namespace layout;

struct GemmArgs {
  const std::uint32_t* weights;
  const std::uint32_t* scales;
  const std::uint32_t* sub_scales;  // K-quants: [k_chunks][n_pad]
  const int4* tile_group4;  // k_chunks entries: the groups of a chunk's 4 tiles
  const std::uint16_t* x;
  std::int64_t ldx;
  float* y;
  std::int64_t ldy;
  const float* bias;
  float* workspace;
  int* counters;
  int m;
  int n;
  int n_pad;
  int k_chunks;
  int chunks_per_split;
  int splits;
  int min_offset;
};

template <QuantFormat F, int kMTiles>
struct GemmShape {
  static constexpr int kThreads = kWarpsPerBlock * kWarpSize;
  static constexpr int kStages = 4;
  static constexpr int kMBlock = kMTiles * kTokensPerMma;
  static constexpr int kBlobBytes = blob_words(F) * 4;
  static constexpr int kXBytes = kMBlock * kXRowBytes;
  static constexpr int kWBytes = kWarpsPerBlock * kBlobBytes;
  static constexpr int kSBytes = kTilesPerChunk * kBlockN * 4;
  static constexpr int kGBytes = 16;
  static constexpr int kSubBytes = kquant_has_sub_scales(F) ? kBlockN * 4 : 0;
  static constexpr int kSubOffset = kXBytes + kWBytes + kSBytes + kGBytes;
  static constexpr int kStageBytes = kSubOffset + kSubBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(kMTiles == 1 || kMTiles == 2 || kMTiles == 4 || kMTiles == 8);
  static_assert(kXBytes % 16 == 0 && kBlobBytes % 16 == 0 && kStageBytes % 16 == 0, "cp.async moves 16-byte pieces");
  static_assert(kSBytes == kTilesPerChunk * kWarpSize * 16, "one warp copies one slot: 32 lanes x 16 bytes");
  static_assert(kSubBytes == 0 || kSubBytes == kWarpSize * 16, "one warp copies the sub-scale records");
  static_assert(kWarpsPerBlock > kTilesPerChunk, "the warp after the scale-slot warps copies the sub-scales");
  static_assert(kSmemBytes <= 227 * 1024, "over the sm_90 shared memory limit");
};

// --- PTX wrappers -------------------------------------------------------------

__device__ __forceinline__ std::uint32_t smem_address(const void* pointer) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(__cvta_generic_to_global(src)));
}

// Copies 16 bytes, or writes 16 zero bytes when !valid (src is then never read).
__device__ __forceinline__ void cp_async16_zfill(std::uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(__cvta_generic_to_global(src)),
               "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ std::uint32_t hsub2(std::uint32_t a, std::uint32_t b) {
  std::uint32_t d;
  asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

__device__ __forceinline__ std::uint32_t hfma2(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
  std::uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// D += A B, m16n8k16, fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D += A B, m16n8k32 with A 2:4 sparse (16 kept of 32 per row), metadata from the
// lanes with threadID_in_group 0 and 1 (sparsity selector 0).
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[4],
                                             std::uint32_t metadata) {
  asm("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(metadata));
}

// --- dequantization (fragment_layout.h gives the arithmetic) -----------------

struct RowConstants {
  std::uint32_t zl;  // 1024 + z, both halves
  std::uint32_t zh;  // -(64 + z)
  std::uint32_t s;   // scale
  std::uint32_t c;   // minimum (0 for a zero point)
};

__device__ __forceinline__ std::uint32_t broadcast16(std::uint32_t half_bits) { return half_bits * 0x10001u; }

__device__ __forceinline__ RowConstants row_constants(std::uint32_t record, int min_offset) {
  const std::uint32_t scale = record & 0xffffu;
  const std::uint32_t zero_or_min = record >> 16;
  const float zero = min_offset ? 0.0f : __half2float(__ushort_as_half(static_cast<unsigned short>(zero_or_min)));
  RowConstants k;
  k.zl = broadcast16(__half_as_ushort(__float2half_rn(1024.0f + zero)));
  k.zh = broadcast16(__half_as_ushort(__float2half_rn(-(64.0f + zero))));
  k.s = broadcast16(scale);
  k.c = min_offset ? broadcast16(zero_or_min) : 0u;
  return k;
}

__device__ __forceinline__ std::uint32_t dequant_lo(std::uint32_t v, const RowConstants& k) {
  return hfma2(hsub2(v, k.zl), k.s, k.c);
}
__device__ __forceinline__ std::uint32_t dequant_hi(std::uint32_t v, const RowConstants& k) {
  constexpr std::uint32_t kSixteenth2 = static_cast<std::uint32_t>(kF16_OneSixteenth) * 0x10001u;
  return hfma2(hfma2(v, kSixteenth2, k.zh), k.s, k.c);
}

// A fragment of a 4-bit word (dense tile or sparse unit): registers 0, 2 are rows
// gid (lo), 1, 3 rows gid + 8 (hi).
__device__ __forceinline__ void dequant4(std::uint32_t word, const RowConstants& lo, const RowConstants& hi,
                                         std::uint32_t (&a)[4]) {
  std::uint32_t r[4];
  extract4(word, r);
  a[0] = dequant_lo(r[0], lo);
  a[1] = dequant_hi(r[1], hi);
  a[2] = dequant_lo(r[2], lo);
  a[3] = dequant_hi(r[3], hi);
}

__device__ __forceinline__ void dequant8(std::uint32_t part0, std::uint32_t part1, const RowConstants& lo,
                                         const RowConstants& hi, std::uint32_t (&a)[4]) {
  std::uint32_t p0[2];
  std::uint32_t p1[2];
  extract8(part0, p0);
  extract8(part1, p1);
  a[0] = dequant_lo(p0[0], lo);
  a[1] = dequant_lo(p0[1], hi);
  a[2] = dequant_lo(p1[0], lo);
  a[3] = dequant_lo(p1[1], hi);
}

// A fragment of K-quant tile t: each weight computed in fp32 as the CPU decoder
// computes it (kquant_layout.h), then rounded to fp16 (nearest even) in pairs.
template <QuantFormat F>
__device__ __forceinline__ void dequant_kquant(const std::uint32_t (&words)[words_per_lane(F)], int t,
                                               const KquantRow& lo, const KquantRow& hi, std::uint32_t (&a)[4]) {
  float values[8];
  kquant_fragment<F>(words, t, lo, hi, values);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const __half2 pair = __floats2half2_rn(values[2 * r], values[2 * r + 1]);  // value 2r in the low half
    a[r] = *reinterpret_cast<const std::uint32_t*>(&pair);
  }
}

__device__ __forceinline__ int pick(int t, int v0, int v1, int v2, int v3) {
  return t == 0 ? v0 : t == 1 ? v1 : t == 2 ? v2 : v3;
}

// --- the kernel -------------------------------------------------------------------

template <QuantFormat F, int kMTiles>
__global__ void __launch_bounds__(GemmShape<F, kMTiles>::kThreads)
    quant_gemm_kernel(const GemmArgs args) {
  using S = GemmShape<F, kMTiles>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last_block;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;
  const int n_block = static_cast<int>(blockIdx.x);
  const int split = static_cast<int>(blockIdx.y);
  const int m_block = static_cast<int>(blockIdx.z);
  const int m0 = m_block * S::kMBlock;
  const int chunk_begin = split * args.chunks_per_split;
  const int chunk_end = min(args.k_chunks, chunk_begin + args.chunks_per_split);
  const int n_chunks = chunk_end - chunk_begin;
  const std::int64_t tile = static_cast<std::int64_t>(n_block) * kWarpsPerBlock + warp;
  const std::uint32_t* tile_weights = args.weights + tile * args.k_chunks * blob_words(F);
  const std::uint32_t smem_base = smem_address(smem);

  // Issues the cp.asyncs of chunk `chunk` into stage `stage` (not committed).
  const auto load_stage = [&](int stage, int chunk) {
    const std::uint32_t base = smem_base + static_cast<std::uint32_t>(stage * S::kStageBytes);
    for (int i = tid; i < S::kMBlock * kXPiecesPerRow; i += S::kThreads) {
      const int row = i / kXPiecesPerRow;
      const int piece = i % kXPiecesPerRow;
      const int m = m0 + row;
      const bool valid = m < args.m;
      const std::uint16_t* src =
          valid ? args.x + static_cast<std::int64_t>(m) * args.ldx + static_cast<std::int64_t>(chunk) * kChunkK + piece * 8
                : args.x;
      cp_async16_zfill(base + static_cast<std::uint32_t>(x_stage_offset(row, piece)), src, valid);
    }
    const std::uint32_t* blob = tile_weights + static_cast<std::int64_t>(chunk) * blob_words(F);
    const std::uint32_t blob_dst = base + static_cast<std::uint32_t>(S::kXBytes + warp * S::kBlobBytes);
    for (int i = lane; i < S::kBlobBytes / 16; i += kWarpSize) {
      cp_async16(blob_dst + static_cast<std::uint32_t>(i * 16), blob + i * 4);
    }
    const int4 groups = __ldg(args.tile_group4 + chunk);
    int slot[4];
    bool starts[4];
    chunk_slots(groups.x, groups.y, groups.z, groups.w, slot, starts);
    if (warp < kTilesPerChunk) {
      const bool start = warp == 0 ? starts[0] : warp == 1 ? starts[1] : warp == 2 ? starts[2] : starts[3];
      if (start) {
        const int group = pick(warp, groups.x, groups.y, groups.z, groups.w);
        const int to_slot = pick(warp, slot[0], slot[1], slot[2], slot[3]);
        const std::uint32_t* src =
            args.scales + static_cast<std::int64_t>(group) * args.n_pad + n_block * kBlockN + lane * 4;
        cp_async16(base + static_cast<std::uint32_t>(S::kXBytes + S::kWBytes + to_slot * kBlockN * 4 + lane * 16), src);
      }
    }
    if (tid == 0) {
      *reinterpret_cast<int4*>(smem + stage * S::kStageBytes + S::kXBytes + S::kWBytes + S::kSBytes) = groups;
    }
    if constexpr (kquant_has_sub_scales(F)) {
      if (warp == kTilesPerChunk) {
        const std::uint32_t* src =
            args.sub_scales + static_cast<std::int64_t>(chunk) * args.n_pad + n_block * kBlockN + lane * 4;
        cp_async16(base + static_cast<std::uint32_t>(S::kSubOffset + lane * 16), src);
      }
    }
  };

  float acc[kMTiles][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.0f;
  }
  const int gid = lane >> 2;
  const int row_lo = warp * kTileN + gid;  // this lane's rows: row_lo and row_lo + 8 of the block

  const auto compute_stage = [&](int stage) {
    const unsigned char* stage_bytes = smem + stage * S::kStageBytes;
    const std::uint32_t x_base = smem_base + static_cast<std::uint32_t>(stage * S::kStageBytes);
    const std::uint32_t* blob = reinterpret_cast<const std::uint32_t*>(stage_bytes + S::kXBytes + warp * S::kBlobBytes);
    const std::uint32_t* records = reinterpret_cast<const std::uint32_t*>(stage_bytes + S::kXBytes + S::kWBytes);
    const int4 groups = *reinterpret_cast<const int4*>(stage_bytes + S::kXBytes + S::kWBytes + S::kSBytes);
    int slot[4];
    bool starts[4];
    chunk_slots(groups.x, groups.y, groups.z, groups.w, slot, starts);

    std::uint32_t words[words_per_lane(F)];
    if constexpr (is_kquant(F)) {
      const uint4 w4 = *reinterpret_cast<const uint4*>(blob + kquant_word_index(F, lane, 0));
      words[0] = w4.x;
      words[1] = w4.y;
      words[2] = w4.z;
      words[3] = w4.w;
#pragma unroll
      for (int w = 4; w < words_per_lane(F); ++w) words[w] = blob[kquant_word_index(F, lane, w)];
    } else if constexpr (F == QuantFormat::Sparse4) {
      const uint2 codes = *reinterpret_cast<const uint2*>(blob + sparse_code_index(lane, 0));
      words[0] = codes.x;
      words[1] = codes.y;
      words[2] = blob[sparse_meta_index(lane)];
    } else {
#pragma unroll
      for (int q = 0; q < words_per_lane(F) / 4; ++q) {
        const uint4 w4 = *reinterpret_cast<const uint4*>(blob + dense_word_index(lane, 4 * q));
        words[4 * q + 0] = w4.x;
        words[4 * q + 1] = w4.y;
        words[4 * q + 2] = w4.z;
        words[4 * q + 3] = w4.w;
      }
    }
    // Sparse: unit 1's metadata sits in the lanes with tig 2, 3; the mma reads tig 0, 1.
    std::uint32_t metadata[2] = {0u, 0u};
    if constexpr (F == QuantFormat::Sparse4) {
      metadata[0] = words[2];
      metadata[1] = __shfl_xor_sync(0xffffffffu, words[2], 2);
    }

#pragma unroll
    for (int pair = 0; pair < 2; ++pair) {
      std::uint32_t b[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        ldmatrix_x4(b[mt], x_base + static_cast<std::uint32_t>(b_fragment_offset(lane, mt, pair)));
      }
      if constexpr (is_kquant(F)) {
        // K-quants: a chunk lies in one super-block (slot 0 for every tile) and has
        // one sub-scale record per row. Q5_0 / Q5_1: a block per 2 tiles, no sub-scales.
        const std::uint32_t* subs = reinterpret_cast<const std::uint32_t*>(stage_bytes + S::kSubOffset);
        const std::uint32_t sub_lo = kquant_has_sub_scales(F) ? subs[row_lo] : 0u;
        const std::uint32_t sub_hi = kquant_has_sub_scales(F) ? subs[row_lo + 8] : 0u;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = 2 * pair + half;
          const std::uint32_t super_lo = records[slot[t] * kBlockN + row_lo];
          const std::uint32_t super_hi = records[slot[t] * kBlockN + row_lo + 8];
          std::uint32_t a[4];
          dequant_kquant<F>(words, t, kquant_row(F, super_lo, sub_lo, t), kquant_row(F, super_hi, sub_hi, t), a);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) mma_16816(acc[mt], a, b[mt][2 * half], b[mt][2 * half + 1]);
        }
      } else if constexpr (F == QuantFormat::Sparse4) {
        const int s = slot[2 * pair];
        const RowConstants lo = row_constants(records[s * kBlockN + row_lo], args.min_offset);
        const RowConstants hi = row_constants(records[s * kBlockN + row_lo + 8], args.min_offset);
        std::uint32_t a[4];
        dequant4(words[pair], lo, hi, a);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) mma_sp_16832(acc[mt], a, b[mt], metadata[pair]);
      } else {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = 2 * pair + half;
          const int s = slot[t];
          const RowConstants lo = row_constants(records[s * kBlockN + row_lo], args.min_offset);
          const RowConstants hi = row_constants(records[s * kBlockN + row_lo + 8], args.min_offset);
          std::uint32_t a[4];
          if constexpr (F == QuantFormat::Dense4) {
            dequant4(words[t], lo, hi, a);
          } else {
            dequant8(words[2 * t], words[2 * t + 1], lo, hi, a);
          }
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) mma_16816(acc[mt], a, b[mt][2 * half], b[mt][2 * half + 1]);
        }
      }
    }
  };

  // The pipeline: kStages - 1 chunks in flight ahead of the one computed.
#pragma unroll
  for (int s = 0; s < S::kStages - 1; ++s) {
    if (s < n_chunks) load_stage(s, chunk_begin + s);
    cp_async_commit();
  }
  for (int i = 0; i < n_chunks; ++i) {
    cp_async_wait<S::kStages - 2>();
    __syncthreads();  // chunk i landed for everyone; stage (i - 1) % kStages is free again
    const int next = i + S::kStages - 1;
    if (next < n_chunks) load_stage(next % S::kStages, chunk_begin + next);
    cp_async_commit();
    compute_stage(i % S::kStages);
  }
  cp_async_wait<0>();

  // Epilogue. D fragment: c0, c1 row gid, c2, c3 row gid + 8; tokens 2 tig + (i & 1).
  const int tig = lane & 3;
  const int n_lo = n_block * kBlockN + row_lo;
  if (args.splits == 1) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = n_lo + (i >= 2 ? 8 : 0);
        const int m = m0 + mt * kTokensPerMma + 2 * tig + (i & 1);
        if (n < args.n && m < args.m) {
          args.y[static_cast<std::int64_t>(m) * args.ldy + n] = acc[mt][i] + (args.bias != nullptr ? args.bias[n] : 0.0f);
        }
      }
    }
    return;
  }

  // Split K: write this split's partial, then the last block of the tile sums them in order.
  float* partial = args.workspace + static_cast<std::int64_t>(split) * args.m * args.n_pad;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int n = n_lo + (i >= 2 ? 8 : 0);
      const int m = m0 + mt * kTokensPerMma + 2 * tig + (i & 1);
      if (m < args.m) partial[static_cast<std::int64_t>(m) * args.n_pad + n] = acc[mt][i];
    }
  }
  __threadfence();
  __syncthreads();
  int* counter = args.counters + static_cast<std::int64_t>(m_block) * gridDim.x + n_block;
  if (tid == 0) is_last_block = atomicAdd(counter, 1) == args.splits - 1 ? 1 : 0;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  const int rows_here = min(S::kMBlock, args.m - m0);
  for (int index = tid; index < rows_here * kBlockN; index += S::kThreads) {
    const int m = m0 + index / kBlockN;
    const int n = n_block * kBlockN + index % kBlockN;
    if (n >= args.n) continue;
    float sum = 0.0f;
    for (int s = 0; s < args.splits; ++s) {
      sum += __ldcg(args.workspace + (static_cast<std::int64_t>(s) * args.m + m) * args.n_pad + n);
    }
    args.y[static_cast<std::int64_t>(m) * args.ldy + n] = sum + (args.bias != nullptr ? args.bias[n] : 0.0f);
  }
  if (tid == 0) *counter = 0;  // ready for the next launch (stream order)
}

// --- host side ---------------------------------------------------------------------

template <QuantFormat F, int kMTiles>
void configure_kernel() {
  // The dynamic shared memory limit is per device; set it the first time a device launches.
  static std::uint64_t configured_devices = 0;  // guarded by the per-call check below (idempotent)
  int device = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&device));
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (bit != 0 && (__atomic_load_n(&configured_devices, __ATOMIC_ACQUIRE) & bit) != 0) return;
  NIBBLE_CUDA_CHECK(cudaFuncSetAttribute(quant_gemm_kernel<F, kMTiles>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         GemmShape<F, kMTiles>::kSmemBytes));
  __atomic_fetch_or(&configured_devices, bit, __ATOMIC_ACQ_REL);
}

template <QuantFormat F, int kMTiles>
void launch_quant_gemm(const QuantGemmLaunch& l) {
  using S = GemmShape<F, kMTiles>;
  configure_kernel<F, kMTiles>();
  const QuantLayoutDims& d = l.w->dims;
  GemmArgs args{};
  args.weights = l.w->weights;
  args.scales = l.w->scales;
  args.sub_scales = l.w->sub_scales;
  args.tile_group4 = reinterpret_cast<const int4*>(l.w->tile_group);
  args.x = l.x;
  args.ldx = l.ldx;
  args.y = l.y;
  args.ldy = l.ldy;
  args.bias = l.bias;
  args.workspace = l.workspace;
  args.counters = l.counters;
  args.m = static_cast<int>(l.m);
  args.n = static_cast<int>(d.rows);
  args.n_pad = static_cast<int>(d.n_pad);
  args.k_chunks = static_cast<int>(d.k_chunks());
  args.chunks_per_split = static_cast<int>(l.plan->chunks_per_split);
  args.splits = static_cast<int>(l.plan->splits);
  args.min_offset = d.min_offset ? 1 : 0;
  const dim3 grid(static_cast<unsigned>(l.plan->n_blocks), static_cast<unsigned>(l.plan->splits),
                  static_cast<unsigned>(l.plan->m_blocks));
  quant_gemm_kernel<F, kMTiles><<<grid, S::kThreads, S::kSmemBytes, l.stream>>>(args);
  NIBBLE_CUDA_CHECK_LAUNCH(l.stream, "quant_gemm_kernel");
}

template <QuantFormat F>
void launch_format(const QuantGemmLaunch& l) {
  switch (l.plan->m_tiles) {
    case 1:
      return launch_quant_gemm<F, 1>(l);
    case 2:
      return launch_quant_gemm<F, 2>(l);
    case 4:
      return launch_quant_gemm<F, 4>(l);
    case 8:
      return launch_quant_gemm<F, 8>(l);
    default:
      throw_cuda_error(cudaErrorInvalidValue, "quantized GEMM: m_tiles must be 1, 2, 4 or 8", __FILE__, __LINE__);
  }
}

template <QuantFormat F, int kMTiles>
int blocks_per_sm() {
  configure_kernel<F, kMTiles>();
  int blocks = 0;
  NIBBLE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, quant_gemm_kernel<F, kMTiles>,
                                                                  GemmShape<F, kMTiles>::kThreads,
                                                                  GemmShape<F, kMTiles>::kSmemBytes));
  return blocks;
}

template <QuantFormat F>
int format_blocks_per_sm(int m_tiles) {
  switch (m_tiles) {
    case 1:
      return blocks_per_sm<F, 1>();
    case 2:
      return blocks_per_sm<F, 2>();
    case 4:
      return blocks_per_sm<F, 4>();
    case 8:
      return blocks_per_sm<F, 8>();
    default:
      throw_cuda_error(cudaErrorInvalidValue, "quantized GEMM: m_tiles must be 1, 2, 4 or 8", __FILE__, __LINE__);
  }
}

}  // namespace nibble::kernels::cuda::detail
