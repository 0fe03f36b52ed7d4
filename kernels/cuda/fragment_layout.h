#pragma once
// The GPU layout of quantized weights, written once for the host (repacking,
// its decoder, the CPU tests) and the device (the GEMM kernels), so both sides
// run the very same index arithmetic and bit extraction. Plain C++: compiles
// with g++ and nvcc alike.
//
// Orientation: the kernels compute y^T = W x^T with the tensor cores' "A"
// operand = a 16x16 tile of weights (16 output rows n, 16 inputs k) and "B" =
// activations (k x 8 tokens). A warp thus holds its weights as mma A fragments,
// which is also the only operand mma.sp can take sparse.
//
// mma.m16n8k16 A fragment (PTX ISA "Matrix Fragments for mma.m16n8k16"): lane l
// (gid = l / 4, tig = l % 4) holds 8 halves a0..a7 in 4 registers; value
// v = 2 r + h (register r, half h) is row gid + 8 (r % 2), column 2 tig + h + 8 (r / 2).
//
// Dense 4-bit: one u32 per lane per 16x16 tile, value v in nibble (v / 2) + 4 (v % 2):
//   nibble 0: (gid,   2t)    nibble 4: (gid,   2t+1)   -> register 0
//   nibble 1: (gid+8, 2t)    nibble 5: (gid+8, 2t+1)   -> register 1
//   nibble 2: (gid,   2t+8)  nibble 6: (gid,   2t+9)   -> register 2
//   nibble 3: (gid+8, 2t+8)  nibble 7: (gid+8, 2t+9)   -> register 3
// so the masks 0x000f000f / 0x00f000f0 on w and on w >> 8 put each register's two
// codes into the mantissas of two fp16 1024.0 (the "magic number" dequant).
// Dense 8-bit: two u32 per lane per tile (part p = register / 2), value v in byte
// (v / 2) % 2 + 2 (v % 2) of part v / 4; masks 0x00ff00ff on w and w >> 8.
// 2:4 sparse 4-bit (mma.sp.m16n8k32): a unit of 32 inputs holds 16 kept values per
// row in the same A fragment layout (value v = the (v % 2)-th kept element of the
// 4-wide chunk tig + 4 (v / 4) of row gid + 8 ((v / 2) % 2)), one u32 of codes per
// lane per unit, and 2-bit positions in the metadata operand: for selector 0 the
// lanes with tig 0 and 1 ("role") hold it, bits 16 h + 4 j .. +3 describing chunk
// 4 role + j of row gid + 8 h as idx0 | idx1 << 2 (idx0 < idx1).
//
// A chunk of 64 inputs of one 16-row tile is one "blob" of u32 words, the unit the
// pipeline copies global -> shared verbatim (so its inner order only matters to
// the lanes that read it back, conflict-free):
//   Dense4: 128 words, word (w / 4 * 32 + lane) * 4 + w % 4 is lane's tile w (w < 4)
//   Dense8: 256 words, the same formula for lane's word w = 2 tile + part (w < 8)
//   Sparse4: 96 words, lane * 2 + unit = codes of unit 0/1; 64 + lane = metadata
//            (tig 0,1: unit 0 roles 0,1; tig 2,3: unit 1 roles 0,1)
#include <cstdint>

#if defined(__CUDACC__)
#define NIBBLE_HD __host__ __device__ __forceinline__
#else
#define NIBBLE_HD inline
#endif

