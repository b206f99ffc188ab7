// Zeroed memory for the dense gradients the extensions make (weight-sized, R x D floats: autograd's
// through embag.nn, and embedding_bag_backward's without a grad_weight): pages mapped fresh from
// the kernel, which are zero already, advised to be huge.
//
// Why: a dense gradient is mostly zeros, and zeroing it cost more than computing it. torch.zeros
// of R = 1M, D = 128 (512 MB), then 2,048 or 81,920 rows added, took 392-403 ms on a Zen 3 guest,
// nearly all of it faulting in 131,072 pages of 4 KiB while writing zeros; here the kernel zeroes
// each 2 MiB page on its first touch (256 faults), 56-89 ms, and an optimizer's read of the whole
// gradient afterwards cost the same as torch.zeros' (58-67 ms). Without the huge-page advice
// (or where the kernel declines it), the untouched pages are never written at all, but reading
// them later faults once per 4 KiB page (242 ms for the same read): so the advice.
//
// Below lazily_zeroed_from bytes the caller zeroes memory of its own: a mapping per call is not
// worth it for a gradient that fits in the caches.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>

namespace embag_python {

inline constexpr std::size_t lazily_zeroed_from = std::size_t{4} << 20;  // bytes
inline constexpr std::size_t huge_page = std::size_t{2} << 20;

// A mapping of fresh zero pages holding at least `bytes`, 2 MiB aligned (a huge page's boundary);
// its size is zeroed_mapping_bytes(bytes). Throws std::bad_alloc when the kernel refuses.
inline std::size_t zeroed_mapping_bytes(std::size_t bytes) {
  return (bytes + huge_page - 1) / huge_page * huge_page;
}

inline void* map_zeroed(std::size_t bytes) {
  const std::size_t size = zeroed_mapping_bytes(bytes);
  // One huge page more than asked, then the ends trimmed: mmap aligns to 4 KiB only.
  void* mapped = ::mmap(nullptr, size + huge_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<std::uintptr_t>(mapped);
  const std::uintptr_t aligned = (start + huge_page - 1) / huge_page * huge_page;
  if (aligned != start) ::munmap(mapped, aligned - start);
  if (const std::uintptr_t tail = start + size + huge_page - (aligned + size); tail != 0)
    ::munmap(reinterpret_cast<void*>(aligned + size), tail);
  ::madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // advice only: fine if declined
  return reinterpret_cast<void*>(aligned);
}

inline void unmap_zeroed(void* p, std::size_t bytes) noexcept { ::munmap(p, zeroed_mapping_bytes(bytes)); }

}  // namespace embag_python
