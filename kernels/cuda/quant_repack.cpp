#include "kernels/cuda/quant_repack.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/half.h"
#include "kernels/cuda/kquant_layout.h"

namespace nibble::kernels::cuda {
namespace {

using namespace layout;

std::int64_t round_up(std::int64_t value, std::int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

std::size_t at(std::int64_t index) { return static_cast<std::size_t>(index); }

// Packed column order: groups in increasing order, each a run padded to `unit`
// columns, the whole padded to a chunk. Returns column_source.
std::vector<std::int32_t> packed_columns(const QuantizedMatrix& m, std::int64_t unit) {
  std::vector<std::int32_t> order(at(m.cols));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return m.group(a) < m.group(b); });
  std::vector<std::int32_t> source;
  source.reserve(at(round_up(m.cols, kChunkK) + m.groups * unit));
  for (std::size_t i = 0; i < order.size(); ++i) {
    source.push_back(order[i]);
    const bool run_ends = i + 1 == order.size() || m.group(order[i + 1]) != m.group(order[i]);
    if (run_ends) {
      while (static_cast<std::int64_t>(source.size()) % unit != 0) source.push_back(-1);
    }
  }
  while (static_cast<std::int64_t>(source.size()) % kChunkK != 0) source.push_back(-1);
  return source;
}

// The fp16 bits of a scale or minimum; throws when it does not fit.
std::uint16_t to_f16(const QuantizedMatrix& m, float value, const char* what, std::int64_t row, std::int64_t group,
                     bool& exact) {
  const std::uint16_t bits = f32_to_f16(value);
  const float back = f16_to_f32(bits);
  if (!std::isfinite(back)) {
    fail("{}: {} {} of row {} group {} does not fit fp16 (the CUDA kernels compute in fp16); "
         "run this model on the CPU backend",
         m.name, what, value, row, group);
  }
  if (back != value) exact = false;
  return bits;
}

// The two kept positions (ascending) of the 4 inputs starting at packed column j0
// of row n: the codes that differ from their zero point, then the lowest others.
std::array<int, 2> kept_positions(const QuantizedMatrix& m, std::span<const std::int32_t> source, std::int64_t n,
                                  std::int64_t j0) {
  std::array<int, 2> kept{};
  int count = 0;
  if (n < m.rows) {
    for (int p = 0; p < 4; ++p) {
      const std::int32_t col = source[at(j0 + p)];
      if (col < 0) continue;
      const auto code = m.codes[at(n * m.cols + col)];
      const auto zero = m.zeros[at(n * m.groups + m.group(col))];
      if (code != zero) {
        if (count == 2) fail("{}: row {} breaks the 2:4 pattern near column {}", m.name, n, col);
        kept[static_cast<std::size_t>(count++)] = p;
      }
    }
  }
  for (int p = 0; p < 4 && count < 2; ++p) {
    if (count == 1 && kept[0] == p) continue;
    kept[static_cast<std::size_t>(count++)] = p;
  }
  if (kept[0] > kept[1]) std::swap(kept[0], kept[1]);
  return kept;
}

std::string group_description(const QuantizedMatrix& m) {
  if (m.groups == 1) return "per-row";
  // Plain grouping: every group but the last holds the same number of columns.
  std::vector<std::int64_t> sizes(at(m.groups), 0);
  for (std::int64_t k = 0; k < m.cols; ++k) ++sizes[at(m.group(k))];
  const bool uniform = std::all_of(sizes.begin(), sizes.end() - 1, [&](std::int64_t s) { return s == sizes.front(); });
  return uniform ? fmt::format("g{}", sizes.front()) : fmt::format("{} groups", m.groups);
}

}  // namespace

std::string sparse_ineligibility(const QuantizedMatrix& m) {
  if (!m.sparse_2_4) return "not 2:4 sparse";
  if (m.bits > 4) return "2:4 with 8-bit codes runs on the dense 8-bit kernel";
  if (m.offset != QuantizedMatrix::Offset::ZeroPoint) return "2:4 needs zero-point quantization";
  if (m.cols % 4 != 0) return "2:4 needs a multiple of 4 input columns";
  if (!std::is_sorted(m.group_of_col.begin(), m.group_of_col.end())) {
    return "act-order (columns permuted by group) would break the 2:4 pattern";
  }
  // Every group but the last must fill whole 32-column units.
  std::int64_t run = 0;
  for (std::int64_t k = 0; k < m.cols; ++k) {
    ++run;
    const bool ends = k + 1 == m.cols || m.group(k + 1) != m.group(k);
    if (ends && k + 1 != m.cols && run % kSparseUnitK != 0) {
      return fmt::format("group {} holds {} columns (not a multiple of {})", m.group(k), run, kSparseUnitK);
    }
    if (ends) run = 0;
  }
  return {};
}

