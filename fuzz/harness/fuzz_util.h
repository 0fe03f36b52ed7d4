#pragma once
// Helpers the harnesses share.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace nibble::fuzz {

// Log lines (a request log per HTTP exchange, loader warnings) would cost more
// than the code under test; errors that matter surface as crashes or exceptions.
inline const bool logs_silenced = (spdlog::set_level(spdlog::level::off), true);

// The readers under test take a path and map the file, so the input is written to
// one file per process (in /dev/shm when there is one: no disk I/O per run) and
// rewritten for each input. Mapping is part of what is tested (empty files, sizes).
inline const std::filesystem::path& scratch_file(std::string_view suffix) {
  static const std::filesystem::path path = [&] {
    const std::filesystem::path dir = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    return dir / ("nibble-fuzz-" + std::to_string(::getpid()) + std::string(suffix));
  }();
  return path;
}

inline void write_file(const std::filesystem::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// A property the harness checks failed: abort so libFuzzer saves the input.
[[noreturn]] inline void violated(const char* what) {
  std::fprintf(stderr, "fuzz: property violated: %s\n", what);
  std::abort();
}

// Bytes outside printable ASCII as \xNN, for messages about a failed property.
inline std::string escaped(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", byte);
      out += hex;
    }
  }
  return out;
}

// Splits an input at its first NUL byte: two independent strings for harnesses
// that take two (a template and its messages, a prompt and token ids).
inline std::pair<std::string_view, std::string_view> split_at_nul(const std::uint8_t* data, std::size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const auto nul = all.find('\0');
  if (nul == std::string_view::npos) return {all, {}};
  return {all.substr(0, nul), all.substr(nul + 1)};
}

}  // namespace nibble::fuzz
