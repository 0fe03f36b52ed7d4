#pragma once
// Progress while a model loads (dequantizing, paging weights in can take a while):
// a line on an interactive terminal, a debug log event for everyone else.
#include "engine/decoder_model.h"

namespace nibble::cli {

engine::LoadProgress load_progress_reporter();

}  // namespace nibble::cli