RepackedQuant repack_quantized(const QuantizedMatrix& m, SparsePolicy sparse) {
  if (m.block_format) return repack_kquant(m);
  m.validate();
  if (m.bits != 2 && m.bits != 3 && m.bits != 4 && m.bits != 8) fail("{}: {}-bit weights", m.name, m.bits);
  if (m.rows > (std::int64_t{1} << 30) || m.cols > (std::int64_t{1} << 30)) {
    fail("{}: [{}, {}] is too large for the CUDA layout", m.name, m.rows, m.cols);
  }
  RepackedQuant out;
  QuantLayoutDims& d = out.dims;
  d.format = m.bits == 8 ? QuantFormat::Dense8 : QuantFormat::Dense4;
  if (d.format == QuantFormat::Dense4 && sparse == SparsePolicy::Auto && sparse_ineligibility(m).empty()) {
    d.format = QuantFormat::Sparse4;
  }
  d.rows = m.rows;
  d.cols = m.cols;
  d.groups = m.groups;
  d.source_bits = m.bits;
  d.min_offset = m.offset == QuantizedMatrix::Offset::Min;
  d.n_pad = round_up(m.rows, kBlockN);
  out.grouping = group_description(m);

  const std::int64_t unit = d.format == QuantFormat::Sparse4 ? kSparseUnitK : kTileK;
  out.column_source = packed_columns(m, unit);
  d.k_pad = static_cast<std::int64_t>(out.column_source.size());
  out.identity_columns = true;
  for (std::int64_t j = 0; j < d.k_pad; ++j) {
    if (out.column_source[at(j)] != (j < m.cols ? j : -1)) out.identity_columns = false;
  }

  // The group of every tile (all its real columns share it by construction);
  // all-padding tiles take their predecessor's group.
  out.tile_group.assign(at(d.k_tiles()), 0);
  std::int32_t previous = 0;
  for (std::int64_t t = 0; t < d.k_tiles(); ++t) {
    std::int32_t group = -1;
    for (std::int64_t j = t * kTileK; j < (t + 1) * kTileK; ++j) {
      const std::int32_t col = out.column_source[at(j)];
      if (col < 0) continue;
      if (group >= 0 && m.group(col) != group) fail("{}: internal error: tile {} mixes groups", m.name, t);
      group = static_cast<std::int32_t>(m.group(col));
    }
    out.tile_group[at(t)] = group >= 0 ? group : previous;
    previous = out.tile_group[at(t)];
  }

  // Scale records [groups][n_pad].
  out.scales.assign(at(d.groups * d.n_pad), 0);
  for (std::int64_t n = 0; n < m.rows; ++n) {
    for (std::int64_t g = 0; g < m.groups; ++g) {
      const std::size_t cell = at(n * m.groups + g);
      const std::uint16_t scale = to_f16(m, m.scales[cell], "scale", n, g, out.scales_exact);
      const std::uint16_t offset = d.min_offset ? to_f16(m, m.mins[cell], "minimum", n, g, out.scales_exact)
                                                : f32_to_f16(static_cast<float>(m.zeros[cell]));  // <= 255: exact
      out.scales[at(g * d.n_pad + n)] = scale_record(scale, offset);
    }
  }

  // Weight blobs. Padding (rows >= N, columns with no source) holds code 0: its
  // input is 0 or its output row is never written.
  const auto code_at = [&](std::int64_t n, std::int64_t j) -> std::uint32_t {
    const std::int32_t col = out.column_source[at(j)];
    if (n >= m.rows || col < 0) return 0;
    return m.codes[at(n * m.cols + col)];
  };
  const std::int64_t words = d.blob_words();
  out.weights.assign(at(d.n_tiles() * d.k_chunks() * words), 0);
  for (std::int64_t tile = 0; tile < d.n_tiles(); ++tile) {
    const std::int64_t n0 = tile * kTileN;
    for (std::int64_t chunk = 0; chunk < d.k_chunks(); ++chunk) {
      std::uint32_t* blob = out.weights.data() + at((tile * d.k_chunks() + chunk) * words);
      const std::int64_t j0 = chunk * kChunkK;
      for (int lane = 0; lane < kWarpSize; ++lane) {
        if (d.format == QuantFormat::Dense4) {
          for (int t = 0; t < kTilesPerChunk; ++t) {
            std::uint32_t word = 0;
            for (int v = 0; v < 8; ++v) {
              word |= code_at(n0 + fragment_row(lane, v), j0 + t * kTileK + fragment_col(lane, v)) << nibble_shift(v);
            }
            blob[dense_word_index(lane, t)] = word;
          }
        } else if (d.format == QuantFormat::Dense8) {
          for (int t = 0; t < kTilesPerChunk; ++t) {
            std::uint32_t part_words[2] = {0, 0};
            for (int v = 0; v < 8; ++v) {
              part_words[byte_part(v)] |= code_at(n0 + fragment_row(lane, v), j0 + t * kTileK + fragment_col(lane, v))
                                          << byte_shift(v);
            }
            blob[dense_word_index(lane, 2 * t)] = part_words[0];
            blob[dense_word_index(lane, 2 * t + 1)] = part_words[1];
          }
        } else {
          for (int u = 0; u < kSparseUnitsPerChunk; ++u) {
            const std::int64_t unit0 = j0 + u * kSparseUnitK;
            std::uint32_t word = 0;
            for (int v = 0; v < 8; ++v) {
              const std::int64_t n = n0 + fragment_row(lane, v);
              const std::int64_t c0 = unit0 + 4 * fragment_sparse_chunk(lane, v);
              const auto kept = kept_positions(m, out.column_source, n, c0);
              word |= code_at(n, c0 + kept[static_cast<std::size_t>(v & 1)]) << nibble_shift(v);
            }
            blob[sparse_code_index(lane, u)] = word;
          }
          // Metadata: lane (gid, tig) holds unit tig / 2, chunks 4 (tig % 2) .. +3 of rows gid and gid + 8.
          const int gid = lane >> 2;
          const int unit_index = (lane & 3) >> 1;
          const int role = lane & 1;
          std::uint32_t meta = 0;
          for (int h = 0; h < 2; ++h) {
            for (int c = 0; c < 4; ++c) {
              const int chunk4 = 4 * role + c;
              const int row = gid + 8 * h;
              const auto kept = kept_positions(m, out.column_source, n0 + row, j0 + unit_index * kSparseUnitK + 4 * chunk4);
              const std::uint32_t field = static_cast<std::uint32_t>(kept[0] | (kept[1] << 2));
              meta |= field << sparse_meta_shift(row, chunk4);
            }
          }
          blob[sparse_meta_index(lane)] = meta;
        }
      }
    }
  }
  return out;
}