namespace nibble::kernels::cuda::layout {

inline constexpr int kWarpSize = 32;
inline constexpr int kTileN = 16;         // weight rows per mma tile (one warp's rows)
inline constexpr int kTileK = 16;         // inputs per dense mma (m16n8k16)
inline constexpr int kSparseUnitK = 32;   // inputs per sparse mma (m16n8k32)
inline constexpr int kChunkK = 64;        // inputs per pipeline stage and blob
inline constexpr int kTilesPerChunk = kChunkK / kTileK;          // 4
inline constexpr int kSparseUnitsPerChunk = kChunkK / kSparseUnitK;  // 2
inline constexpr int kWarpsPerBlock = 8;
inline constexpr int kBlockN = kTileN * kWarpsPerBlock;          // 128 rows per thread block
inline constexpr int kTokensPerMma = 8;                          // mma N: tokens per B fragment

static_assert(kChunkK % kTileK == 0 && kChunkK % kSparseUnitK == 0);
static_assert(kBlockN == 128, "the scale staging copies 128 rows as 32 lanes x 16 bytes");

// Q4K / Q5K / Q6K / Q50 / Q51: GGUF Q4_K, Q5_K, Q6_K super-blocks and Q5_0, Q5_1
// blocks, decoded in fp32 (kquant_layout.h): the low 4 bits of each code in a
// Dense4 blob, then 1 (Q5K, Q50, Q51) or 2 (Q6K) high-bit planes.
enum class QuantFormat : int { Dense4 = 0, Dense8 = 1, Sparse4 = 2, Q4K = 3, Q5K = 4, Q6K = 5, Q50 = 6, Q51 = 7 };

NIBBLE_HD constexpr bool is_kquant(QuantFormat format) {
  return format == QuantFormat::Q4K || format == QuantFormat::Q5K || format == QuantFormat::Q6K ||
         format == QuantFormat::Q50 || format == QuantFormat::Q51;
}
// Whether the format has per-chunk sub-block scales (the K-quants' two-level scales).
NIBBLE_HD constexpr bool kquant_has_sub_scales(QuantFormat format) {
  return format == QuantFormat::Q4K || format == QuantFormat::Q5K || format == QuantFormat::Q6K;
}
// High bits per code above the low nibble (the fp32-decoded GGUF formats only).
NIBBLE_HD constexpr int kquant_high_bits(QuantFormat format) {
  return format == QuantFormat::Q6K                                                             ? 2
         : format == QuantFormat::Q5K || format == QuantFormat::Q50 || format == QuantFormat::Q51 ? 1
                                                                                                   : 0;
}
NIBBLE_HD constexpr int blob_words(QuantFormat format) {
  return format == QuantFormat::Dense8    ? 256
         : format == QuantFormat::Sparse4 ? 96
                                          : 128 + 32 * kquant_high_bits(format);
}
NIBBLE_HD constexpr int words_per_lane(QuantFormat format) {
  return format == QuantFormat::Dense8 ? 8 : format == QuantFormat::Sparse4 ? 3 : 4 + kquant_high_bits(format);
}
static_assert(blob_words(QuantFormat::Dense4) == 16 * 64 * 4 / 32, "4 bits per weight");
static_assert(blob_words(QuantFormat::Dense8) == 16 * 64 * 8 / 32, "8 bits per weight");
static_assert(blob_words(QuantFormat::Sparse4) == 16 * 64 / 2 * 4 / 32 + 16 * 64 / 4 * 4 / 32,
              "half the codes at 4 bits, plus 4 metadata bits per chunk of 4 inputs: nothing duplicated");
static_assert(blob_words(QuantFormat::Sparse4) == kWarpSize * words_per_lane(QuantFormat::Sparse4));
static_assert(blob_words(QuantFormat::Dense4) % 4 == 0 && blob_words(QuantFormat::Dense8) % 4 == 0 &&
                  blob_words(QuantFormat::Sparse4) % 4 == 0 && blob_words(QuantFormat::Q5K) % 4 == 0 &&
                  blob_words(QuantFormat::Q6K) % 4 == 0,
              "blobs are copied in 16-byte pieces");
static_assert(blob_words(QuantFormat::Q5K) == 16 * 64 * 5 / 32 && blob_words(QuantFormat::Q6K) == 16 * 64 * 6 / 32,
              "5 and 6 bits per weight");

// --- A fragment coordinates -------------------------------------------------

// Row (0..15) inside the tile of value v (0..7) held by `lane`.
NIBBLE_HD constexpr int fragment_row(int lane, int v) { return (lane >> 2) + 8 * ((v >> 1) & 1); }
// Column (0..15) inside a dense 16x16 tile.
NIBBLE_HD constexpr int fragment_col(int lane, int v) { return 2 * (lane & 3) + (v & 1) + 8 * (v >> 2); }
// 4-wide chunk (0..7) inside a 32-input sparse unit.
NIBBLE_HD constexpr int fragment_sparse_chunk(int lane, int v) { return (lane & 3) + 4 * (v >> 2); }
// Inverse: the lane and value holding row `row` (0..15), dense column `col` (0..15).
NIBBLE_HD constexpr int fragment_lane(int row, int col) { return (row & 7) * 4 + ((col & 7) >> 1); }
NIBBLE_HD constexpr int fragment_value(int row, int col) { return 2 * ((row >> 3) + 2 * (col >> 3)) + (col & 1); }
// The lane and first value (slot 0; slot 1 is value + 1) of chunk `chunk` (0..7) of row `row` in a sparse unit.
NIBBLE_HD constexpr int sparse_lane(int row, int chunk) { return (row & 7) * 4 + (chunk & 3); }
NIBBLE_HD constexpr int sparse_value(int row, int chunk) { return 2 * ((row >> 3) + 2 * (chunk >> 2)); }

// Bit offset of value v in its 4-bit word, and word part / bit offset in 8-bit words.
NIBBLE_HD constexpr int nibble_shift(int v) { return 4 * ((v >> 1) + 4 * (v & 1)); }
NIBBLE_HD constexpr int byte_part(int v) { return v >> 2; }
NIBBLE_HD constexpr int byte_shift(int v) { return 8 * (((v >> 1) & 1) + 2 * (v & 1)); }

// --- blob word positions ------------------------------------------------------

// Dense: word w of `lane` (Dense4: w = tile; Dense8: w = 2 tile + part).
NIBBLE_HD constexpr int dense_word_index(int lane, int w) { return ((w >> 2) * kWarpSize + lane) * 4 + (w & 3); }
NIBBLE_HD constexpr int sparse_code_index(int lane, int unit) { return lane * 2 + unit; }
NIBBLE_HD constexpr int sparse_meta_index(int lane) { return 2 * kWarpSize + lane; }
// The lane whose metadata word describes `chunk` of row `row` in `unit`, and the bit offset there.
NIBBLE_HD constexpr int sparse_meta_lane(int row, int chunk, int unit) { return (row & 7) * 4 + (chunk >> 2) + 2 * unit; }
NIBBLE_HD constexpr int sparse_meta_shift(int row, int chunk) { return 16 * (row >> 3) + 4 * (chunk & 3); }

// --- activations in shared memory ----------------------------------------------
//
// One stage holds kMTiles * 8 token rows of a 64-input chunk as fp16: 128 bytes =
// 8 pieces of 16 bytes per row, piece p of row r stored at piece p ^ (r % 8) so
// that the 8 row addresses of each ldmatrix 8x8 matrix hit 8 different 16-byte
// bank groups (no conflicts), for cp.async writes and ldmatrix reads alike.
inline constexpr int kXRowBytes = kChunkK * 2;
inline constexpr int kXPiecesPerRow = kXRowBytes / 16;
static_assert(kXPiecesPerRow == 8, "the swizzle XORs a 3-bit piece index");

NIBBLE_HD constexpr int x_stage_offset(int row, int piece) { return row * kXRowBytes + ((piece ^ (row & 7)) << 4); }
// The row address lane `lane` gives ldmatrix.x4 for m-tile `m_tile` and inputs
// 32 pair .. 32 pair + 31: matrix j = lane / 8 covers inputs 32 pair + 8 j .. +7
// of tokens 8 m_tile .. +7, so the four registers are the B fragment of a k32 mma
// (or of two k16 mmas: registers 0,1 and 2,3).
NIBBLE_HD constexpr int b_fragment_offset(int lane, int m_tile, int pair) {
  return x_stage_offset(m_tile * kTokensPerMma + (lane & 7), 4 * pair + (lane >> 3));
}

// --- groups of a chunk ----------------------------------------------------------
//
// Each of the 4 tiles of a chunk has one group (tile_group). The scale records of a
// chunk are staged once per distinct group: slot[t] is the staging slot of tile t,
// starts[t] whether tile t is the first of its slot (and so the one that copies it).
NIBBLE_HD constexpr void chunk_slots(int g0, int g1, int g2, int g3, int (&slot)[4], bool (&starts)[4]) {
  starts[0] = true;
  starts[1] = g1 != g0;
  starts[2] = g2 != g1;
  starts[3] = g3 != g2;
  slot[0] = 0;
  slot[1] = slot[0] + (starts[1] ? 1 : 0);
  slot[2] = slot[1] + (starts[2] ? 1 : 0);
  slot[3] = slot[2] + (starts[3] ? 1 : 0);
}

// --- dequantization -----------------------------------------------------------
//
// Each half of a u32 pair below is an fp16 1024 + q ("lo") or 1024 + 16 q ("hi")
// for a code q. With z the zero point (0 for a minimum offset), s the scale and c
// the minimum (0 for a zero point):
//   lo: t = v - (1024 + z)            exact in fp16
//   hi: t = v * (1/16) - (64 + z)     exact (a fused multiply-add)
//   w = t * s + c                     one rounding: fp16(s (q - z)) or fp16(s q + m)
inline constexpr std::uint32_t kF16x2_1024 = 0x64006400u;
inline constexpr std::uint16_t kF16_1024 = 0x6400u;
inline constexpr std::uint16_t kF16_OneSixteenth = 0x2c00u;

// Dense 4-bit (and sparse codes): registers 0..3 as fp16x2 bit patterns; 0 and 2 are lo, 1 and 3 hi.
NIBBLE_HD constexpr void extract4(std::uint32_t w, std::uint32_t (&out)[4]) {
  const std::uint32_t shifted = w >> 8;
  out[0] = (w & 0x000f000fu) | kF16x2_1024;
  out[1] = (w & 0x00f000f0u) | kF16x2_1024;
  out[2] = (shifted & 0x000f000fu) | kF16x2_1024;
  out[3] = (shifted & 0x00f000f0u) | kF16x2_1024;
}
NIBBLE_HD constexpr bool extract4_is_hi(int reg) { return (reg & 1) != 0; }

// Dense 8-bit: one part gives two registers (both lo).
NIBBLE_HD constexpr void extract8(std::uint32_t w, std::uint32_t (&out)[2]) {
  out[0] = (w & 0x00ff00ffu) | kF16x2_1024;
  out[1] = ((w >> 8) & 0x00ff00ffu) | kF16x2_1024;
}

// Per (row, group) record: low 16 bits fp16 scale, high 16 bits the zero point as
// fp16 (ZeroPoint) or the fp16 minimum (Min).
NIBBLE_HD constexpr std::uint32_t scale_record(std::uint16_t scale_f16, std::uint16_t zero_or_min_f16) {
  return static_cast<std::uint32_t>(scale_f16) | (static_cast<std::uint32_t>(zero_or_min_f16) << 16);
}

}  // namespace nibble::kernels::cuda::layout
