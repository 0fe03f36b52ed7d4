#pragma once
// Progress while a model loads (mapping, repacking and paging weights in can take
// minutes on a large model): an info log line at most every 2 s and at the end
// (layers, fraction, weight bytes bound so far, seconds, ETA), a line on an
// interactive terminal, and, for `nibble serve`, the nibble_model_load_progress gauge.
#include <functional>

#include "engine/model.h"

namespace nibble::cli {

// `fraction` (0..1, layers done over layers) is told after every layer.
engine::LoadProgress load_progress_reporter(std::function<void(double fraction)> on_fraction = {});

}  // namespace nibble::cli