std::uint64_t RepackedQuant::bytes() const {
  std::uint64_t total = (weights.size() + scales.size() + sub_scales.size() + tile_group.size()) * 4;
  if (!identity_columns) total += column_source.size() * 4;
  return total;
}

std::string RepackedQuant::describe() const {
  if (is_kquant(dims.format)) return grouping + " (cuda mma, weights decoded in fp32 then fp16)";
  std::string text = fmt::format("int{}", dims.source_bits);
  if (dims.format == QuantFormat::Sparse4) text += " 2:4";
  text += " " + grouping;
  if (!identity_columns) text += " reordered";
  text += dims.min_offset ? " min" : " zero-point";
  text += dims.format == QuantFormat::Sparse4 ? " (cuda mma.sp" : dims.format == QuantFormat::Dense8 ? " (cuda int8 mma" : " (cuda int4 mma";
  if (dims.source_bits < 4) text += ", codes widened to 4 bits";
  return text + ")";
}

// --- decoders ----------------------------------------------------------------------

DecodedCode decode_code(QuantFormat format, std::span<const std::uint32_t> tile_words, int row_in_tile,
                        std::int64_t packed_col) {
  const std::int64_t chunk = packed_col / kChunkK;
  const int in_chunk = static_cast<int>(packed_col % kChunkK);
  const std::uint32_t* blob = tile_words.data() + at(chunk * blob_words(format));
  if (is_kquant(format)) {
    const int col = in_chunk % kTileK;
    const int lane = fragment_lane(row_in_tile, col);
    std::uint32_t lane_words[8] = {};
    for (int w = 0; w < words_per_lane(format); ++w) lane_words[w] = blob[kquant_word_index(format, lane, w)];
    return {static_cast<std::uint8_t>(kquant_code(format, lane_words, in_chunk / kTileK, fragment_value(row_in_tile, col))),
            true};
  }
  if (format == QuantFormat::Sparse4) {
    const int unit = in_chunk / kSparseUnitK;
    const int chunk4 = (in_chunk % kSparseUnitK) / 4;
    const int position = in_chunk % 4;
    const std::uint32_t meta = blob[sparse_meta_index(sparse_meta_lane(row_in_tile, chunk4, unit))];
    const std::uint32_t field = (meta >> sparse_meta_shift(row_in_tile, chunk4)) & 0xfu;
    const int idx0 = static_cast<int>(field & 3u);
    const int idx1 = static_cast<int>(field >> 2);
    if (position != idx0 && position != idx1) return {0, false};
    const int v = sparse_value(row_in_tile, chunk4) + (position == idx1 ? 1 : 0);
    const std::uint32_t word = blob[sparse_code_index(sparse_lane(row_in_tile, chunk4), unit)];
    return {static_cast<std::uint8_t>((word >> nibble_shift(v)) & 0xfu), true};
  }
  const int tile = in_chunk / kTileK;
  const int col = in_chunk % kTileK;
  const int lane = fragment_lane(row_in_tile, col);
  const int v = fragment_value(row_in_tile, col);
  if (format == QuantFormat::Dense4) {
    const std::uint32_t word = blob[dense_word_index(lane, tile)];
    return {static_cast<std::uint8_t>((word >> nibble_shift(v)) & 0xfu), true};
  }
  const std::uint32_t word = blob[dense_word_index(lane, 2 * tile + byte_part(v))];
  return {static_cast<std::uint8_t>((word >> byte_shift(v)) & 0xffu), true};
}

