#include "common/error.h"
#include "common/half.h"
#include "kernels/backend.h"

namespace nibble::kernels {

float matrix_element(const Matrix& m, std::int64_t index) {
  switch (m.dtype) {
    case DType::F32:
      return static_cast<const float*>(m.data)[index];
    case DType::F16:
      return f16_to_f32(static_cast<const std::uint16_t*>(m.data)[index]);
    case DType::BF16:
      return bf16_to_f32(static_cast<const std::uint16_t*>(m.data)[index]);
    default:
      fail("no support for {} matrices", dtype_name(m.dtype));
  }
}

}  // namespace nibble::kernels
