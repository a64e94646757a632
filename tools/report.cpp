// report.cpp - the machine description, verdicts, the table and the JSON
// form of a bench report, and the comparison of two JSON reports.
#include "report.hpp"

#include <sys/utsname.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <tuple>

#include "json.hpp"
#include "percpu/runtime/cpu.hpp"

namespace percpu_tool {

machine_info describe_machine() {
  machine_info m;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos)
        m.cpu_model = line.substr(line.find_first_not_of(' ', colon + 1));
      break;
    }
  }
  if (m.cpu_model.empty()) m.cpu_model = "unknown";
  utsname un{};
  uname(&un);
  m.kernel = un.release;
  m.arch = un.machine;
  const auto& b = percpu::backend();
  m.backend = b.kind == percpu::backend_kind::rseq ? "rseq" : "portable";
  m.slots = b.slots;
  m.cpus = static_cast<unsigned>(percpu::online_cpus().size());
  return m;
}

std::string facility_of(const std::string& row_name) {
  return row_name.substr(0, row_name.find('.'));
}

bool within_even_band(double ratio) {
  return std::fabs(ratio - 1) <= even_band;
}

int direction(double ratio, double ratio_q1, double ratio_q3) {
  if (within_even_band(ratio)) return 0;
  if (ratio > 1) return ratio_q1 > 1 ? 1 : 0;
  return ratio_q3 < 1 ? -1 : 0;
}

int direction(const percpu_bench::result& r) {
  return direction(r.ratio, r.ratio_q1, r.ratio_q3);
}

namespace {

// What a verdict calls a ratio that decides nothing (direction() == 0):
// "even" inside the even band, "undecided" outside it, where the quartiles
// of the pair-by-pair ratios straddle 1.  `against` gives the form that
// names the other side: "even with" or "undecided against".
const char* undecided_word(double ratio, bool against) {
  if (within_even_band(ratio)) return against ? "even with" : "even";
  return against ? "undecided against" : "undecided";
}

// A peer is an implementation that is not one of percpu's own.
bool is_peer(const std::string& impl) {
  return impl.rfind("percpu", 0) != 0;
}

}  // namespace

bool is_rival(const percpu_bench::result& r) {
  return percpu_bench::is_preferred_baseline(r.baseline) && is_peer(r.impl);
}

std::string verdict(const percpu_bench::result& r) {
  if (r.baseline.empty()) return "baseline";
  char text[96];
  bool rival = is_rival(r);
  if (rival && direction(r) == 0) {
    std::snprintf(text, sizeof text, "%s (%.2fx)", undecided_word(r.ratio, false), r.ratio);
  } else if (rival) {
    std::snprintf(text, sizeof text, "percpu %.2fx %s", r.ratio >= 1 ? r.ratio : 1 / r.ratio,
                  r.ratio >= 1 ? "faster" : "slower");
  } else if (direction(r) == 0 && !is_peer(r.impl)) {
    std::snprintf(text, sizeof text, "%s %s (%.2fx)", undecided_word(r.ratio, true),
                  r.baseline.c_str(), r.ratio);
  } else {
    std::snprintf(text, sizeof text, "%.2fx the time of %s", r.ratio, r.baseline.c_str());
  }
  return text;
}

namespace {

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

std::string quoted(const std::string& s) {
  std::string out(1, '"');
  out += json_escape(s);
  out += '"';
  return out;
}

// A floor is a peer that shows the least the operation can cost (the
// mechanism with nothing of percpu's guarantees, or the work any
// implementation must do), not an alternative a program would use:
// percpu's line compares it apart from the peers.
bool is_floor(const std::string& impl) {
  return impl == "rseq_raw" || impl == "floor";
}

using group_key = std::tuple<std::string, unsigned, std::uint64_t>;

group_key key_of(const percpu_bench::result& r) {
  return {r.name, r.threads, r.size};
}

// For a baseline result: how it fares against the fastest peer of its
// group, and how far above its floor it is.
std::string against_best_peer(const percpu_bench::result& base,
                              const std::vector<percpu_bench::result>& results) {
  const percpu_bench::result* best = nullptr;
  const percpu_bench::result* floor = nullptr;
  for (const auto& r : results) {
    if (key_of(r) != key_of(base) || r.baseline != base.impl || !is_peer(r.impl)) continue;
    if (is_floor(r.impl)) {
      floor = &r;
    } else if (best == nullptr || r.ratio < best->ratio) {
      best = &r;
    }
  }
  if (best == nullptr && floor == nullptr) return "baseline";
  std::string text;
  char part[96];
  if (best != nullptr) {
    if (direction(*best) == 0) {
      std::snprintf(part, sizeof part, "%s best peer %s", undecided_word(best->ratio, true),
                    best->impl.c_str());
    } else {
      std::snprintf(part, sizeof part, "%.2fx %s than best peer %s",
                    best->ratio >= 1 ? best->ratio : 1 / best->ratio,
                    best->ratio >= 1 ? "faster" : "slower", best->impl.c_str());
    }
    text = part;
  }
  if (floor != nullptr) {
    bool named = floor->impl != "floor";
    std::snprintf(part, sizeof part, "%s%.2fx the time of the floor%s%s", text.empty() ? "" : "; ",
                  floor->ratio != 0 ? 1 / floor->ratio : 0.0, named ? " " : "",
                  named ? floor->impl.c_str() : "");
    text += part;
  }
  return text;
}

}  // namespace

