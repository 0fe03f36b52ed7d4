// The paged KV cache's block manager: allocation and reference counts, copy-on-write
// after fork, prefix-cache hits and misses, LRU eviction, all-or-nothing failure
// when blocks run out, chunked prefill equal to one-shot allocation, and a
// randomized run checked after every operation against a shadow of what the engine
// would have written into each slot.
#include "scheduler/block_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "test_util.h"

namespace nibble::scheduler {
namespace {

std::vector<TokenId> iota_tokens(TokenId first, int count) {
  std::vector<TokenId> tokens(static_cast<std::size_t>(count));
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

std::vector<TokenId> concat(std::vector<TokenId> head, const std::vector<TokenId>& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}

// Everything observable about the manager, to show a failed operation changed nothing.
struct Snapshot {
  std::vector<BlockState> states;
  std::vector<std::int32_t> ref_counts;
  std::vector<std::vector<TokenId>> cached;
  std::int32_t free_blocks = 0;
  std::int32_t evictable_blocks = 0;
  std::int64_t queried_tokens = 0;
  std::int64_t hit_tokens = 0;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const BlockManager& manager) {
  Snapshot shot;
  shot.free_blocks = manager.num_free_blocks();
  shot.evictable_blocks = manager.num_evictable_blocks();
  shot.queried_tokens = manager.prefix_cache_stats().queried_tokens;
  shot.hit_tokens = manager.prefix_cache_stats().hit_tokens;
  for (BlockId id = 0; id < manager.num_blocks(); ++id) {
    shot.states.push_back(manager.state(id));
    shot.ref_counts.push_back(manager.ref_count(id));
    const auto tokens = manager.cached_tokens(id);
    shot.cached.emplace_back(tokens.begin(), tokens.end());
  }
  return shot;
}

// The slots the manager must hand out for positions [first, first + count) of `table`.
std::vector<Slot> expected_slots(const BlockTable& table, std::int64_t first, std::int64_t count, int block_size) {
  std::vector<Slot> slots;
  for (std::int64_t p = first; p < first + count; ++p) {
    slots.push_back({table.blocks[static_cast<std::size_t>(p / block_size)], static_cast<std::int32_t>(p % block_size)});
  }
  return slots;
}

// One prompt allocated whole; the test fails if it does not fit.
struct Allocated {
  BlockTable table;
  std::int64_t cached_tokens = 0;
};

Allocated allocate(BlockManager& manager, const std::vector<TokenId>& prompt) {
  Allocated allocated;
  const auto allocation = manager.allocate_prompt(allocated.table, prompt);
  EXPECT_TRUE(allocation.has_value());
  if (allocation) allocated.cached_tokens = allocation->cached_tokens;
  return allocated;
}

Appended append_ok(BlockManager& manager, BlockTable& table, const std::vector<TokenId>& tokens) {
  auto appended = manager.append(table, tokens);
  EXPECT_TRUE(appended.has_value());
  return appended.value_or(Appended{});
}

TEST(BlockManager, RejectsAnEmptyPool) {
  testing::expect_error([] { BlockManager(0, 16); }, {"0 blocks of 16 tokens"});
  testing::expect_error([] { BlockManager(8, 0); }, {"8 blocks of 0 tokens"});
}

TEST(BlockManager, AllocatesAPromptAndFreesIt) {
  EXPECT_EQ(BlockManager(8).block_size(), 16);
  BlockManager manager(8, 4);
  EXPECT_EQ(manager.num_free_blocks(), 8);
  const auto prompt = iota_tokens(100, 10);
  BlockTable table;
  const auto allocation = manager.allocate_prompt(table, prompt);
  ASSERT_TRUE(allocation);
  EXPECT_EQ(allocation->cached_tokens, 0);
  ASSERT_EQ(table.blocks.size(), 3u);
  EXPECT_EQ(table.num_tokens, 10);
  EXPECT_EQ(allocation->slots, expected_slots(table, 0, 10, 4));
  EXPECT_EQ(std::set<BlockId>(table.blocks.begin(), table.blocks.end()).size(), 3u);
  for (const BlockId id : table.blocks) EXPECT_EQ(manager.ref_count(id), 1);
  EXPECT_EQ(manager.num_used_blocks(), 3);
  EXPECT_EQ(manager.num_free_blocks(), 5);
  EXPECT_DOUBLE_EQ(manager.usage(), 3.0 / 8.0);

  // The two full blocks are cached with their tokens; the partial one is not.
  EXPECT_EQ(std::vector<TokenId>(manager.cached_tokens(table.blocks[1]).begin(),
                                 manager.cached_tokens(table.blocks[1]).end()),
            iota_tokens(104, 4));
  EXPECT_TRUE(manager.cached_tokens(table.blocks[2]).empty());

  const BlockTable held = table;
  manager.free(table);
  EXPECT_EQ(table, BlockTable{});
  EXPECT_EQ(manager.num_free_blocks(), 8);
  EXPECT_EQ(manager.num_used_blocks(), 0);
  EXPECT_EQ(manager.num_evictable_blocks(), 2);
  EXPECT_EQ(manager.state(held.blocks[0]), BlockState::Evictable);
  EXPECT_EQ(manager.state(held.blocks[1]), BlockState::Evictable);
  EXPECT_EQ(manager.state(held.blocks[2]), BlockState::Free);
  EXPECT_DOUBLE_EQ(manager.usage(), 0.0);
}

TEST(BlockManager, ForkSharesBlocksAndCopiesTheLastOneOnWrite) {
  BlockManager manager(8, 4);
  auto parent = allocate(manager, iota_tokens(1, 6)).table;  // a full block and one holding 2 tokens
  BlockTable child = manager.fork(parent);
  EXPECT_EQ(child.blocks, parent.blocks);
  for (const BlockId id : parent.blocks) EXPECT_EQ(manager.ref_count(id), 2);
  EXPECT_EQ(manager.num_used_blocks(), 2);

  const BlockId full = parent.blocks[0];
  const BlockId shared_last = parent.blocks[1];
  const auto parent_write = append_ok(manager, parent, {7});
  ASSERT_TRUE(parent_write.copy);
  EXPECT_EQ(parent_write.copy->src, shared_last);
  EXPECT_EQ(parent_write.copy->tokens, 2);
  const BlockId own_last = parent_write.copy->dst;
  EXPECT_NE(own_last, shared_last);
  EXPECT_EQ(parent.blocks, (std::vector<BlockId>{full, own_last}));
  EXPECT_EQ(parent_write.slots, (std::vector<Slot>{{own_last, 2}}));
  EXPECT_EQ(manager.ref_count(full), 2);
  EXPECT_EQ(manager.ref_count(shared_last), 1);
  EXPECT_EQ(manager.ref_count(own_last), 1);

  // The child now owns the old last block alone: it writes in place.
  const auto child_write = append_ok(manager, child, {70});
  EXPECT_FALSE(child_write.copy);
  EXPECT_EQ(child.blocks, (std::vector<BlockId>{full, shared_last}));
  EXPECT_EQ(child_write.slots, (std::vector<Slot>{{shared_last, 2}}));
  EXPECT_EQ(manager.num_used_blocks(), 3);

  manager.free(parent);
  EXPECT_EQ(manager.ref_count(full), 1);
  EXPECT_EQ(manager.state(own_last), BlockState::Free);
  manager.free(child);
  EXPECT_EQ(manager.num_used_blocks(), 0);
}

TEST(BlockManager, ForkAtABlockBoundaryNeedsNoCopy) {
  BlockManager manager(8, 4);
  auto parent = allocate(manager, iota_tokens(1, 8)).table;
  BlockTable child = manager.fork(parent);
  EXPECT_TRUE(manager.can_append(parent, 1));
  const auto parent_write = append_ok(manager, parent, {9});
  const auto child_write = append_ok(manager, child, {9});
  EXPECT_FALSE(parent_write.copy);
  EXPECT_FALSE(child_write.copy);
  EXPECT_NE(parent.blocks[2], child.blocks[2]);
  EXPECT_EQ(manager.ref_count(parent.blocks[1]), 2);
}

TEST(BlockManager, ASharedSystemPromptCostsNoNewFullBlocks) {
  BlockManager manager(32, 4);
  const auto system = iota_tokens(1000, 12);
  const auto first_prompt = concat(system, iota_tokens(1, 5));
  const auto second_prompt = concat(system, iota_tokens(50, 6));
  const auto first = allocate(manager, first_prompt);
  EXPECT_EQ(first.cached_tokens, 0);
  EXPECT_EQ(manager.num_used_blocks(), 5);

  EXPECT_TRUE(manager.can_allocate(second_prompt));
  const auto second = allocate(manager, second_prompt);
  EXPECT_EQ(second.cached_tokens, 12);
  EXPECT_EQ(std::vector<BlockId>(second.table.blocks.begin(), second.table.blocks.begin() + 3),
            std::vector<BlockId>(first.table.blocks.begin(), first.table.blocks.begin() + 3));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(manager.ref_count(first.table.blocks[static_cast<std::size_t>(i)]), 2);
  EXPECT_EQ(manager.num_used_blocks(), 5 + 2);  // only the user part is new

  const auto& stats = manager.prefix_cache_stats();
  EXPECT_EQ(stats.queried_tokens, 17 + 18);
  EXPECT_EQ(stats.hit_tokens, 12);
  EXPECT_DOUBLE_EQ(stats.hit_ratio(), 12.0 / 35.0);
}

TEST(BlockManager, ADifferentTokenStopsSharingFromItsBlockOn) {
  BlockManager manager(32, 4);
  const auto prompt = iota_tokens(1, 14);
  const auto first = allocate(manager, prompt);
  auto changed = prompt;
  changed[5] = 999;  // in the second block; the third block's own tokens stay equal
  const auto second = allocate(manager, changed);
  EXPECT_EQ(second.cached_tokens, 4);
  EXPECT_EQ(second.table.blocks[0], first.table.blocks[0]);
  EXPECT_NE(second.table.blocks[1], first.table.blocks[1]);
  EXPECT_NE(second.table.blocks[2], first.table.blocks[2]);  // same tokens, different prefix
  EXPECT_EQ(manager.ref_count(first.table.blocks[2]), 1);
}

TEST(BlockManager, PartialBlocksAndTheLastTokenAreNeverShared) {
  BlockManager manager(32, 4);
  const auto six = iota_tokens(1, 6);
  const auto a = allocate(manager, six);
  const auto b = allocate(manager, six);
  EXPECT_EQ(b.cached_tokens, 4);
  EXPECT_NE(a.table.blocks[1], b.table.blocks[1]);

  // A prompt of whole blocks, all cached: the last block is computed again, so
  // the last token has logits, and its duplicate is not cached a second time.
  const auto eight = iota_tokens(20, 8);
  const auto c = allocate(manager, eight);
  const auto d = allocate(manager, eight);
  EXPECT_EQ(c.cached_tokens, 0);
  EXPECT_EQ(d.cached_tokens, 4);
  EXPECT_NE(c.table.blocks[1], d.table.blocks[1]);
  EXPECT_FALSE(manager.cached_tokens(c.table.blocks[1]).empty());
  EXPECT_TRUE(manager.cached_tokens(d.table.blocks[1]).empty());

  BlockTable one_token;
  EXPECT_EQ(manager.reuse_cached_prefix(one_token, iota_tokens(1, 1)), 0);
  EXPECT_TRUE(one_token.blocks.empty());
}

TEST(BlockManager, BlocksFilledByDecodingAreCachedForLaterPrompts) {
  BlockManager manager(16, 4);
  auto sequence = allocate(manager, {1, 2, 3}).table;
  append_ok(manager, sequence, {4});
  EXPECT_EQ(std::vector<TokenId>(manager.cached_tokens(sequence.blocks[0]).begin(),
                                 manager.cached_tokens(sequence.blocks[0]).end()),
            (std::vector<TokenId>{1, 2, 3, 4}));
  append_ok(manager, sequence, {5, 6, 7, 8});
  const auto filled = sequence.blocks;
  manager.free(sequence);

  const auto later = allocate(manager, iota_tokens(1, 9));
  EXPECT_EQ(later.cached_tokens, 8);
  EXPECT_EQ(std::vector<BlockId>(later.table.blocks.begin(), later.table.blocks.begin() + 2), filled);
  EXPECT_EQ(manager.num_evictable_blocks(), 0);  // reused blocks left the evictable set
}

TEST(BlockManager, EvictsTheLeastRecentlyUsedCachedBlockFirst) {
  BlockManager manager(4, 2);
  const std::vector<TokenId> a = {10, 11, 99}, b = {20, 21, 99}, c = {30, 31, 99};
  std::map<std::string, BlockId> cached_block;
  for (const auto& [name, prompt] : {std::pair{"a", a}, std::pair{"b", b}, std::pair{"c", c}}) {
    auto sequence = allocate(manager, prompt);
    cached_block[name] = sequence.table.blocks[0];
    manager.free(sequence.table);
  }
  EXPECT_EQ(manager.num_evictable_blocks(), 3);
  // Using a again makes b the least recently used.
  auto again = allocate(manager, a);
  EXPECT_EQ(again.cached_tokens, 2);
  EXPECT_EQ(manager.state(cached_block["a"]), BlockState::Referenced);
  manager.free(again.table);

  auto big = allocate(manager, iota_tokens(40, 5));  // 3 blocks: the free one, then b and c evicted
  EXPECT_EQ(std::set<BlockId>(big.table.blocks.begin() + 1, big.table.blocks.end()),
            (std::set<BlockId>{cached_block["b"], cached_block["c"]}));
  EXPECT_EQ(manager.state(cached_block["a"]), BlockState::Evictable);
  manager.free(big.table);

  // An evicted block's hash no longer hits; the survivor's still does.
  EXPECT_EQ(allocate(manager, a).cached_tokens, 2);
  EXPECT_EQ(allocate(manager, b).cached_tokens, 0);
}

TEST(BlockManager, FreeingEvictsASequencesTailBeforeItsHead) {
  BlockManager manager(3, 2);
  const auto prompt = iota_tokens(1, 5);
  auto sequence = allocate(manager, prompt);
  const BlockId head = sequence.table.blocks[0];
  manager.free(sequence.table);
  auto other = allocate(manager, {50, 51, 52});  // the free block, then one eviction
  EXPECT_EQ(manager.state(head), BlockState::Evictable);
  manager.free(other.table);
  EXPECT_EQ(allocate(manager, prompt).cached_tokens, 2);
}

TEST(BlockManager, RunningOutOfBlocksChangesNothing) {
  BlockManager manager(3, 4);
  auto parent = allocate(manager, iota_tokens(1, 10)).table;  // every block
  BlockTable child = manager.fork(parent);
  const auto before = snapshot(manager);
  const BlockTable parent_before = parent;

  EXPECT_FALSE(manager.can_allocate(std::vector<TokenId>{7, 8}));
  BlockTable newcomer;
  EXPECT_FALSE(manager.allocate_prompt(newcomer, std::vector<TokenId>{7, 8}));
  EXPECT_EQ(newcomer, BlockTable{});
  // Writing into the shared last block needs a copy, and there is no block for it.
  EXPECT_FALSE(manager.can_append(parent, 1));
  EXPECT_FALSE(manager.append(parent, std::vector<TokenId>{11}));
  EXPECT_EQ(parent, parent_before);
  EXPECT_EQ(snapshot(manager), before);

  manager.free(child);
  const auto write = append_ok(manager, parent, {11});
  EXPECT_FALSE(write.copy);
  EXPECT_FALSE(manager.can_append(parent, 2));  // 12 tokens fill the pool exactly
  EXPECT_TRUE(manager.can_append(parent, 1));
}

TEST(BlockManager, CacheHitsCountTowardsWhatFits) {
  {
    // Hits on blocks in use cost nothing: two blocks are needed, one is free.
    BlockManager manager(4, 2);
    const auto running = allocate(manager, {1, 2, 3, 4, 5});
    const std::vector<TokenId> sharing = {1, 2, 3, 4, 9};
    EXPECT_EQ(manager.num_free_blocks(), 1);
    EXPECT_TRUE(manager.can_allocate(sharing));
    EXPECT_EQ(allocate(manager, sharing).cached_tokens, 4);
  }
  {
    // A hit on an evictable block takes it out of what the rest can use.
    BlockManager manager(3, 2);
    auto gone = allocate(manager, {1, 2, 3, 4, 5});
    manager.free(gone.table);
    const auto holder = allocate(manager, {7, 8, 9});  // evicts {3, 4}; {1, 2} stays evictable
    const std::vector<TokenId> prompt = {1, 2, 6};
    EXPECT_EQ(manager.num_free_blocks(), 1);
    EXPECT_FALSE(manager.can_allocate(prompt));
    const auto before = snapshot(manager);
    BlockTable table;
    EXPECT_FALSE(manager.allocate_prompt(table, prompt));
    EXPECT_EQ(snapshot(manager), before);
    EXPECT_EQ(table, BlockTable{});
  }
}

TEST(BlockManager, ChunkedPrefillEqualsOneShotAllocation) {
  const auto system = iota_tokens(500, 10);
  const auto prompt = concat(std::vector<TokenId>(system.begin(), system.begin() + 8), iota_tokens(7, 11));
  BlockManager one_shot(16, 4), chunked(16, 4);
  for (BlockManager* manager : {&one_shot, &chunked}) {
    auto warm = allocate(*manager, system);
    manager->free(warm.table);
  }

  BlockTable whole;
  const auto allocation = one_shot.allocate_prompt(whole, prompt);
  ASSERT_TRUE(allocation);
  EXPECT_EQ(allocation->cached_tokens, 8);

  BlockTable grown;
  const std::int64_t cached = chunked.reuse_cached_prefix(grown, prompt);
  EXPECT_EQ(cached, 8);
  std::vector<Slot> slots;
  std::size_t next = static_cast<std::size_t>(cached);
  for (const std::size_t chunk : {3u, 1u, 5u, 2u}) {
    ASSERT_TRUE(chunked.can_append(grown, static_cast<std::int64_t>(chunk)));
    const auto appended = append_ok(chunked, grown, {prompt.begin() + next, prompt.begin() + next + chunk});
    EXPECT_FALSE(appended.copy);
    slots.insert(slots.end(), appended.slots.begin(), appended.slots.end());
    next += chunk;
  }
  ASSERT_EQ(next, prompt.size());

  EXPECT_EQ(slots, allocation->slots);
  EXPECT_EQ(grown.blocks, whole.blocks);
  EXPECT_EQ(grown.num_tokens, whole.num_tokens);
  EXPECT_EQ(grown.open_block_tokens, whole.open_block_tokens);
  EXPECT_EQ(snapshot(chunked), snapshot(one_shot));
  // The blocks the chunks filled were hashed the same way as the whole prompt's.
  const auto longer = concat(prompt, {1, 2});
  EXPECT_EQ(allocate(chunked, longer).cached_tokens, 16);
  EXPECT_EQ(allocate(one_shot, longer).cached_tokens, 16);
}

TEST(BlockManager, UnwrittenBlocksAreNotCached) {
  BlockManager manager(8, 4);
  const auto running = allocate(manager, iota_tokens(1, 5));  // {1, 2, 3, 4} written by an earlier step
  BlockTable failed;
  ASSERT_TRUE(manager.allocate_prompt(failed, iota_tokens(1, 9)));  // shares it, fills {5, 6, 7, 8}
  manager.free_unwritten(failed);  // its step never ran
  EXPECT_EQ(manager.num_evictable_blocks(), 0);
  EXPECT_EQ(manager.num_used_blocks(), 2);
  // The shared block, still held and written, hits; the unwritten one does not.
  EXPECT_EQ(allocate(manager, iota_tokens(1, 10)).cached_tokens, 4);
}

TEST(BlockManager, RejectsAPromptIntoAUsedTable) {
  BlockManager manager(8, 4);
  auto sequence = allocate(manager, {1, 2, 3});
  testing::expect_error([&] { manager.reuse_cached_prefix(sequence.table, std::vector<TokenId>{1}); },
                        {"empty block table", "3 tokens"});
  testing::expect_error([&] { manager.state(8); }, {"block 8 is out of range"});
}

TEST(BlockManager, BlockHashIsSipHash24) {
  // The reference vectors of the SipHash paper: key 00..0f, message 00, 01, ...
  const std::uint64_t k0 = 0x0706050403020100ULL, k1 = 0x0f0e0d0c0b0a0908ULL;
  std::vector<std::uint8_t> message(15);
  std::iota(message.begin(), message.end(), std::uint8_t{0});
  EXPECT_EQ(detail::siphash24(k0, k1, {}), 0x726fdb47dd0e0e31ULL);
  EXPECT_EQ(detail::siphash24(k0, k1, std::span(message).first(8)), 0x93f5f5799a932462ULL);
  EXPECT_EQ(detail::siphash24(k0, k1, message), 0xa129ca6149be45e5ULL);
}

// --- Randomized operations against a shadow model ---

// What the engine would hold: which token's K/V each slot has, written only
// through the slots and copies the manager hands out.
class KvShadow {
 public:
  KvShadow(int num_blocks, int block_size)
      : block_size_(block_size), slots_(static_cast<std::size_t>(num_blocks * block_size), -1) {}

  void write(const std::optional<BlockCopy>& copy, const std::vector<Slot>& slots, std::span<const TokenId> tokens) {
    if (copy) {
      for (int i = 0; i < copy->tokens; ++i) at(copy->dst, i) = at(copy->src, i);
    }
    ASSERT_EQ(slots.size(), tokens.size());
    for (std::size_t i = 0; i < slots.size(); ++i) at(slots[i].block, slots[i].offset) = tokens[i];
  }
  TokenId& at(BlockId block, int offset) {
    return slots_[static_cast<std::size_t>(block * block_size_ + offset)];
  }

 private:
  int block_size_;
  std::vector<TokenId> slots_;
};

struct Sequence {
  BlockTable table;
  std::vector<TokenId> tokens;  // what the sequence holds, position by position
};

class RandomRun {
 public:
  static constexpr int kBlocks = 32, kBlockSize = 4, kMaxSequences = 12;

  explicit RandomRun(unsigned seed) : random_(seed) {
    // A few shared "system prompts"; the rest is drawn from 3 tokens, so full blocks repeat.
    for (int i = 0; i < 3; ++i) systems_.push_back(draw_tokens(12));
  }

  void step() {
    const int op = pick(100);
    if (op < 30 && sequences_.size() < kMaxSequences) return start(pick(2) == 0);
    if (sequences_.empty()) return;
    Sequence& sequence = sequences_[static_cast<std::size_t>(pick(static_cast<int>(sequences_.size())))];
    if (op < 42 && sequences_.size() < kMaxSequences) {
      sequences_.push_back({manager_.fork(sequence.table), sequence.tokens});
    } else if (op < 80) {
      grow(sequence, draw_tokens(1 + pick(3)));
    } else {
      if (pick(10) == 0) {
        manager_.free_unwritten(sequence.table);
      } else {
        manager_.free(sequence.table);
      }
      EXPECT_EQ(sequence.table, BlockTable{});
      std::swap(sequence, sequences_.back());
      sequences_.pop_back();
    }
  }

  // Every block is in exactly one state, counted as the manager counts it; each
  // reference count is the number of live tables holding the block; every table
  // has ceil(tokens / block size) blocks whose slots hold its tokens; every cached
  // block holds the tokens its hash stands for.
  void check() {
    std::map<BlockId, std::int32_t> holders;
    for (const Sequence& sequence : sequences_) {
      const std::set<BlockId> distinct(sequence.table.blocks.begin(), sequence.table.blocks.end());
      ASSERT_EQ(distinct.size(), sequence.table.blocks.size());
      for (const BlockId id : sequence.table.blocks) ++holders[id];
    }
    std::map<BlockState, std::int32_t> in_state;
    for (BlockId id = 0; id < kBlocks; ++id) {
      const BlockState state = manager_.state(id);
      ++in_state[state];
      ASSERT_EQ(manager_.ref_count(id), holders[id]) << "block " << id;
      ASSERT_EQ(state == BlockState::Referenced, holders[id] > 0) << "block " << id;
      const auto cached = manager_.cached_tokens(id);
      // Only an evictable block lives for its cached tokens; a free one has none.
      if (state != BlockState::Referenced) {
        ASSERT_EQ(cached.empty(), state == BlockState::Free) << "block " << id;
      }
      for (int i = 0; i < static_cast<int>(cached.size()); ++i) {
        ASSERT_EQ(kv_.at(id, i), cached[static_cast<std::size_t>(i)]) << "block " << id << " slot " << i;
      }
    }
    ASSERT_EQ(manager_.num_evictable_blocks(), in_state[BlockState::Evictable]);
    ASSERT_EQ(manager_.num_free_blocks(), in_state[BlockState::Free] + in_state[BlockState::Evictable]);
    ASSERT_EQ(manager_.num_used_blocks(), in_state[BlockState::Referenced]);
    ASSERT_EQ(manager_.num_free_blocks() + manager_.num_used_blocks(), kBlocks);

    for (const Sequence& sequence : sequences_) {
      const auto n = static_cast<std::int64_t>(sequence.tokens.size());
      ASSERT_EQ(sequence.table.num_tokens, n);
      ASSERT_EQ(static_cast<std::int64_t>(sequence.table.blocks.size()), (n + kBlockSize - 1) / kBlockSize);
      for (std::int64_t p = 0; p < n; ++p) {
        const BlockId id = sequence.table.blocks[static_cast<std::size_t>(p / kBlockSize)];
        ASSERT_EQ(kv_.at(id, static_cast<int>(p % kBlockSize)), sequence.tokens[static_cast<std::size_t>(p)])
            << "position " << p;
      }
    }
  }

  void expect_every_path_taken() const {
    EXPECT_GT(manager_.prefix_cache_stats().hit_tokens, 0);
    EXPECT_GT(copies_, 0);
    EXPECT_GT(refusals_, 0);
    EXPECT_GT(evictions_, 0);
  }

 private:
  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(random_); }

  std::vector<TokenId> draw_tokens(int count) {
    std::vector<TokenId> tokens;
    for (int i = 0; i < count; ++i) tokens.push_back(pick(3));
    return tokens;
  }

  std::vector<TokenId> draw_prompt() {
    std::vector<TokenId> prompt;
    if (pick(2) == 0) {
      const auto& system = systems_[static_cast<std::size_t>(pick(static_cast<int>(systems_.size())))];
      prompt.assign(system.begin(), system.begin() + pick(static_cast<int>(system.size()) + 1));
    }
    return concat(prompt, draw_tokens(1 + pick(10)));
  }

  void start(bool one_shot) {
    const auto prompt = draw_prompt();
    Sequence sequence;
    if (one_shot) {
      const bool fits = manager_.can_allocate(prompt);
      const auto before = snapshot(manager_);
      const auto allocation = manager_.allocate_prompt(sequence.table, prompt);
      ASSERT_EQ(allocation.has_value(), fits);
      if (!allocation) {
        ++refusals_;
        ASSERT_EQ(snapshot(manager_), before);
        ASSERT_EQ(sequence.table, BlockTable{});
        return;
      }
      expect_valid_hit(allocation->cached_tokens, prompt);
      ASSERT_EQ(allocation->slots,
                expected_slots(sequence.table, allocation->cached_tokens,
                               static_cast<std::int64_t>(prompt.size()) - allocation->cached_tokens, kBlockSize));
      note_evictions(before);
      ASSERT_NO_FATAL_FAILURE(kv_.write(std::nullopt, allocation->slots,
                                        std::span(prompt).subspan(static_cast<std::size_t>(allocation->cached_tokens))));
      sequence.tokens = prompt;
      sequences_.push_back(std::move(sequence));
      return;
    }
    // Chunked prefill: the cached prefix, then chunks until the prompt is in or
    // blocks run out (kept as it is, like a prefill waiting for room).
    const std::int64_t cached = manager_.reuse_cached_prefix(sequence.table, prompt);
    expect_valid_hit(cached, prompt);
    sequence.tokens.assign(prompt.begin(), prompt.begin() + cached);
    for (std::size_t next = static_cast<std::size_t>(cached); next < prompt.size();) {
      const std::size_t chunk = std::min<std::size_t>(1 + static_cast<std::size_t>(pick(6)), prompt.size() - next);
      if (!grow(sequence, {prompt.begin() + next, prompt.begin() + next + chunk})) break;
      next += chunk;
    }
    sequences_.push_back(std::move(sequence));
  }

  void expect_valid_hit(std::int64_t cached, const std::vector<TokenId>& prompt) {
    EXPECT_EQ(cached % kBlockSize, 0);
    EXPECT_LT(cached, std::max<std::int64_t>(1, static_cast<std::int64_t>(prompt.size())));
  }

  // Appends `tokens` as the engine would: copy, then write. False when refused.
  bool grow(Sequence& sequence, const std::vector<TokenId>& tokens) {
    const bool fits = manager_.can_append(sequence.table, static_cast<std::int64_t>(tokens.size()));
    const auto before = snapshot(manager_);
    const BlockTable table_before = sequence.table;
    const auto appended = manager_.append(sequence.table, tokens);
    EXPECT_EQ(appended.has_value(), fits);
    if (!appended) {
      ++refusals_;
      EXPECT_EQ(snapshot(manager_), before);
      EXPECT_EQ(sequence.table, table_before);
      return false;
    }
    const std::int64_t first = table_before.num_tokens;
    if (appended->copy) {
      ++copies_;
      EXPECT_EQ(appended->copy->src, table_before.blocks.back());
      EXPECT_EQ(appended->copy->dst, sequence.table.blocks[static_cast<std::size_t>(first / kBlockSize)]);
      EXPECT_EQ(appended->copy->tokens, first % kBlockSize);
    }
    EXPECT_EQ(appended->slots,
              expected_slots(sequence.table, first, static_cast<std::int64_t>(tokens.size()), kBlockSize));
    note_evictions(before);
    kv_.write(appended->copy, appended->slots, tokens);
    sequence.tokens.insert(sequence.tokens.end(), tokens.begin(), tokens.end());
    return true;
  }

  // A block that was evictable and now holds something new was evicted.
  void note_evictions(const Snapshot& before) {
    for (BlockId id = 0; id < kBlocks; ++id) {
      if (before.states[static_cast<std::size_t>(id)] == BlockState::Evictable &&
          manager_.state(id) == BlockState::Referenced &&
          before.cached[static_cast<std::size_t>(id)] != snapshot_cached(id)) {
        ++evictions_;
      }
    }
  }
  std::vector<TokenId> snapshot_cached(BlockId id) const {
    const auto tokens = manager_.cached_tokens(id);
    return {tokens.begin(), tokens.end()};
  }

  std::mt19937 random_;
  BlockManager manager_{kBlocks, kBlockSize};
  KvShadow kv_{kBlocks, kBlockSize};
  std::vector<std::vector<TokenId>> systems_;
  std::vector<Sequence> sequences_;
  int copies_ = 0, refusals_ = 0, evictions_ = 0;
};

TEST(BlockManager, RandomOperationsKeepEveryInvariant) {
  for (const unsigned seed : {1u, 2u, 3u}) {
    RandomRun run(seed);
    for (int step = 0; step < 4000; ++step) {
      SCOPED_TRACE(::testing::Message() << "seed " << seed << " step " << step);
      ASSERT_NO_FATAL_FAILURE(run.step());
      ASSERT_NO_FATAL_FAILURE(run.check());
      if (::testing::Test::HasFailure()) return;
    }
    run.expect_every_path_taken();
  }
}

}  // namespace
}  // namespace nibble::scheduler
