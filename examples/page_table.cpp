// page_table - a simulated page table whose entry ("PTE") updates are batched
// per CPU with percpu::batch_queue, the user-space form of the Xen per-CPU
// MMU queues.
//
// Mapper threads remap pages at a high rate: each update is queued on the
// mapper's CPU and applied to the table in batches under the table's lock.
// A walker on any CPU reads an entry with read(): it sees the latest update
// to that page whose enqueue returned before the read, because read() first
// applies the CPUs whose scoreboard says they hold an update for the page.
// Each mapper also checks its own writes: after remapping a page it reads it
// back and must find the frame it just wrote.
#include <percpu/queue.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <span>
#include <thread>
#include <vector>

namespace {

constexpr std::uint64_t pages = 1 << 16;

// One queued MMU operation: map `key` (the virtual page) to `frame`.
struct pte_update {
  std::uint64_t key;
  std::uint64_t frame;
};

}  // namespace

int main() {
  std::vector<std::uint64_t> page_table(pages, 0);  // touched only under the queue's lock
  percpu::batch_queue<pte_update> mmu(
      [&](std::span<const pte_update> ops) {
        for (const pte_update& op : ops) page_table[op.key] = op.frame;
      },
      {.capacity = 128});

  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> updates{0};
  std::atomic<std::uint64_t> wrong{0};
  std::vector<std::thread> mappers;
  for (std::uint64_t m = 0; m < 3; ++m) {
    mappers.emplace_back([&, m] {
      std::uint64_t n = 0;
      while (!done.load(std::memory_order_relaxed)) {
        // Each mapper owns a quarter of the pages, so the last write to a
        // page it checks is its own.
        std::uint64_t page = m * (pages / 4) + (n * 40503) % (pages / 4);
        std::uint64_t frame = (m << 40) | ++n;
        mmu.enqueue({page, frame});
        if (n % 1000 == 0) {
          // Read-your-writes, from whatever CPU this thread is on now.
          if (mmu.read(page, [&] { return page_table[page]; }) != frame) ++wrong;
        }
      }
      updates += n;
    });
  }
  // A walker reads random entries meanwhile; most reads flush nothing.
  std::uint64_t walked = 0;
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  for (std::uint64_t i = 1; std::chrono::steady_clock::now() < end; ++i) {
    std::uint64_t page = (i * 2654435761u) % pages;
    walked += mmu.read(page, [&] { return page_table[page]; }) != 0 ? 1 : 0;
  }
  done = true;
  for (auto& t : mappers) t.join();
  mmu.flush_all();  // the updates still queued on any CPU, idle ones included

  percpu::queue_stats s = mmu.stats();
  std::printf("%llu PTE updates applied in %llu batches; %llu reads, %.1f %% of them flushed\n",
              static_cast<unsigned long long>(s.applied),
              static_cast<unsigned long long>(s.batches), static_cast<unsigned long long>(s.reads),
              s.reads == 0
                  ? 0.0
                  : 100.0 * static_cast<double>(s.reads_flushed) / static_cast<double>(s.reads));
  std::printf("read-your-writes violations: %llu (mapped pages seen by the walker: %llu)\n",
              static_cast<unsigned long long>(wrong.load()),
              static_cast<unsigned long long>(walked));
  return wrong.load() == 0 && s.applied == updates.load() ? 0 : 1;
}
