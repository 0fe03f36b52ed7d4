#pragma once
// Pieces shared by the quantized-checkpoint readers (GPTQ/AWQ, compressed-tensors):
// fetching the tensors of one module with errors that name the tensor and both
// shapes, exact scale conversion, and unpacking codes from packed int32 words.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "loader/tensor.h"
#include "loader/weight_source.h"

namespace nibble::quant {

std::string shape_text(const std::vector<std::int64_t>& shape);

// `name` from `weights`, checked to have one of `dtypes` ("… has dtype F32, expected I32").
TensorView require(const WeightSource& weights, const std::string& name, std::initializer_list<DType> dtypes);
// Throws "tensor 'x': shape [a, b], expected [c, d] (why)".
void expect_shape(const TensorView& tensor, const std::vector<std::int64_t>& expected, std::string_view why);

// F16 / BF16 / F32 values as exact floats.
std::vector<float> to_floats(const TensorView& tensor);

// How codes sit in 32-bit words. Stream: one little-endian bit stream, code i at
// bit i*bits (LSB first), so 3-bit codes straddle words (32 codes per 3 words).
// PerWord: each word holds floor(32/bits) codes from bit 0 up and the spare
// high bits are padding (compressed-tensors before 0.18 for 3-bit). The two agree
// for 2, 4 and 8 bits.
enum class Packing { Stream, PerWord };

// Unpacks `count` codes; word j of the stream starts at byte `words + j * word_stride`
// (4 for consecutive words, 4*N for a column of an [rows, N] int32 tensor).
void unpack_codes(const std::byte* words, std::size_t word_stride, std::int64_t count, int bits, Packing packing,
                  std::uint8_t* out);

// Words needed for `count` codes.
std::int64_t packed_words(std::int64_t count, int bits, Packing packing);

// Drops the file pages of tensors that were copied into another form. The views
// must lie in a MappedFile (never an owned buffer: the advice would discard it).
void release(const std::vector<TensorView>& tensors);

// Bytes of all `tensors` as stored.
std::uint64_t stored_bytes(const std::vector<TensorView>& tensors);

}  // namespace nibble::quant
