#pragma once
// Memory for large, randomly walked buffers (the paged KV cache): backed by 2 MiB
// transparent huge pages where the kernel allows them. A decode step touches a few
// rows in each of thousands of 4 KiB pages, far more than the TLB holds, so with
// small pages nearly every row costs a page walk that prefetching cannot hide.
#include <cstddef>
#include <new>

namespace nibble {

// Zeroed. Sizes of 2 MiB and more are 2 MiB aligned and advised as huge pages.
void* allocate_large(std::size_t bytes);
void free_large(void* p) noexcept;

// A std::allocator for std::vector over allocate_large.
template <typename T>
struct LargeAllocator {
  using value_type = T;
  LargeAllocator() = default;
  template <typename U>
  LargeAllocator(const LargeAllocator<U>&) noexcept {}  // NOLINT: converting, as allocators must
  T* allocate(std::size_t n) { return static_cast<T*>(allocate_large(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) noexcept { free_large(p); }
  template <typename U>
  bool operator==(const LargeAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace nibble
