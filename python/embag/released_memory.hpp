// Memory of outputs that Python released, kept for the next calls' outputs (embag._embag's forward
// outputs, the arrays embag/__init__.py asks for, the sparse gradients).
//
// Why: fresh memory costs more than the kernels. An L = 1 forward (R = 1M, D = 128, B = 2,048) takes
// 0.09 ms; in a process where the allocator mapped its 1 MB output anew each call (glibc does
// whenever the block sits above its trim threshold, which depends on what the process did
// before), 252 page faults per call took it to 0.35 ms, and the same program in another heap state
// ran at 0.10. A sparse gradient of the default workload (40 MB of values) spent 20 of its 26 ms
// faulting. Memory handed back here is reused already mapped, and the block most recently
// released is handed out first: the one most likely still in cache.
//
// Everything kept counts against one limit (embag.set_buffer_cache_limit); a release that would
// pass it drops the oldest items of its pool first. embag._embag takes and releases with the GIL
// held (Python runs capsule destructors with it, and every call takes its outputs before releasing
// it), so no lock there; embag._torch_nn's tensors are freed on any thread, so it locks. Each
// extension module has its own pools and count (the limit is set in both).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <deque>
#include <new>

namespace embag_python {

struct kept_bytes {
  std::size_t limit = std::size_t{256} << 20;  // bytes
  std::size_t held = 0;
};

inline kept_bytes& buffer_cache() {
  static kept_bytes cache;
  return cache;
}

// A block of output memory, 64-byte aligned as the library's own buffers (the kernels store
// whole cache lines).
class output_block {
 public:
  explicit output_block(std::size_t bytes)  // whole pages, at least one
      : capacity_(bytes == 0 ? 4096 : (bytes + 4095) / 4096 * 4096), data_(std::aligned_alloc(64, capacity_)) {
    if (data_ == nullptr) throw std::bad_alloc();
  }
  output_block(const output_block&) = delete;
  output_block& operator=(const output_block&) = delete;
  ~output_block() { std::free(data_); }

  void* data() const { return data_; }
  std::size_t bytes() const { return capacity_; }
  // Serves a request of `bytes` without holding more than twice what it needs.
  bool suits(std::size_t bytes) const { return capacity_ >= bytes && capacity_ <= 2 * bytes + 4096; }

 private:
  std::size_t capacity_;
  void* data_;
};

// Items of one kind that Python released (T has bytes(): what it holds).
template <class T>
class released_pool {
 public:
  // The most recently released item for which suits(item) holds, or nullptr.
  template <class Suits>
  T* take(Suits suits) {
    for (auto it = kept_.rbegin(); it != kept_.rend(); ++it) {
      if (!suits(**it)) continue;
      T* item = *it;
      kept_.erase(std::next(it).base());
      buffer_cache().held -= item->bytes();
      return item;
    }
    return nullptr;
  }

  void release(T* item) {
    kept_.push_back(item);
    buffer_cache().held += item->bytes();
    trim();
  }

  // Drops the oldest items while the cache holds more than its limit.
  void trim() {
    kept_bytes& cache = buffer_cache();
    while (cache.held > cache.limit && !kept_.empty()) {
      T* oldest = kept_.front();
      kept_.pop_front();
      cache.held -= oldest->bytes();
      delete oldest;
    }
  }

 private:
  std::deque<T*> kept_;  // oldest first
};

}  // namespace embag_python
