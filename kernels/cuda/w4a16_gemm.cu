// W4A16 / W8A16 GEMM (dense tile layouts; the kernel template is in
// quant_gemm_kernel.cuh), the activation preparation that feeds it (float32 or
// fp16 -> fp16 in packed column order, act-order gather, zero padding) and a
// row dequantizer over the same layout.
#include <cuda_fp16.h>

#include "kernels/cuda/quant_gemm_kernel.cuh"

namespace nibble::kernels::cuda {
namespace detail {

void launch_dense4(const QuantGemmLaunch& launch) { launch_format<QuantFormat::Dense4>(launch); }
void launch_dense8(const QuantGemmLaunch& launch) { launch_format<QuantFormat::Dense8>(launch); }
int blocks_per_sm_dense4(int m_tiles) { return format_blocks_per_sm<QuantFormat::Dense4>(m_tiles); }
int blocks_per_sm_dense8(int m_tiles) { return format_blocks_per_sm<QuantFormat::Dense8>(m_tiles); }

namespace {

constexpr int kPrepareThreads = 256;

__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ float load_float(const std::uint16_t* p) { return __half2float(__ushort_as_half(*p)); }

template <typename In>
__global__ void __launch_bounds__(kPrepareThreads)
    prepare_activations_kernel(const In* x, std::int64_t k, std::int64_t ldx, const std::int32_t* column_source,
                               std::int64_t k_pad, std::uint16_t* out) {
  const std::int64_t row = blockIdx.y;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kPrepareThreads + threadIdx.x;
  if (j >= k_pad) return;
  const std::int64_t col = column_source != nullptr ? column_source[j] : (j < k ? j : -1);
  float value = col >= 0 ? load_float(x + row * ldx + col) : 0.0f;
  // Saturate instead of overflowing to infinity (an activation past 65504 is an
  // outlier the fp16 GEMM cannot represent either way); NaN stays NaN.
  value = isnan(value) ? value : fminf(fmaxf(value, -65504.0f), 65504.0f);
  out[row * k_pad + j] = __half_as_ushort(__float2half_rn(value));
}

template <typename In>
void prepare(const In* x, std::int64_t rows, std::int64_t k, std::int64_t ldx, const std::int32_t* column_source,
             std::int64_t k_pad, std::uint16_t* out, cudaStream_t stream) {
  if (rows <= 0) return;
  if (rows > 65535) throw_cuda_error(cudaErrorInvalidValue, "prepare_activations: more than 65535 rows", __FILE__, __LINE__);
  const dim3 grid(static_cast<unsigned>((k_pad + kPrepareThreads - 1) / kPrepareThreads), static_cast<unsigned>(rows));
  prepare_activations_kernel<In><<<grid, kPrepareThreads, 0, stream>>>(x, k, ldx, column_source, k_pad, out);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "prepare_activations_kernel");
}

struct DequantizeArgs {
  QuantFormat format;
  const std::uint32_t* weights;
  const std::uint32_t* scales;
  const std::uint32_t* sub_scales;
  const std::int32_t* tile_group;
  const std::int32_t* column_source;
  const std::int32_t* ids;
  float* out;
  std::int64_t rows;
  std::int64_t cols;
  std::int64_t n_pad;
  std::int64_t k_pad;
  std::int64_t k_chunks;
  int min_offset;
};

// One weight as the GEMM computes it: the code placed where its fragment holds it,
// extracted and dequantized by the same routines.
__global__ void __launch_bounds__(kPrepareThreads) dequantize_rows_kernel(const DequantizeArgs a) {
  const std::int64_t r = blockIdx.y;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kPrepareThreads + threadIdx.x;
  if (j >= a.k_pad) return;
  const std::int64_t col = a.column_source != nullptr ? a.column_source[j] : (j < a.cols ? j : -1);
  if (col < 0) return;
  const std::int64_t n = a.ids[r];
  float* out = a.out + r * a.cols + col;
  if (n < 0 || n >= a.rows) {
    *out = __int_as_float(0x7fc00000);  // an id outside the table: NaN, never a silent zero
    return;
  }
  const int row = static_cast<int>(n % kTileN);
  const std::int64_t chunk = j / kChunkK;
  const int in_chunk = static_cast<int>(j % kChunkK);
  const std::uint32_t* blob = a.weights + ((n / kTileN) * a.k_chunks + chunk) * blob_words(a.format);
  if (is_kquant(a.format)) {
    // The fp32 weight itself (the CPU decoder's, bit for bit): an embedding needs no fp16 rounding.
    const int c = in_chunk % kTileK;
    const int lane = fragment_lane(row, c);
    std::uint32_t words[8] = {};
    for (int w = 0; w < words_per_lane(a.format); ++w) words[w] = blob[kquant_word_index(a.format, lane, w)];
    const int t = in_chunk / kTileK;
    const std::uint32_t super_record = a.scales[static_cast<std::int64_t>(a.tile_group[j / kTileK]) * a.n_pad + n];
    const std::uint32_t sub_record = kquant_has_sub_scales(a.format) ? a.sub_scales[chunk * a.n_pad + n] : 0u;
    *out = kquant_value(kquant_row(a.format, super_record, sub_record, t),
                        kquant_code(a.format, words, t, fragment_value(row, c)));
    return;
  }
  const RowConstants k = row_constants(a.scales[static_cast<std::int64_t>(a.tile_group[j / kTileK]) * a.n_pad + n], a.min_offset);
  std::uint32_t code = 0;
  if (a.format == QuantFormat::Sparse4) {
    const int unit = in_chunk / kSparseUnitK;
    const int chunk4 = (in_chunk % kSparseUnitK) / 4;
    const int position = in_chunk % 4;
    const std::uint32_t field =
        (blob[sparse_meta_index(sparse_meta_lane(row, chunk4, unit))] >> sparse_meta_shift(row, chunk4)) & 0xfu;
    const int idx0 = static_cast<int>(field & 3u);
    const int idx1 = static_cast<int>(field >> 2);
    if (position != idx0 && position != idx1) {
      *out = 0.0f;
      return;
    }
    const int v = sparse_value(row, chunk4) + (position == idx1 ? 1 : 0);
    code = (blob[sparse_code_index(sparse_lane(row, chunk4), unit)] >> nibble_shift(v)) & 0xfu;
  } else {
    const int t = in_chunk / kTileK;
    const int c = in_chunk % kTileK;
    const int lane = fragment_lane(row, c);
    const int v = fragment_value(row, c);
    code = a.format == QuantFormat::Dense4 ? (blob[dense_word_index(lane, t)] >> nibble_shift(v)) & 0xfu
                                           : (blob[dense_word_index(lane, 2 * t + byte_part(v))] >> byte_shift(v)) & 0xffu;
  }
  std::uint32_t value = 0;
  if (a.format == QuantFormat::Dense8) {
    std::uint32_t p[2];
    extract8(code, p);
    value = dequant_lo(p[0], k);
  } else if (row >= 8) {
    std::uint32_t r4[4];
    extract4(code << 4, r4);
    value = dequant_hi(r4[1], k);
  } else {
    std::uint32_t r4[4];
    extract4(code, r4);
    value = dequant_lo(r4[0], k);
  }
  *out = __half2float(__ushort_as_half(static_cast<unsigned short>(value & 0xffffu)));
}

}  // namespace
}  // namespace detail

