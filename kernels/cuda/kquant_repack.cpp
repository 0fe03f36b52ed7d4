// GGUF K-quant (and Q5_0 / Q5_1) blocks -> the CUDA K-quant layout
// (kquant_layout.h), once at load.
// The block fields are read as docs/formats.md writes them down; the weights the
// layout gives back are checked against common/block_decode_impl.h bit for bit by
// tests/cuda/quant_layout_test.cpp.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common/error.h"
#include "common/half.h"
#include "kernels/cuda/kquant_layout.h"
#include "kernels/cuda/quant_repack.h"

namespace nibble::kernels::cuda {
namespace {

using namespace layout;

std::size_t at(std::int64_t index) { return static_cast<std::size_t>(index); }

std::uint16_t read_u16(const std::uint8_t* p) {
  std::uint16_t value;
  std::memcpy(&value, p, 2);
  return value;
}

// One block's fields as the layout stores them: its codes (256 for the K-quants,
// 32 for Q5_0 / Q5_1), the scale record, and for the K-quants each chunk's sub-scales.
struct SuperBlock {
  std::array<std::uint8_t, kSuperBlockK> codes{};
  std::uint16_t d = 0;
  std::uint16_t dmin = 0;  // Q5_1: m
  std::array<std::uint32_t, kChunksPerSuperBlock> sub{};  // the sub_scales record of each chunk
};

// Q4_K / Q5_K: 8 sub-blocks of 32; 6-bit scales and minimums packed in 12 bytes.
SuperBlock read_q45k(const std::uint8_t* b, bool fifth_bit) {
  SuperBlock out;
  out.d = read_u16(b);
  out.dmin = read_u16(b + 2);
  const std::uint8_t* s = b + 4;
  std::array<std::uint32_t, 8> sc{};
  std::array<std::uint32_t, 8> m{};
  for (int j = 0; j < 4; ++j) {
    sc[at(j)] = s[j] & 63u;
    m[at(j)] = s[j + 4] & 63u;
    sc[at(j + 4)] = (s[j + 8] & 15u) | ((s[j] >> 6) << 4);
    m[at(j + 4)] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
  }
  const std::uint8_t* qh = b + 16;
  const std::uint8_t* qs = b + 16 + (fifth_bit ? 32 : 0);
  for (int e = 0; e < kSuperBlockK; ++e) {
    const int sub = e / 32;
    const int l = e % 32;
    const std::uint8_t byte = qs[32 * (sub / 2) + l];
    std::uint32_t q = sub % 2 == 0 ? byte & 15u : byte >> 4;
    if (fifth_bit) q |= ((qh[l] >> sub) & 1u) << 4;
    out.codes[at(e)] = static_cast<std::uint8_t>(q);
  }
  for (int c = 0; c < kChunksPerSuperBlock; ++c) {
    out.sub[at(c)] = kquant_sub_record_sm(sc[at(2 * c)], m[at(2 * c)], sc[at(2 * c + 1)], m[at(2 * c + 1)]);
  }
  return out;
}

// Q6_K: 16 sub-blocks of 16 with int8 scales; codes 0..63 (the value subtracts 32).
SuperBlock read_q6k(const std::uint8_t* b) {
  SuperBlock out;
  const std::uint8_t* ql = b;
  const std::uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const std::int8_t*>(b + 192);
  out.d = read_u16(b + 208);
  for (int e = 0; e < kSuperBlockK; ++e) {
    const int h = e / 128;
    const int s = (e % 128) / 32;
    const int l = e % 32;
    const std::uint8_t low_byte = ql[64 * h + 32 * (s & 1) + l];
    const std::uint32_t low = s < 2 ? low_byte & 15u : low_byte >> 4;
    const std::uint32_t high = (qh[32 * h + l] >> (2 * s)) & 3u;
    out.codes[at(e)] = static_cast<std::uint8_t>(low | (high << 4));
  }
  for (int c = 0; c < kChunksPerSuperBlock; ++c) {
    out.sub[at(c)] = kquant_sub_record_i8(sc[4 * c], sc[4 * c + 1], sc[4 * c + 2], sc[4 * c + 3]);
  }
  return out;
}

// Q5_0 / Q5_1: 32 codes of 5 bits, the fifth bits in one u32; value d (q - 16) or d q + m.
SuperBlock read_q5(const std::uint8_t* b, bool with_min) {
  SuperBlock out;
  out.d = read_u16(b);
  out.dmin = with_min ? read_u16(b + 2) : std::uint16_t{0};
  const std::uint8_t* qh_bytes = b + (with_min ? 4 : 2);
  std::uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  const std::uint8_t* qs = qh_bytes + 4;
  for (int j = 0; j < 16; ++j) {
    out.codes[at(j)] = static_cast<std::uint8_t>((qs[j] & 15u) | (((qh >> j) & 1u) << 4));
    out.codes[at(j + 16)] = static_cast<std::uint8_t>((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
  }
  return out;
}

SuperBlock read_block(QuantFormat format, const std::uint8_t* block) {
  switch (format) {
    case QuantFormat::Q6K:
      return read_q6k(block);
    case QuantFormat::Q50:
    case QuantFormat::Q51:
      return read_q5(block, format == QuantFormat::Q51);
    default:
      return read_q45k(block, format == QuantFormat::Q5K);
  }
}

std::int64_t round_up(std::int64_t value, std::int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

}  // namespace

std::optional<QuantFormat> kquant_format_of(BlockFormat format) {
  switch (format) {
    case BlockFormat::Q4_K:
      return QuantFormat::Q4K;
    case BlockFormat::Q5_K:
      return QuantFormat::Q5K;
    case BlockFormat::Q6_K:
      return QuantFormat::Q6K;
    case BlockFormat::Q5_0:
      return QuantFormat::Q50;
    case BlockFormat::Q5_1:
      return QuantFormat::Q51;
    default:
      return std::nullopt;
  }
}

RepackedQuant repack_kquant(const QuantizedMatrix& m) {
  m.validate();
  if (!m.block_format) fail("{}: not a block-quantized matrix", m.name);
  const BlockFormatInfo& info = block_format_info(*m.block_format);
  const std::optional<QuantFormat> format = kquant_format_of(*m.block_format);
  if (!format) fail("{}: {} blocks have no CUDA kernel yet (run it on --device cpu)", m.name, info.name);
  if (m.rows > (std::int64_t{1} << 30) || m.cols > (std::int64_t{1} << 30)) {
    fail("{}: [{}, {}] is too large for the CUDA layout", m.name, m.rows, m.cols);
  }
  RepackedQuant out;
  QuantLayoutDims& d = out.dims;
  const QuantFormat f = *format;
  const int elements = info.elements;  // 256 (K-quants) or 32 (Q5_0 / Q5_1): one group each
  d.format = f;
  d.rows = m.rows;
  d.cols = m.cols;
  d.n_pad = round_up(m.rows, kBlockN);
  // K-quant rows are whole 256-column super-blocks, so whole chunks; Q5 rows may end
  // mid-chunk: padding columns read input 0 (prepare_activations writes zeros).
  d.k_pad = round_up(m.cols, kChunkK);
  d.groups = m.cols / elements;
  d.source_bits = 4 + kquant_high_bits(f);
  d.min_offset = false;
  out.grouping = fmt::format("{} {}", info.name, elements == kSuperBlockK ? "super-blocks" : "blocks");
  out.identity_columns = true;  // column_source is j, then -1 in the padding
  out.column_source.assign(at(d.k_pad), -1);
  std::iota(out.column_source.begin(), out.column_source.begin() + m.cols, 0);
  out.tile_group.resize(at(d.k_tiles()));
  for (std::int64_t t = 0; t < d.k_tiles(); ++t) {
    // All-padding tiles take the last group: their codes meet zero activations.
    out.tile_group[at(t)] = static_cast<std::int32_t>(std::min<std::int64_t>(t * kTileK / elements, d.groups - 1));
  }

  out.scales.assign(at(d.groups * d.n_pad), 0);
  if (kquant_has_sub_scales(f)) out.sub_scales.assign(at(d.k_chunks() * d.n_pad), 0);
  const std::int64_t words = d.blob_words();
  out.weights.assign(at(d.n_tiles() * d.k_chunks() * words), 0);
  const std::size_t row_bytes = m.block_row_bytes();
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(m.blocks.data());

  // One 16-row tile at a time: its codes gathered into [16][k_pad], then packed.
  // Padding rows (n >= rows) keep code 0 and zero records: weight 0, never written out.
  std::vector<std::uint8_t> codes(at(kTileN * d.k_pad));
  for (std::int64_t tile = 0; tile < d.n_tiles(); ++tile) {
    std::fill(codes.begin(), codes.end(), std::uint8_t{0});
    for (int r = 0; r < kTileN; ++r) {
      const std::int64_t n = tile * kTileN + r;
      if (n >= m.rows) break;
      for (std::int64_t g = 0; g < d.groups; ++g) {
        const SuperBlock block = read_block(f, bytes + at(n) * row_bytes + at(g) * at(info.bytes));
        const std::uint32_t record = scale_record(block.d, block.dmin);
        out.scales[at(g * d.n_pad + n)] = record;
        const std::int64_t first_col = g * elements;
        if (kquant_has_sub_scales(f)) {
          for (int c = 0; c < kChunksPerSuperBlock; ++c) {
            out.sub_scales[at((first_col / kChunkK + c) * d.n_pad + n)] = block.sub[at(c)];
          }
        }
        // The tensor cores take fp16: a weight past its range would turn into an
        // infinity there (the CPU backend computes it in fp32).
        for (int e = 0; e < elements; ++e) {
          const std::int64_t col = first_col + e;
          const std::uint32_t sub = kquant_has_sub_scales(f) ? block.sub[at(e / kChunkK)] : 0u;
          const int t = static_cast<int>(col % kChunkK) / kTileK;
          const float value = kquant_value(kquant_row(f, record, sub, t), block.codes[at(e)]);
          if ((f32_to_f16(value) & 0x7c00u) == 0x7c00u) {
            fail("{}: {} weight {} of row {} column {} does not fit fp16 (the CUDA kernels multiply in fp16); "
                 "run this model on --device cpu",
                 m.name, info.name, value, n, col);
          }
        }
        std::copy(block.codes.begin(), block.codes.begin() + elements, codes.begin() + r * d.k_pad + first_col);
      }
    }
    for (std::int64_t chunk = 0; chunk < d.k_chunks(); ++chunk) {
      std::uint32_t* blob = out.weights.data() + at((tile * d.k_chunks() + chunk) * words);
      for (int lane = 0; lane < kWarpSize; ++lane) {
        std::uint32_t lane_words[8] = {};
        for (int t = 0; t < kTilesPerChunk; ++t) {
          for (int v = 0; v < 8; ++v) {
            const std::uint32_t q =
                codes[at(fragment_row(lane, v) * d.k_pad + chunk * kChunkK + t * kTileK + fragment_col(lane, v))];
            lane_words[t] |= (q & 15u) << nibble_shift(v);
            lane_words[kquant_high_word(f, t)] |= (q >> 4) << kquant_high_shift(f, t, v);
          }
        }
        for (int w = 0; w < words_per_lane(f); ++w) blob[kquant_word_index(f, lane, w)] = lane_words[w];
      }
    }
  }
  return out;
}

float repacked_kquant_weight(const RepackedQuant& l, std::int64_t n, std::int64_t packed_col) {
  const QuantLayoutDims& d = l.dims;
  const std::int64_t chunk = packed_col / kChunkK;
  const int in_chunk = static_cast<int>(packed_col % kChunkK);
  const int t = in_chunk / kTileK;
  const int row = static_cast<int>(n % kTileN);
  const int lane = fragment_lane(row, in_chunk % kTileK);
  const int v = fragment_value(row, in_chunk % kTileK);
  const std::uint32_t* blob = l.weights.data() + at(((n / kTileN) * d.k_chunks() + chunk) * d.blob_words());
  std::uint32_t lane_words[8] = {};
  for (int w = 0; w < words_per_lane(d.format); ++w) lane_words[w] = blob[kquant_word_index(d.format, lane, w)];
  const std::uint32_t q = kquant_code(d.format, lane_words, t, v);
  const std::uint32_t super_record = l.scales[at(l.tile_group[at(packed_col / kTileK)] * d.n_pad + n)];
  const std::uint32_t sub_record = kquant_has_sub_scales(d.format) ? l.sub_scales[at(chunk * d.n_pad + n)] : 0u;
  return kquant_value(kquant_row(d.format, super_record, sub_record, t), q);
}

}  // namespace nibble::kernels::cuda