std::uint16_t decode_weight_f16(QuantFormat format, std::uint8_t code, std::uint32_t record, bool min_offset,
                                int row_in_tile) {
  // Rebuild the register half the device builds for this code (extract4 / extract8
  // on a word holding only this code), then run the device's fp16 operations.
  const auto scale = static_cast<std::uint16_t>(record & 0xffffu);
  const auto zero_or_min = static_cast<std::uint16_t>(record >> 16);
  const double zero = min_offset ? 0.0 : f16emu::to_double(zero_or_min);
  const std::uint16_t zl = f16emu::from_double(1024.0 + zero);
  const std::uint16_t zh = f16emu::from_double(-(64.0 + zero));
  const std::uint16_t c = min_offset ? zero_or_min : std::uint16_t{0};
  std::uint16_t t = 0;
  if (format == QuantFormat::Dense8) {
    std::uint32_t regs[2];
    extract8(code, regs);  // byte 0 -> register 0, low half
    t = f16emu::sub(static_cast<std::uint16_t>(regs[0] & 0xffffu), zl);
  } else {
    // Rows 0-7 of a tile sit in registers 0/2 (lo), rows 8-15 in 1/3 (hi, code << 4).
    std::uint32_t regs[4];
    const bool hi = row_in_tile >= 8;
    extract4(hi ? static_cast<std::uint32_t>(code) << 4 : code, regs);
    if (hi) {
      t = f16emu::fma(static_cast<std::uint16_t>(regs[1] & 0xffffu), kF16_OneSixteenth, zh);
    } else {
      t = f16emu::sub(static_cast<std::uint16_t>(regs[0] & 0xffffu), zl);
    }
  }
  return f16emu::fma(t, scale, c);
}

DecodedCode repacked_code(const RepackedQuant& l, std::int64_t n, std::int64_t packed_col) {
  const std::int64_t tile = n / kTileN;
  const std::span<const std::uint32_t> tile_words(l.weights.data() + at(tile * l.dims.k_chunks() * l.dims.blob_words()),
                                                  at(l.dims.k_chunks() * l.dims.blob_words()));
  return decode_code(l.dims.format, tile_words, static_cast<int>(n % kTileN), packed_col);
}

std::uint32_t repacked_scale_record(const RepackedQuant& l, std::int64_t n, std::int64_t packed_col) {
  const std::int32_t group = l.tile_group[at(packed_col / kTileK)];
  return l.scales[at(group * l.dims.n_pad + n)];
}

