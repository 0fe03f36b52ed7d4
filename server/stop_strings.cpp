#include "server/stop_strings.h"

#include <algorithm>
#include <utility>

namespace nibble::server {

StopStringFilter::StopStringFilter(std::vector<std::string> stop) : stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
}

StopStringFilter::Output StopStringFilter::push(std::string_view piece) {
  Output out;
  if (stopped_) {
    out.stopped = true;
    return out;
  }
  pending_ += piece;
  // The stop string that completes first wins (on a tie, the one that starts
  // first), as if the text had arrived one character at a time: then how the
  // tokens happen to split the text cannot change where generation stops.
  std::size_t first = std::string::npos;
  std::size_t first_end = std::string::npos;
  for (const auto& s : stop_) {
    const std::size_t at = pending_.find(s);
    if (at == std::string::npos) continue;
    const std::size_t end = at + s.size();
    if (end < first_end || (end == first_end && at < first)) {
      first = at;
      first_end = end;
    }
  }
  if (first != std::string::npos) {
    out.text = pending_.substr(0, first);
    out.stopped = stopped_ = true;
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that could still grow into a stop string. It starts
  // where a stop string starts, so it never splits a UTF-8 character.
  std::size_t hold = 0;
  for (const auto& s : stop_) {
    for (std::size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k) {
      if (std::string_view(pending_).substr(pending_.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  out.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStringFilter::flush() {
  if (stopped_) return {};
  return std::exchange(pending_, {});
}

}  // namespace nibble::server
