// GGUF files from untrusted bytes: the reader (loader/gguf.h), the model config
// taken from its metadata, the weights view (names, shapes, dequantizing small
// tensors) and the embedded tokenizer vocabulary. Every rejection must be a
// nibble::Error; anything else (crash, leak, UB, other exception) is a bug.
#include <cstdint>
#include <memory>
#include <vector>

#include "common/error.h"
#include "fuzz_util.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "tokenizer/tokenizer.h"

namespace {

// Dequantizing is linear in the tensor's size; bigger tensors add time, not coverage.
constexpr std::int64_t kMaxDequantizedElements = 1 << 16;

void exercise(const std::filesystem::path& path) {
  auto gguf = std::make_shared<const nibble::GgufFile>(path);
  for (const auto& tensor : gguf->tensors()) {
    const auto numel = tensor.numel();
    if (numel < 0) nibble::fuzz::violated("negative numel");
    if (numel > 0 && numel <= kMaxDequantizedElements) {
      std::vector<float> out(static_cast<std::size_t>(numel));
      nibble::dequantize_to_f32(tensor, out);
    }
  }
  try {
    const auto config = nibble::config_from_gguf(*gguf);
    const auto weights = nibble::make_gguf_weights(gguf, config);
    for (const auto& info : weights->list()) {
      if (!weights->contains(info.name)) nibble::fuzz::violated("listed tensor not contained");
    }
  } catch (const nibble::Error&) {
  }
  try {
    const auto tokenizer = nibble::load_tokenizer(path);
    const auto ids = tokenizer->encode("Hello, world! <|im_start|> 123", true);
    for (const auto id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= tokenizer->vocab_size()) nibble::fuzz::violated("id out of vocab");
    }
    (void)tokenizer->decode(ids, false);
  } catch (const nibble::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& path = nibble::fuzz::scratch_file(".gguf");
  nibble::fuzz::write_file(path, data, size);
  try {
    exercise(path);
  } catch (const nibble::Error&) {
  }
  return 0;
}