std::string busy_note(const report& rep) {
  unsigned total = 0;
  unsigned interrupted = 0;
  for (const auto& r : rep.results) {
    total += r.repetitions;
    interrupted += r.interrupted;
  }
  if (total == 0 || interrupted * 10 < total) return "";
  char text[200];
  std::snprintf(text, sizeof text,
                "busy machine: other processes interrupted %u of %u measurements (%.0f%%); "
                "multi-thread rows are the least reliable",
                interrupted, total, 100.0 * interrupted / total);
  return text;
}

void print_table(const report& rep) {
  bool sized = false;
  int name_width = 16;  // columns widen to the longest row and impl names
  int impl_width = 16;
  for (const auto& r : rep.results) {
    sized = sized || r.size != 0;
    name_width = std::max(name_width, static_cast<int>(r.name.size()));
    impl_width = std::max(impl_width, static_cast<int>(r.impl.size()));
  }
  int size_width = sized ? 7 : 0;
  std::printf("%-*s %3s %*s %-*s %10s  %-19s %7s  %s\n", name_width, "row", "thr", size_width,
              sized ? "size" : "", impl_width, "impl", "median ns", "min - max", "ratio",
              "verdict");
  std::string facility;
  for (const auto& r : rep.results) {
    if (facility_of(r.name) != facility) {
      facility = facility_of(r.name);
      std::printf("-- %s %s\n", facility.c_str(),
                  std::string(facility.size() < 80 ? 80 - facility.size() : 4, '-').c_str());
    }
    char range[40];
    std::snprintf(range, sizeof range, "%.2f - %.2f", r.min_ns, r.max_ns);
    std::string size = r.size != 0 ? std::to_string(r.size) : "";
    std::string text = r.baseline.empty() ? against_best_peer(r, rep.results) : verdict(r);
    std::printf("%-*s %3u %*s %-*s %10.2f  %-19s %7.2f  %s%s%s\n", name_width, r.name.c_str(),
                r.threads, size_width, size.c_str(), impl_width, r.impl.c_str(), r.median_ns, range,
                r.ratio, text.c_str(), r.note.empty() ? "" : "; ", r.note.c_str());
  }
  std::printf(
      "ratio: time / time of the group's baseline, geometric mean of the pairs measured side "
      "by side\n");
  std::string busy = busy_note(rep);
  if (!busy.empty()) std::printf("%s\n", busy.c_str());
}

void write_json(const std::string& path, const report& rep) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  const machine_info& m = rep.machine;
  out << "{\n  \"schema\": \"percpu-bench/1\",\n"
      << "  \"machine\": {\"cpu_model\": " << quoted(m.cpu_model) << ", \"cpus\": " << m.cpus
      << ", \"kernel\": " << quoted(m.kernel) << ", \"arch\": " << quoted(m.arch)
      << ", \"backend\": " << quoted(m.backend) << ", \"slots\": " << m.slots << "},\n"
      << "  \"date\": " << quoted(rep.date) << ",\n"
      << "  \"command\": " << quoted(rep.command) << ",\n"
      << "  \"quick\": " << (rep.quick ? "true" : "false") << ",\n";
  char number[64];
  std::snprintf(number, sizeof number, "%.1f", rep.wall_s);
  out << "  \"wall_s\": " << number << ",\n  \"missing_peers\": [";
  for (std::size_t i = 0; i < rep.missing_peers.size(); ++i) {
    const auto& p = rep.missing_peers[i];
    out << (i == 0 ? "" : ", ") << "{\"impl\": " << quoted(p.impl)
        << ", \"package\": " << quoted(p.package) << "}";
  }
  out << "],\n  \"results\": [";
  for (std::size_t i = 0; i < rep.results.size(); ++i) {
    const auto& r = rep.results[i];
    out << (i == 0 ? "" : ",") << "\n    {\"name\": " << quoted(r.name)
        << ", \"impl\": " << quoted(r.impl) << ", \"threads\": " << r.threads;
    if (r.size != 0) out << ", \"size\": " << r.size;
    std::snprintf(number, sizeof number, "%.4f, \"min_ns\": %.4f, \"max_ns\": %.4f", r.median_ns,
                  r.min_ns, r.max_ns);
    out << ", \"ns_per_op\": " << number << ", \"repetitions\": " << r.repetitions
        << ", \"interrupted\": " << r.interrupted;
    if (!r.baseline.empty()) {
      std::snprintf(number, sizeof number, "%.4f, \"ratio_q1\": %.4f, \"ratio_q3\": %.4f", r.ratio,
                    r.ratio_q1, r.ratio_q3);
      out << ", \"baseline\": " << quoted(r.baseline) << ", \"ratio\": " << number;
    }
    if (!r.note.empty()) out << ", \"note\": " << quoted(r.note);
    out << "}";
  }
  out << "\n  ]\n}\n";
  if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