void prepare_activations(const float* x, std::int64_t rows, std::int64_t k, std::int64_t ldx,
                         const std::int32_t* column_source, std::int64_t k_pad, std::uint16_t* out,
                         cudaStream_t stream) {
  detail::prepare(x, rows, k, ldx, column_source, k_pad, out, stream);
}

void prepare_activations_f16(const std::uint16_t* x, std::int64_t rows, std::int64_t k, std::int64_t ldx,
                             const std::int32_t* column_source, std::int64_t k_pad, std::uint16_t* out,
                             cudaStream_t stream) {
  detail::prepare(x, rows, k, ldx, column_source, k_pad, out, stream);
}

void dequantize_rows(const QuantWeightsView& w, const std::int32_t* ids, std::int64_t count, float* out,
                     cudaStream_t stream) {
  if (count <= 0) return;
  if (count > 65535) throw_cuda_error(cudaErrorInvalidValue, "dequantize_rows: more than 65535 rows", __FILE__, __LINE__);
  if (layout::kquant_has_sub_scales(w.dims.format) && w.sub_scales == nullptr) {
    throw_cuda_error(cudaErrorInvalidValue, "dequantize_rows: a K-quant layout without sub-scales", __FILE__, __LINE__);
  }
  detail::DequantizeArgs args{w.dims.format, w.weights,   w.scales,     w.sub_scales,      w.tile_group,
                              w.column_source, ids,         out,          w.dims.rows,       w.dims.cols,
                              w.dims.n_pad,    w.dims.k_pad, w.dims.k_chunks(), w.dims.min_offset ? 1 : 0};
  const dim3 grid(static_cast<unsigned>((w.dims.k_pad + detail::kPrepareThreads - 1) / detail::kPrepareThreads),
                  static_cast<unsigned>(count));
  detail::dequantize_rows_kernel<<<grid, detail::kPrepareThreads, 0, stream>>>(args);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "dequantize_rows_kernel");
}

}  // namespace nibble::kernels::cuda