std::uint16_t repacked_weight_f16(const RepackedQuant& l, std::int64_t n, std::int64_t packed_col) {
  if (is_kquant(l.dims.format)) return n >= l.dims.rows ? std::uint16_t{0} : f32_to_f16(repacked_kquant_weight(l, n, packed_col));
  const DecodedCode code = repacked_code(l, n, packed_col);
  if (!code.kept || n >= l.dims.rows) return 0;
  return decode_weight_f16(l.dims.format, code.code, repacked_scale_record(l, n, packed_col), l.dims.min_offset,
                           static_cast<int>(n % kTileN));
}

int repacked_sparse_meta(const RepackedQuant& l, std::int64_t n, std::int64_t chunk4) {
  const std::int64_t packed_col = chunk4 * 4;
  const std::int64_t tile = n / kTileN;
  const int row = static_cast<int>(n % kTileN);
  const std::uint32_t* blob =
      l.weights.data() + at((tile * l.dims.k_chunks() + packed_col / kChunkK) * l.dims.blob_words());
  const int in_chunk = static_cast<int>(packed_col % kChunkK);
  const int unit = in_chunk / kSparseUnitK;
  const int c = (in_chunk % kSparseUnitK) / 4;
  return static_cast<int>((blob[sparse_meta_index(sparse_meta_lane(row, c, unit))] >> sparse_meta_shift(row, c)) & 0xfu);
}

void decode_row(const QuantLayoutDims& d, std::span<const std::uint32_t> tile_words,
                std::span<const std::uint32_t> row_records, std::span<const std::int32_t> tile_group,
                std::span<const std::int32_t> column_source, int row_in_tile, std::span<float> out,
                std::span<const std::uint32_t> row_sub_records) {
  std::fill(out.begin(), out.end(), 0.0f);
  for (std::int64_t j = 0; j < d.k_pad; ++j) {
    const std::int32_t col = column_source[at(j)];
    if (col < 0) continue;
    const DecodedCode code = decode_code(d.format, tile_words, row_in_tile, j);
    if (!code.kept) continue;
    const std::uint32_t record = row_records[at(tile_group[at(j / kTileK)])];
    if (is_kquant(d.format)) {
      const int t = static_cast<int>(j % kChunkK) / kTileK;
      const std::uint32_t sub = kquant_has_sub_scales(d.format) ? row_sub_records[at(j / kChunkK)] : 0u;
      out[at(col)] = kquant_value(kquant_row(d.format, record, sub, t), code.code);
      continue;
    }
    out[at(col)] = f16_to_f32(decode_weight_f16(d.format, code.code, record, d.min_offset, row_in_tile));
  }
}

// --- fp16 emulation -----------------------------------------------------------------

namespace f16emu {

double to_double(std::uint16_t bits) { return static_cast<double>(f16_to_f32(bits)); }

std::uint16_t from_double(double value) {
  const std::uint16_t sign = std::signbit(value) ? 0x8000u : 0u;
  const double magnitude = std::fabs(value);
  if (std::isnan(value)) return 0x7e00u;
  if (magnitude >= 65520.0) return sign | 0x7c00u;  // at or past the midpoint above 65504: inf
  if (magnitude < 0x1p-14) {
    // Subnormal: a multiple of 2^-24, rounded to nearest even (1024 becomes the smallest normal).
    const double units = std::nearbyint(magnitude * 0x1p24);
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(units));
  }
  int exponent = 0;
  const double fraction = std::frexp(magnitude, &exponent);  // magnitude = fraction * 2^exponent, fraction in [0.5, 1)
  int biased = exponent - 1 + 15;
  double mantissa = std::nearbyint((fraction * 2.0 - 1.0) * 1024.0);
  if (mantissa == 1024.0) {
    mantissa = 0;
    ++biased;
  }
  if (biased >= 31) return sign | 0x7c00u;
  return static_cast<std::uint16_t>(sign | (biased << 10) | static_cast<int>(mantissa));
}

std::uint16_t sub(std::uint16_t a, std::uint16_t b) { return from_double(to_double(a) - to_double(b)); }

std::uint16_t fma(std::uint16_t a, std::uint16_t b, std::uint16_t c) {
  return from_double(to_double(a) * to_double(b) + to_double(c));
}

}  // namespace f16emu

}  // namespace nibble::kernels::cuda
