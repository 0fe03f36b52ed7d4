#include "scheduler/block_manager.h"

#include <algorithm>
#include <bit>
#include <iterator>
#include <random>

#include "common/error.h"

namespace nibble::scheduler {
namespace {

std::uint64_t load_little_endian(std::span<const std::uint8_t> bytes) {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) value |= std::uint64_t{bytes[i]} << (8 * i);
  return value;
}

void store_little_endian(std::vector<std::uint8_t>& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

struct SipState {
  std::uint64_t v0, v1, v2, v3;

  void round() {
    v0 += v1;
    v1 = std::rotl(v1, 13) ^ v0;
    v0 = std::rotl(v0, 32);
    v2 += v3;
    v3 = std::rotl(v3, 16) ^ v2;
    v0 += v3;
    v3 = std::rotl(v3, 21) ^ v0;
    v2 += v1;
    v1 = std::rotl(v1, 17) ^ v2;
    v2 = std::rotl(v2, 32);
  }
  void compress(std::uint64_t word) {
    v3 ^= word;
    round();
    round();
    v0 ^= word;
  }
};

std::uint64_t random_word(std::random_device& device) {
  return (std::uint64_t{device()} << 32) ^ std::uint64_t{device()};
}

void require_empty(const BlockTable& table) {
  if (!table.blocks.empty()) fail("a prompt needs an empty block table (this one holds {} tokens)", table.num_tokens);
}

}  // namespace

namespace detail {

std::uint64_t siphash24(std::uint64_t k0, std::uint64_t k1, std::span<const std::uint8_t> bytes) {
  SipState state{k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL, k0 ^ 0x6c7967656e657261ULL,
                 k1 ^ 0x7465646279746573ULL};
  const std::size_t whole_words = bytes.size() / 8 * 8;
  for (std::size_t i = 0; i < whole_words; i += 8) state.compress(load_little_endian(bytes.subspan(i, 8)));
  // The last word: the remaining bytes and, in its top byte, the length mod 256.
  state.compress(load_little_endian(bytes.subspan(whole_words)) | (std::uint64_t{bytes.size()} << 56));
  state.v2 ^= 0xff;
  for (int i = 0; i < 4; ++i) state.round();
  return state.v0 ^ state.v1 ^ state.v2 ^ state.v3;
}

}  // namespace detail

double PrefixCacheStats::hit_ratio() const {
  return queried_tokens == 0 ? 0.0 : static_cast<double>(hit_tokens) / static_cast<double>(queried_tokens);
}

BlockManager::BlockManager(std::int32_t num_blocks, std::int32_t block_size) : block_size_(block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    fail("the KV cache needs a positive number of blocks and block size (got {} blocks of {} tokens)", num_blocks,
         block_size);
  }
  blocks_.resize(static_cast<std::size_t>(num_blocks));
  cached_tokens_.resize(static_cast<std::size_t>(num_blocks) * static_cast<std::size_t>(block_size));
  // A stack that hands out block 0 first.
  for (BlockId id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
  std::random_device device;
  hash_key_ = {random_word(device), random_word(device)};
}

// --- New sequences ---

bool BlockManager::can_allocate(std::span<const TokenId> prompt) const { return fits(prompt, lookup(prompt)); }

std::optional<PromptAllocation> BlockManager::allocate_prompt(BlockTable& table, std::span<const TokenId> prompt) {
  require_empty(table);
  const auto hits = lookup(prompt);
  if (!fits(prompt, hits)) return std::nullopt;
  PromptAllocation allocation;
  allocation.cached_tokens = attach(table, prompt, hits);
  // Cannot run out: fits() counted these blocks.
  allocation.slots = std::move(append(table, prompt.subspan(static_cast<std::size_t>(allocation.cached_tokens)))->slots);
  return allocation;
}

std::int64_t BlockManager::reuse_cached_prefix(BlockTable& table, std::span<const TokenId> prompt) {
  require_empty(table);
  return attach(table, prompt, lookup(prompt));
}

// The cached blocks that hold the prompt's leading full blocks, in order.
std::vector<BlockId> BlockManager::lookup(std::span<const TokenId> prompt) const {
  std::vector<BlockId> hits;
  // Only blocks ending before the last token: that one is always computed, for its logits.
  const std::size_t reusable = prompt.empty() ? 0 : (prompt.size() - 1) / static_cast<std::size_t>(block_size_);
  BlockHash parent = 0;
  for (std::size_t i = 0; i < reusable; ++i) {
    const auto tokens = prompt.subspan(i * static_cast<std::size_t>(block_size_), static_cast<std::size_t>(block_size_));
    const BlockHash hash = chain_hash(parent, tokens);
    const auto found = cached_.find(hash);
    if (found == cached_.end()) break;
    // 64 bits can still collide: a hit must also hold the same tokens after the same
    // prefix hash, so a false hit needs two different whole prefixes to collide.
    if (blocks_[found->second].parent_hash != parent || !std::ranges::equal(cached_tokens(found->second), tokens)) {
      break;
    }
    hits.push_back(found->second);
    parent = hash;
  }
  return hits;
}

bool BlockManager::fits(std::span<const TokenId> prompt, const std::vector<BlockId>& hits) const {
  // Reusing an evictable block takes it out of what allocations can take.
  const auto evictable_hits = std::ranges::count_if(hits, [&](BlockId id) { return blocks_[id].ref_count == 0; });
  const auto new_blocks = blocks_for(static_cast<std::int64_t>(prompt.size())) - static_cast<std::int64_t>(hits.size());
  return new_blocks <= num_free_blocks() - evictable_hits;
}

std::int64_t BlockManager::attach(BlockTable& table, std::span<const TokenId> prompt,
                                  const std::vector<BlockId>& hits) {
  for (const BlockId id : hits) {
    Block& block = blocks_[id];
    if (block.ref_count == 0) evictable_.erase(block.lru_position);
    ++block.ref_count;
    table.blocks.push_back(id);
  }
  if (!hits.empty()) table.prefix_hash = *blocks_[hits.back()].hash;
  table.num_tokens = static_cast<std::int64_t>(hits.size()) * block_size_;
  stats_.queried_tokens += static_cast<std::int64_t>(prompt.size());
  stats_.hit_tokens += table.num_tokens;
  return table.num_tokens;
}

// --- Growing a sequence ---

bool BlockManager::can_append(const BlockTable& table, std::int64_t n_tokens) const {
  return blocks_needed_to_append(table, n_tokens) <= num_free_blocks();
}

std::optional<Appended> BlockManager::append(BlockTable& table, std::span<const TokenId> tokens) {
  if (!can_append(table, static_cast<std::int64_t>(tokens.size()))) return std::nullopt;
  Appended appended;
  if (!tokens.empty() && needs_copy(table)) {
    const BlockId shared = table.blocks.back();
    const BlockId own = take_block();
    appended.copy = BlockCopy{shared, own, static_cast<std::int32_t>(table.num_tokens % block_size_)};
    release(shared, /*keep_cached=*/true);  // the other tables still hold it
    table.blocks.back() = own;
  }
  appended.slots.reserve(tokens.size());
  for (const TokenId token : tokens) {
    const auto offset = static_cast<std::int32_t>(table.num_tokens % block_size_);
    if (offset == 0) table.blocks.push_back(take_block());
    appended.slots.push_back({table.blocks.back(), offset});
    table.open_block_tokens.push_back(token);
    ++table.num_tokens;
    if (offset + 1 == block_size_) {
      const BlockHash hash = chain_hash(table.prefix_hash, table.open_block_tokens);
      register_full(table.blocks.back(), hash, table.prefix_hash, table.open_block_tokens);
      table.prefix_hash = hash;
      table.open_block_tokens.clear();
    }
  }
  return appended;
}

std::int64_t BlockManager::blocks_needed_to_append(const BlockTable& table, std::int64_t n_tokens) const {
  if (n_tokens < 0) fail("cannot append {} tokens", n_tokens);
  if (n_tokens == 0) return 0;
  const std::int64_t opened = blocks_for(table.num_tokens + n_tokens) - static_cast<std::int64_t>(table.blocks.size());
  return opened + (needs_copy(table) ? 1 : 0);
}

// Writing into a partly filled block that another table also reads would change
// its tokens under it.
bool BlockManager::needs_copy(const BlockTable& table) const {
  return table.num_tokens % block_size_ != 0 && blocks_[table.blocks.back()].ref_count > 1;
}

// --- Sharing and releasing ---

BlockTable BlockManager::fork(const BlockTable& table) {
  for (const BlockId id : table.blocks) ++blocks_[id].ref_count;
  return table;
}

void BlockManager::free(BlockTable& table) { release_all(table, /*keep_cached=*/true); }

void BlockManager::free_unwritten(BlockTable& table) { release_all(table, /*keep_cached=*/false); }

void BlockManager::release_all(BlockTable& table, bool keep_cached) {
  // Last block first, so a sequence's tail is evicted before its head: a later
  // block cannot be hit once an earlier one of its chain is gone.
  for (auto id = table.blocks.rbegin(); id != table.blocks.rend(); ++id) release(*id, keep_cached);
  table = BlockTable{};
}

void BlockManager::release(BlockId id, bool keep_cached) {
  Block& block = blocks_[id];
  if (--block.ref_count > 0) return;
  if (block.hash && keep_cached) {
    evictable_.push_back(id);
    block.lru_position = std::prev(evictable_.end());
    return;
  }
  if (block.hash) unregister(id);
  free_.push_back(id);
}

// Free blocks first; then the least recently used cached block, forgotten.
BlockId BlockManager::take_block() {
  BlockId id = 0;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    if (evictable_.empty()) fail("internal error: the KV cache ran out of blocks after a check said they fit");
    id = evictable_.front();
    evictable_.pop_front();
    unregister(id);
  }
  blocks_[id].ref_count = 1;
  return id;
}

