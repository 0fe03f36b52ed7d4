#pragma once
// Pre-tokenization: splitting a text segment into the words BPE runs on. The regexes
// of GPT-2, Llama-3 and Qwen2 are hand-written scanners (they need the lookahead
// `\s+(?!\S)`, which RE2 lacks); other lookaround-free patterns go through RE2.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace re2 {
class RE2;
}

namespace nibble {

enum class SplitKind {
  Gpt2,        // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Llama3,      // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,       // as Llama3 with \p{N} taken one at a time
  Digits,      // HF Digits(individual_digits = false): runs of \p{N} isolated
  EachDigit,   // HF Digits(individual_digits = true) / llama.cpp's "\p{N}"
  Regex,       // any lookaround-free pattern, matches isolated
};

// Recognizes a Split pattern by its exact text; nullopt-like Regex kind otherwise.
SplitKind classify_split_pattern(std::string_view pattern);
// The regex of a hand-written kind (Gpt2, Llama3, Qwen2), as tokenizer.json writes
// it; empty for the others.
std::string_view known_split_pattern(SplitKind kind);

class Splitter {
 public:
  explicit Splitter(SplitKind kind, std::string_view pattern = {});
  ~Splitter();
  Splitter(Splitter&&) noexcept;
  Splitter& operator=(Splitter&&) noexcept;

  // Appends the pieces of `text` (views into it, covering it exactly, in order).
  void split(std::string_view text, std::vector<std::string_view>& out) const;
  SplitKind kind() const { return kind_; }

 private:
  SplitKind kind_;
  std::unique_ptr<re2::RE2> regex_;
};

// Applies each splitter in turn to every piece the previous one produced.
void split_all(const std::vector<Splitter>& splitters, std::string_view text, std::vector<std::string_view>& out);

}  // namespace nibble
