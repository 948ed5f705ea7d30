// The work threshold of the CPU launchers (cpu_loops.h): one value for the whole extension.
#include "common/cpu_loops.h"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace svfnet {

namespace {

int64_t threshold_from_environment() {
  const char* text = std::getenv("SVFNET_MIN_PARALLEL_WORK");
  if (text == nullptr || *text == '\0') return kDefaultMinParallelWork;
  bool digits = true;
  for (const char* c = text; *c != '\0'; ++c) digits = digits && *c >= '0' && *c <= '9';
  errno = 0;
  const long long value = digits ? std::strtoll(text, nullptr, 10) : -1;
  if (!digits || errno != 0)
    throw std::invalid_argument(std::string("SVFNET_MIN_PARALLEL_WORK must be a non-negative integer "
                                            "(voxel-operations below which a CPU launcher runs on one "
                                            "thread), got '") +
                                text + "'");
  return static_cast<int64_t>(value);
}

std::atomic<int64_t>& threshold() {
  static std::atomic<int64_t> value{threshold_from_environment()};
  return value;
}

}  // namespace

int64_t min_parallel_work() { return threshold().load(std::memory_order_relaxed); }

int64_t set_min_parallel_work(int64_t work) {
  if (work < 0) throw std::invalid_argument("'work' must be >= 0, got " + std::to_string(work));
  return threshold().exchange(work, std::memory_order_relaxed);
}

}  // namespace svfnet