void BlockManager::register_full(BlockId id, BlockHash hash, BlockHash parent_hash, std::span<const TokenId> tokens) {
  // Another block may already hold this prefix (two prompts computed it before
  // either was cached); the first keeps the entry and this one is never reused.
  if (!cached_.emplace(hash, id).second) return;
  Block& block = blocks_[id];
  block.hash = hash;
  block.parent_hash = parent_hash;
  std::ranges::copy(tokens, cached_tokens_.begin() + static_cast<std::ptrdiff_t>(id) * block_size_);
}

void BlockManager::unregister(BlockId id) {
  Block& block = blocks_[id];
  cached_.erase(*block.hash);
  block.hash.reset();
}

BlockHash BlockManager::chain_hash(BlockHash parent, std::span<const TokenId> tokens) const {
  // The parent's hash, then each token, little-endian: the same bytes on every host.
  std::vector<std::uint8_t> bytes;
  bytes.reserve(sizeof(BlockHash) + tokens.size() * sizeof(TokenId));
  store_little_endian(bytes, parent, sizeof(BlockHash));
  for (const TokenId token : tokens) store_little_endian(bytes, static_cast<std::uint32_t>(token), sizeof(TokenId));
  return detail::siphash24(hash_key_[0], hash_key_[1], bytes);
}

