#include "cli/process_stats.h"

#include <sys/resource.h>

#include <fstream>
#include <string>

namespace nibble::cli {

std::uint64_t peak_rss_bytes() {
  // VmHWM belongs to this program's address space. getrusage's ru_maxrss does not:
  // Linux keeps it across fork and exec, so a child of a large process (a Python test
  // holding torch) would report its parent's peak.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // "VmHWM:  123456 kB"
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace nibble::cli
