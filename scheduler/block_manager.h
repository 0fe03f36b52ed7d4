#pragma once
// The paged KV cache's bookkeeping (issue 5): the cache is a pool of fixed-size
// blocks shared by every sequence, and this class decides which blocks each
// sequence uses. It holds no tensors: it hands out (block, slot) positions for the
// engine to write K/V at, and tells it when to copy a block first (copy-on-write).
//
// Prefix caching: a full block is known by a hash of its tokens chained with the
// hash of everything before it, so a new prompt that starts like an earlier one
// reuses those blocks instead of recomputing them. A block nobody uses any more
// keeps its contents and hash (evictable) until a fresh block is needed and it is
// the least recently used one. See README.md for the design.
#include <array>
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/token.h"
#include "engine/step_plan.h"

namespace nibble::scheduler {


using BlockId = std::int32_t;
using BlockHash = std::uint64_t;

// Where one token's K/V lives: slot `offset` of block `block`.
struct Slot {
  BlockId block = 0;
  std::int32_t offset = 0;
  bool operator==(const Slot&) const = default;
};

// Copy-on-write: the engine copies the K/V of the first `tokens` slots of `src`
// into `dst` before writing the new tokens (a step plan carries it as it is).
using BlockCopy = engine::BlockCopy;

struct Appended {
  std::optional<BlockCopy> copy;  // run it before writing `slots`
  std::vector<Slot> slots;        // one per appended token, in order
};

struct PromptAllocation {
  std::int64_t cached_tokens = 0;  // leading prompt tokens already in the cache: prefill starts after them
  std::vector<Slot> slots;         // for the prompt's tokens from cached_tokens on
};

// One sequence's blocks. The caller (the scheduler) owns it as a plain value, but
// only BlockManager changes it, and a second table sharing its blocks is made with
// fork(), never by copying (the reference counts would be wrong).
struct BlockTable {
  std::vector<BlockId> blocks;  // token p lives in blocks[p / block_size], slot p % block_size
  std::int64_t num_tokens = 0;
  BlockHash prefix_hash = 0;               // the chain hash of the full blocks (0 before the first)
  std::vector<TokenId> open_block_tokens;  // the last block's tokens while it is not full: hashed when it fills
  bool operator==(const BlockTable&) const = default;
};

enum class BlockState {
  Free,        // holds nothing anyone can reuse
  Evictable,   // unused, but its tokens are cached: a prompt may reuse it until it is evicted
  Referenced,  // in at least one table
};

struct PrefixCacheStats {
  std::int64_t queried_tokens = 0;  // prompt tokens looked up by successful prompt allocations
  std::int64_t hit_tokens = 0;      // of those, tokens found in the cache
  double hit_ratio() const;         // 0 before any query
};

// Single-threaded by contract: only the scheduler's thread calls it (no locks).
// Every operation that needs blocks either succeeds whole or returns false /
// std::nullopt having changed nothing, so the scheduler can preempt and retry.
//
// A block is offered to other prompts as soon as a table fills it, before the
// engine has written its K/V: the engine must write every slot handed out before
// the step's attention reads them (it writes each layer's K/V for the whole batch
// before that layer's attention, so a prompt that hits a block filled in the same
// step reads it correctly). A table whose slots were never written (the step
// failed) is released with free_unwritten().
class BlockManager {
 public:
  // Small enough that a partial last block wastes little, large enough for
  // attention kernels to read whole blocks.
  static constexpr std::int32_t kDefaultBlockSize = 16;

  // Throws nibble::Error unless both are positive.
  BlockManager(std::int32_t num_blocks, std::int32_t block_size = kDefaultBlockSize);

  // --- A new sequence (`table` empty) ---
  // Whether allocate_prompt(prompt) would succeed now, counting the blocks it would reuse.
  bool can_allocate(std::span<const TokenId> prompt) const;
  // All of the prompt at once: reuses the cached leading full blocks and allocates
  // the rest. At least the prompt's last token is never reported cached (its logits
  // are needed). std::nullopt when blocks run out.
  std::optional<PromptAllocation> allocate_prompt(BlockTable& table, std::span<const TokenId> prompt);
  // Chunked prefill: takes only the cached leading full blocks (same rule as above)
  // and returns how many tokens they hold; the rest follows through append().
  std::int64_t reuse_cached_prefix(BlockTable& table, std::span<const TokenId> prompt);