std::int64_t BlockManager::blocks_for(std::int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

// --- Queries ---

std::int32_t BlockManager::num_free_blocks() const {
  return static_cast<std::int32_t>(free_.size() + evictable_.size());
}

std::int32_t BlockManager::num_used_blocks() const { return num_blocks() - num_free_blocks(); }

double BlockManager::usage() const { return static_cast<double>(num_used_blocks()) / num_blocks(); }

const BlockManager::Block& BlockManager::at(BlockId id) const {
  if (id < 0 || id >= num_blocks()) fail("KV-cache block {} is out of range (the cache has {})", id, num_blocks());
  return blocks_[id];
}

BlockState BlockManager::state(BlockId id) const {
  const Block& block = at(id);
  if (block.ref_count > 0) return BlockState::Referenced;
  return block.hash ? BlockState::Evictable : BlockState::Free;
}

std::int32_t BlockManager::ref_count(BlockId id) const { return at(id).ref_count; }

std::span<const TokenId> BlockManager::cached_tokens(BlockId id) const {
  if (!at(id).hash) return {};
  return std::span(cached_tokens_).subspan(static_cast<std::size_t>(id) * static_cast<std::size_t>(block_size_),
                                           static_cast<std::size_t>(block_size_));
}

}  // namespace nibble::scheduler
