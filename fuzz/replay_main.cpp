// main() for the replay binaries: every file named on the command line, and every
// regular file inside each folder named, goes through LLVMFuzzerTestOneInput once,
// without libFuzzer. A crash still aborts under ASan/UBSan; the file being run is
// printed first so it is named in CI logs.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));

namespace {

void run_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), bytes.size());
  // A copy of exactly `size` bytes, as libFuzzer passes, so ASan sees reads past the end.
  std::vector<std::uint8_t> input(bytes.begin(), bytes.end());
  LLVMFuzzerTestOneInput(input.data(), input.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  std::size_t files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path path(argv[i]);
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> entries;
      for (const auto& entry : std::filesystem::directory_iterator(path)) {
        if (entry.is_regular_file()) entries.push_back(entry.path());
      }
      std::sort(entries.begin(), entries.end());  // the same order on every machine
      for (const auto& entry : entries) run_file(entry), ++files;
    } else {
      run_file(path), ++files;
    }
  }
  if (files == 0) {
    std::fprintf(stderr, "usage: %s FILE_OR_FOLDER...\nreplay: no input files\n", argv[0]);
    return 2;
  }
  std::fprintf(stderr, "replay: %zu inputs, no crash\n", files);
  return 0;
}
