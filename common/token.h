#pragma once
// A vocabulary id: what the tokenizer produces, the model embeds and the sampler
// picks. One definition for every layer.
#include <cstdint>

namespace nibble {

using TokenId = std::int32_t;

}  // namespace nibble
