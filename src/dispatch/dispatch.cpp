#include "dispatch/dispatch.hpp"

#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <string>

#if defined(__AVX__) || defined(__AVX2__) || defined(__AVX512F__)
#error "baseline sources must not be compiled with AVX flags: only the kernel sources made from src/kernels/isa.cpp.in get them"
#endif

// Validation's scans for the reference ISA: the kernels' loops, compiled with the baseline flags.
#define EMBAG_ISA_NS baseline
#include "kernels/scan.hpp"
#undef EMBAG_ISA_NS

namespace embag {
namespace {

#if defined(__x86_64__)
// F16C (the fp16 conversions compressed tables use), from CPUID: clang 14's __builtin_cpu_supports
// does not know "f16c". Read once: CPUID traps to the hypervisor in a VM (microseconds), and a call
// naming its ISA asks this every time.
[[maybe_unused]] bool cpu_has_f16c() noexcept {
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  }();
  return has;
}
#endif

using kernels_fn = const detail::kernel_table& (*)() noexcept;

// A row of the ISA registry: an ISA, whether this CPU runs the instructions its kernel source is
// compiled with, and its kernel table (null for the reference).
struct isa_entry {
  isa which;
  bool (*cpu_runs)() noexcept;
  kernels_fn kernels;
};

}  // namespace
}  // namespace embag

// The registry's rows: the reference, then one per ISA this build compiled, made by src/meson.build
// from its `isas` (adding an ISA: its line in embag/enums.h, its row there, and its widenings of
// compressed rows in src/kernels/rows.hpp, which fail to compile until written).
#include "isa_registry.hpp"

namespace embag {
namespace {

constexpr bool registry_has_each_isa_once() {
  for (std::size_t i = 0; i < std::size(registry); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (registry[i].which == registry[j].which) return false;
  return registry[0].which == isa::reference;
}
static_assert(registry_has_each_isa_once(), "one registry row per ISA, the reference first");

const isa_entry* entry_of(isa which) noexcept {
  for (const isa_entry& e : registry)
    if (e.which == which) return &e;
  return nullptr;
}

// Whether this build compiled the ISA (the reference always).
bool built(isa which) noexcept { return entry_of(which) != nullptr; }
bool cpu_runs(isa which) noexcept { return entry_of(which)->cpu_runs(); }

std::string available_list() {
  std::string names;
  for (isa which : available_isas()) names += (names.empty() ? "" : ", ") + std::string(to_string(which));
  return names;
}

void require_available(isa which, const char* who) {
  if (built(which) && cpu_runs(which)) return;
  throw error(errc::unsupported_isa, std::string(who) + " asks for ISA " + std::string(to_string(which)) +
                                         ", which this " + (built(which) ? "CPU" : "build") +
                                         " lacks; available: " + available_list());
}

isa best_available() noexcept {
  isa best = isa::reference;
  for (isa which : all_isas)
    if (built(which) && cpu_runs(which)) best = which;
  return best;
}

// The process-wide choice, read from EMBAG_ISA on first use.
std::atomic<isa>& active() {
  static std::atomic<isa> choice = [] {
    const char* env = std::getenv("EMBAG_ISA");
    if (env == nullptr || *env == '\0') return best_available();
    const std::optional<isa> named = isa_from_string(env);
    if (!named)
      throw error(errc::unsupported_isa, std::string("EMBAG_ISA = '") + env +
                                             "' is not an ISA name; available: " + available_list());
    require_available(*named, "EMBAG_ISA");
    return *named;
  }();
  return choice;
}

}  // namespace

std::vector<isa> available_isas() {
  std::vector<isa> list;
  for (isa which : all_isas)
    if (built(which) && cpu_runs(which)) list.push_back(which);
  return list;
}

isa active_isa() { return active().load(std::memory_order_relaxed); }

void force_isa(isa which) {
  require_available(which, "force_isa");
  active().store(which, std::memory_order_relaxed);
}

namespace {

// sysfs first: glibc's sysconf reports a 320 MiB L3 for a 32 MiB Zen 4 guest.
std::int64_t sysfs_cache_bytes(int level, bool data) noexcept {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(level_file >> l) || !(type_file >> type) || !(size_file >> size)) continue;
    if (l != level || (data && type == "Instruction")) continue;
    std::int64_t bytes = std::atoll(size.c_str());
    if (size.back() == 'K') bytes <<= 10;
    if (size.back() == 'M') bytes <<= 20;
    return bytes;
  }
  return 0;
}

std::int64_t cache_bytes(int level, int sysconf_name) {
  const std::int64_t from_sysfs = sysfs_cache_bytes(level, true);
  if (from_sysfs > 0) return from_sysfs;
  const long v = sysconf(sysconf_name);
  return v > 0 ? v : 0;
}

}  // namespace

cache_sizes caches() noexcept {
  static const cache_sizes sizes = [] {
    cache_sizes c;
    c.l1d = cache_bytes(1, _SC_LEVEL1_DCACHE_SIZE);
    c.l2 = cache_bytes(2, _SC_LEVEL2_CACHE_SIZE);
    c.llc = cache_bytes(3, _SC_LEVEL3_CACHE_SIZE);
    if (c.llc == 0) c.llc = c.l2;
    return c;
  }();
  return sizes;
}

namespace detail {

isa resolve_isa(std::optional<isa> requested) {
  if (!requested) return active_isa();
  require_available(*requested, "options.execution.isa");
  return *requested;
}

const kernel_table& kernels_of(isa which) noexcept {
  const isa_entry* e = entry_of(which);
  if (e == nullptr || e->kernels == nullptr) std::abort();  // resolve_isa admits only built ISAs; the reference never gets here
  return e->kernels();
}

index_extremes scan_indices(const void* indices, index_type kind, std::int64_t n) noexcept {
  const isa which = active_isa();
  if (which != isa::reference) return kernels_of(which).scan_indices(indices, kind, n);
  return baseline::scan_indices<void>(indices, kind, n);
}

offsets_order scan_offsets(const void* offsets, index_type kind, std::int64_t n, std::int64_t nnz) noexcept {
  const isa which = active_isa();
  if (which != isa::reference) return kernels_of(which).scan_offsets(offsets, kind, n, nnz);
  return baseline::scan_offsets<void>(offsets, kind, n, nnz);
}

}  // namespace detail
}  // namespace embag
