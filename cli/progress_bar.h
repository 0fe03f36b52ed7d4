#pragma once
// Progress of long offline work (compressing layers, evaluating windows): a bar
// with an ETA redrawn in place on a terminal; on a pipe or log file a plain line at
// most every few seconds, so CI logs show the run is alive without flooding.
#include "quant/progress.h"

namespace nibble::cli {

quant::Progress progress_bar();

}  // namespace nibble::cli
