// percpu bench - every facility side by side with its peers.
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <regex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "commands.hpp"
#include "harness.hpp"
#include "percpu/cpu.hpp"

namespace percpu_tool {

namespace {

unsigned parse_count(const std::string& text, const char* what) {
  char* end = nullptr;
  errno = 0;
  unsigned long value = std::strtoul(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || value == 0 || value > 4096) {
    throw std::invalid_argument(std::string(what) + " '" + text +
                                "' is not a number from 1 to 4096");
  }
  return static_cast<unsigned>(value);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
      continue;
    }
    out += c;
  }
  return out;
}

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&t, &utc);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

void write_json(const std::string& path, const std::vector<percpu_bench::result>& results,
                bool quick) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  const auto& b = percpu::backend();
  utsname un{};
  uname(&un);
  out << "{\n  \"machine\": {"
      << "\"kernel\": \"" << json_escape(un.release) << "\", "
      << "\"arch\": \"" << json_escape(un.machine) << "\", "
      << "\"online_cpus\": " << percpu::online_cpus().size() << ", "
      << "\"backend\": \"" << (b.kind == percpu::backend_kind::rseq ? "rseq" : "portable") << "\", "
      << "\"slots\": " << b.slots << ", "
      << "\"date\": \"" << now_utc() << "\", "
      << "\"quick\": " << (quick ? "true" : "false") << "},\n  \"results\": [";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    char line[512];
    std::snprintf(
        line, sizeof line,
        "%s\n    {\"name\": \"%s\", \"impl\": \"%s\", \"threads\": %u, %s\"ns_per_op\": %.4f, "
        "\"min_ns\": %.4f, \"max_ns\": %.4f, \"repetitions\": %u%s}",
        i == 0 ? "" : ",", json_escape(r.name).c_str(), json_escape(r.impl).c_str(), r.threads,
        r.size != 0 ? ("\"size\": " + std::to_string(r.size) + ", ").c_str() : "", r.median_ns,
        r.min_ns, r.max_ns, r.repetitions,
        r.note.empty() ? "" : (", \"note\": \"" + json_escape(r.note) + "\"").c_str());
    out << line;
  }
  out << "\n  ]\n}\n";
}

// The baseline of each (name, threads) group: its "percpu" implementation,
// or, where every implementation is percpu's own (counter.read), the first.
using group_key = std::tuple<std::string, unsigned, std::size_t>;
std::map<group_key, const percpu_bench::result*> baselines(
    const std::vector<percpu_bench::result>& results) {
  std::map<group_key, const percpu_bench::result*> base;
  for (const auto& r : results) {
    group_key key{r.name, r.threads, r.size};
    if (base.count(key) == 0 || (r.impl == "percpu" && base[key]->impl != "percpu")) base[key] = &r;
  }
  return base;
}

void print_table(const std::vector<percpu_bench::result>& results) {
  auto base = baselines(results);
  std::string facility;
  std::printf("%-16s %3s  %-16s %10s  %-19s  %s\n", "row", "thr", "impl", "median ns", "min - max",
              "verdict");
  for (const auto& r : results) {
    std::string group = r.name.substr(0, r.name.find('.'));
    if (group != facility) {
      facility = group;
      std::printf("-- %s %s\n", facility.c_str(), std::string(73 - facility.size(), '-').c_str());
    }
    char range[40];
    std::snprintf(range, sizeof range, "%.2f - %.2f", r.min_ns, r.max_ns);
    const percpu_bench::result* b = base[{r.name, r.threads, r.size}];
    char verdict[96] = "baseline";
    if (b != &r && b->median_ns > 0 && r.median_ns > 0) {
      double ratio = r.median_ns / b->median_ns;
      if (b->impl == "percpu") {
        std::snprintf(verdict, sizeof verdict, "percpu %.2fx %s", ratio >= 1 ? ratio : 1 / ratio,
                      ratio >= 1 ? "faster" : "slower");
      } else {
        std::snprintf(verdict, sizeof verdict, "%.2fx the time of %s", ratio, b->impl.c_str());
      }
    }
    std::string label = r.size != 0 ? r.name + " " + std::to_string(r.size) + "B" : r.name;
    std::printf("%-16s %3u  %-16s %10.2f  %-19s  %s%s%s\n", label.c_str(), r.threads,
                r.impl.c_str(), r.median_ns, range, verdict, r.note.empty() ? "" : "; ",
                r.note.c_str());
  }
}

}  // namespace

int bench(const std::vector<std::string>& args) {
  percpu_bench::options opts;
  std::string json_path;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--quick") {
      opts.quick = true;
    } else if (a == "--json") {
      json_path = value();
    } else if (a == "--filter") {
      opts.filter = value();
    } else if (a == "--repetitions") {
      opts.repetitions = parse_count(value(), "--repetitions");
    } else if (a == "--threads") {
      const std::string& list = value();
      std::size_t pos = 0;
      while (pos <= list.size()) {
        std::size_t comma = list.find(',', pos);
        if (comma == std::string::npos) comma = list.size();
        opts.threads.push_back(parse_count(list.substr(pos, comma - pos), "--threads"));
        pos = comma + 1;
      }
    } else {
      throw std::invalid_argument("unknown option '" + a + "' (see percpu --help)");
    }
  }
  const auto& b = percpu::backend();
  std::printf("percpu bench%s: backend %s, %zu online CPUs, %s\n", opts.quick ? " --quick" : "",
              b.kind == percpu::backend_kind::rseq ? "rseq" : "portable",
              percpu::online_cpus().size(), now_utc().c_str());
  std::vector<percpu_bench::missing_peer> missing;
  auto rows = percpu_bench::all_rows(missing);
  std::vector<percpu_bench::result> results;
  try {
    results = percpu_bench::run(rows, opts);
  } catch (const std::regex_error&) {
    throw std::invalid_argument("--filter '" + opts.filter + "' is not a valid regular expression");
  }
  if (results.empty()) {
    std::printf("no row matches --filter '%s'\n", opts.filter.c_str());
    return 1;
  }
  print_table(results);
  if (!missing.empty()) {
    std::printf("\npeers not measured (not installed):\n");
    for (const auto& m : missing) {
      std::printf("  %-16s apt-get install %s\n", m.impl.c_str(), m.package.c_str());
    }
  }
  if (!json_path.empty()) {
    write_json(json_path, results, opts.quick);
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace percpu_tool
