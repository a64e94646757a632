// check_verdicts - the words `percpu bench` puts beside each ratio.
//
// Problem: a verdict is what most readers take from the table, and two of
// them once said the opposite of the figures: percpu_mm_cid's row read
// "percpu 1.32x faster" where mm_cid mode was 1.32x slower, and a ratio of
// 0.71 whose quartiles straddled 1 read "even (0.71x)".  A bench run cannot
// produce every case on demand, so this program builds results by hand and
// checks the text verdict() gives each.
//
// usage: check_verdicts; exit status 0 when every case reads as expected.
#include <cstdio>
#include <string>

#include "report.hpp"

namespace {

percpu_bench::result make(const char* impl, const char* baseline, double ratio, double q1,
                          double q3) {
  percpu_bench::result r;
  r.name = "slot.add";
  r.impl = impl;
  r.threads = 1;
  r.baseline = baseline;
  r.ratio = ratio;
  r.ratio_q1 = q1;
  r.ratio_q3 = q3;
  return r;
}

}  // namespace

int main() {
  struct expectation {
    percpu_bench::result r;
    std::string text;
  };
  const expectation cases[] = {
      // A rival: a peer against percpu's own line.
      {make("rseq_raw", "percpu", 0.80, 0.78, 0.82), "percpu 1.25x slower"},
      {make("atomic_shared", "percpu", 7.50, 7.0, 8.0), "percpu 7.50x faster"},
      {make("thread_local", "percpu", 1.03, 0.90, 1.10), "even (1.03x)"},
      {make("thread_local", "percpu", 0.71, 0.50, 1.20), "undecided (0.71x)"},
      // percpu's own variants against its line: the ratio, never a winner.
      {make("percpu_mm_cid", "percpu", 1.32, 1.30, 1.35), "1.32x the time of percpu"},
      {make("percpu_cpu", "percpu", 1.00, 0.98, 1.02), "even with percpu (1.00x)"},
      {make("percpu_cpu", "percpu", 0.80, 0.60, 1.10), "undecided against percpu (0.80x)"},
      {make("percpu", "", 1, 1, 1), "baseline"},
  };
  int failed = 0;
  for (const auto& c : cases) {
    std::string got = percpu_tool::verdict(c.r);
    if (got != c.text) {
      std::printf("FAIL %s against %s, ratio %.2f [%.2f, %.2f]: \"%s\", expected \"%s\"\n",
                  c.r.impl.c_str(), c.r.baseline.c_str(), c.r.ratio, c.r.ratio_q1, c.r.ratio_q3,
                  got.c_str(), c.text.c_str());
      ++failed;
    }
  }
  std::printf("%d of %zu verdicts as expected\n", static_cast<int>(std::size(cases)) - failed,
              std::size(cases));
  return failed == 0 ? 0 : 1;
}