  // --- Growing a sequence (prefill chunks, decode tokens) ---
  // Whether append() of `n_tokens` tokens would succeed now.
  bool can_append(const BlockTable& table, std::int64_t n_tokens) const;
  // Slots for `tokens` after the table's last token; opens blocks as needed, and
  // copies a shared, partly filled last block first (Appended::copy). Blocks it
  // fills become reusable by later prompts. std::nullopt when blocks run out.
  std::optional<Appended> append(BlockTable& table, std::span<const TokenId> tokens);

  // A second sequence sharing every block of `table` (n > 1, best_of): no block is
  // copied until one of them writes into a shared, partly filled block.
  BlockTable fork(const BlockTable& table);

  // Releases the table's blocks and empties it. Full blocks nobody uses any more
  // stay cached (evictable, least recently used first); the rest become free.
  void free(BlockTable& table);
  // The same, but blocks that fall out of use are not kept for reuse: their K/V
  // was never written.
  void free_unwritten(BlockTable& table);

  // --- Queries ---
  std::int32_t num_blocks() const { return static_cast<std::int32_t>(blocks_.size()); }
  std::int32_t block_size() const { return block_size_; }
  std::int32_t num_free_blocks() const;  // what allocations can take: free + evictable
  std::int32_t num_evictable_blocks() const { return static_cast<std::int32_t>(evictable_.size()); }
  std::int32_t num_used_blocks() const;  // referenced by at least one table
  double usage() const;                  // used / total: the KV-cache usage metric
  const PrefixCacheStats& prefix_cache_stats() const { return stats_; }

  // Per block, for tests and debugging. Throws nibble::Error for an id out of range.
  BlockState state(BlockId block) const;
  std::int32_t ref_count(BlockId block) const;
  // The tokens a cached block holds; empty unless the block can be reused by a prompt.
  std::span<const TokenId> cached_tokens(BlockId block) const;

 private:
  struct Block {
    std::int32_t ref_count = 0;
    std::optional<BlockHash> hash;  // set while the block is in cached_
    BlockHash parent_hash = 0;      // with the tokens, checked on a hit (see lookup())
    std::list<BlockId>::iterator lru_position;  // valid while evictable
  };

  std::int64_t blocks_for(std::int64_t tokens) const;
  std::vector<BlockId> lookup(std::span<const TokenId> prompt) const;
  bool fits(std::span<const TokenId> prompt, const std::vector<BlockId>& hits) const;
  std::int64_t attach(BlockTable& table, std::span<const TokenId> prompt, const std::vector<BlockId>& hits);
  std::int64_t blocks_needed_to_append(const BlockTable& table, std::int64_t n_tokens) const;
  bool needs_copy(const BlockTable& table) const;
  BlockId take_block();
  void release(BlockId block, bool keep_cached);
  void release_all(BlockTable& table, bool keep_cached);
  void register_full(BlockId block, BlockHash hash, BlockHash parent_hash, std::span<const TokenId> tokens);
  void unregister(BlockId block);
  BlockHash chain_hash(BlockHash parent, std::span<const TokenId> tokens) const;
  const Block& at(BlockId block) const;

  std::int32_t block_size_;
  std::vector<Block> blocks_;
  std::vector<TokenId> cached_tokens_;  // block_size tokens per block, meaningful while it is hashed
  std::vector<BlockId> free_;           // a stack
  std::list<BlockId> evictable_;        // least recently used first
  std::unordered_map<BlockHash, BlockId> cached_;
  std::array<std::uint64_t, 2> hash_key_;  // random per manager: a client cannot craft collisions it does not know
  PrefixCacheStats stats_;
};

namespace detail {
// SipHash-2-4 (Aumasson & Bernstein) of `bytes` under the key (k0, k1): the block
// hash. Declared here for its reference test vectors.
std::uint64_t siphash24(std::uint64_t k0, std::uint64_t k1, std::span<const std::uint8_t> bytes);
}  // namespace detail

}  // namespace nibble::scheduler