namespace {

// What --compare needs of one result.
struct compared {
  double median_ns = 0;
  double ratio = 0;
  double ratio_q1 = 0;
  double ratio_q3 = 0;
};

double number_member(const json::value& v, const char* key, double otherwise) {
  const json::value* m = v.find(key);
  return m != nullptr && m->type == json::value::kind::number ? m->number : otherwise;
}

std::string string_member(const json::value& v, const char* key) {
  const json::value* m = v.find(key);
  return m != nullptr && m->type == json::value::kind::string ? m->string : "";
}

// (name, threads, size, impl) -> result, for every result with a ratio.
using result_key = std::tuple<std::string, unsigned, std::uint64_t, std::string>;

std::map<result_key, compared> ratios_in(const std::string& path) {
  json::value doc = json::parse_file(path);
  const json::value* results = doc.find("results");
  if (results == nullptr || results->type != json::value::kind::array) {
    throw std::runtime_error(path + ": no \"results\" array");
  }
  std::map<result_key, compared> out;
  for (const auto& r : results->array) {
    if (r.find("ratio") == nullptr) continue;
    result_key key{string_member(r, "name"), static_cast<unsigned>(number_member(r, "threads", 0)),
                   static_cast<std::uint64_t>(number_member(r, "size", 0)),
                   string_member(r, "impl")};
    double ratio = number_member(r, "ratio", 0);
    out[key] = {number_member(r, "ns_per_op", 0), ratio, number_member(r, "ratio_q1", ratio),
                number_member(r, "ratio_q3", ratio)};
  }
  return out;
}

}  // namespace

int compare_reports(const std::string& first_path, const std::string& second_path) {
  constexpr double agreement = 0.25;    // ratios within 25 % of each other
  constexpr double checked_above = 20;  // ... where the medians exceed 20 ns
  auto first = ratios_in(first_path);
  auto second = ratios_in(second_path);
  unsigned checked = 0;
  unsigned failed = 0;
  std::printf("%-16s %3s %7s %-16s %8s %8s %7s  %s\n", "row", "thr", "size", "impl", "ratio A",
              "ratio B", "change", "agreement");
  for (const auto& [key, a] : first) {
    auto it = second.find(key);
    if (it == second.end()) continue;
    const compared& b = it->second;
    ++checked;
    double change = b.ratio / a.ratio - 1;
    bool slow_rows = a.median_ns > checked_above && b.median_ns > checked_above;
    std::string status = "ok";
    int da = direction(a.ratio, a.ratio_q1, a.ratio_q3);
    int db = direction(b.ratio, b.ratio_q1, b.ratio_q3);
    if (da != 0 && db != 0 && da != db) {
      status = "DIRECTION DIFFERS";
    } else if (slow_rows && std::fabs(change) > agreement) {
      status = "DIFFERS BY MORE THAN 25%";
    } else if (!slow_rows) {
      status = "ok (direction only: median under 20 ns)";
    }
    if (status.rfind("ok", 0) != 0) ++failed;
    std::string size = std::get<2>(key) != 0 ? std::to_string(std::get<2>(key)) : "";
    std::printf("%-16s %3u %7s %-16s %8.2f %8.2f %+6.0f%%  %s\n", std::get<0>(key).c_str(),
                std::get<1>(key), size.c_str(), std::get<3>(key).c_str(), a.ratio, b.ratio,
                change * 100, status.c_str());
  }
  if (checked == 0) {
    std::printf("no ratio appears in both reports\n");
    return 1;
  }
  std::printf("%u ratios compared, %u disagree: %s\n", checked, failed,
              failed == 0 ? "REPRODUCED" : "NOT REPRODUCED");
  std::printf(
      "(direction: faster or slower than the baseline; a ratio within %.0f%% of 1, or whose "
      "pairs' middle half straddles 1, is even and agrees with either)\n",
      even_band * 100);
  return failed == 0 ? 0 : 1;
}

}  // namespace percpu_tool
