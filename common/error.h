#pragma once
// One exception type for every user-facing failure (bad model file, bad flag, bad
// request). Callers at the edge (CLI, HTTP) turn it into a message; nothing below
// them prints or exits.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace nibble {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace nibble
