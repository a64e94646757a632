// percpu bench - every facility side by side with its peers.
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include "commands.hpp"
#include "harness.hpp"
#include "report.hpp"

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

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&t, &utc);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

// What the command line asks for: a run with these options and outputs, or
// (compare non-empty) a comparison of two reports instead.
struct request {
  percpu_bench::options opts;
  std::string json_path;
  std::string svg_path;
  std::string command = "percpu bench";
  std::vector<std::string> compare;
};

// Parses the arguments in order; --compare ends them.  Throws
// std::invalid_argument on a bad option.
request parse_args(const std::vector<std::string>& args) {
  request req;
  for (const auto& a : args) req.command += " " + a;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--quick") {
      req.opts.quick = true;
    } else if (a == "--json") {
      req.json_path = value();
    } else if (a == "--svg") {
      req.svg_path = value();
    } else if (a == "--compare") {
      if (i + 2 >= args.size()) throw std::invalid_argument("--compare needs two JSON files");
      const std::string& first = value();
      const std::string& second = value();
      if (i + 1 != args.size())
        throw std::invalid_argument("--compare takes two files and nothing else");
      req.compare = {first, second};
      return req;
    } else if (a == "--filter") {
      req.opts.filter = value();
    } else if (a == "--repetitions") {
      req.opts.repetitions = parse_count(value(), "--repetitions");
    } else if (a == "--threads") {
      const std::string& list = value();
      std::size_t pos = 0;
      while (pos <= list.size()) {
        std::size_t comma = list.find(',', pos);
        if (comma == std::string::npos) comma = list.size();
        req.opts.threads.push_back(parse_count(list.substr(pos, comma - pos), "--threads"));
        pos = comma + 1;
      }
    } else {
      throw std::invalid_argument("unknown option '" + a + "' (see percpu --help)");
    }
  }
  return req;
}

// The lines before the measurements: the machine, the plan, the peers that
// will be missing.
void print_header(const report& rep, const percpu_bench::plan& plan) {
  std::printf("%s: %s, %u CPUs, Linux %s, backend %s, %s\n", rep.command.c_str(),
              rep.machine.cpu_model.c_str(), rep.machine.cpus, rep.machine.kernel.c_str(),
              rep.machine.backend.c_str(), rep.date.c_str());
  std::printf(
      "%zu measurements in %zu groups, %u repetitions of %.0f ms each: about %.0f s "
      "(more on a busy machine)\n",
      plan.implementations, plan.groups, plan.repetitions, plan.target_ns / 1e6, plan.estimated_s);
  if (!rep.missing_peers.empty()) {
    std::string names;
    for (const auto& m : rep.missing_peers) names += (names.empty() ? "" : ", ") + m.impl;
    std::printf("not installed, not measured: %s (how to get them: at the end)\n", names.c_str());
  }
  std::fflush(stdout);
}

// The lines after the table: how to get the peers that were not measured.
void print_missing_peers(const report& rep) {
  if (rep.missing_peers.empty()) return;
  std::printf(
      "\npeers not measured because their libraries are not installed (the malloc peers "
      "are looked up as the bench runs, the others when percpu is built):\n");
  std::string packages;
  for (const auto& m : rep.missing_peers) {
    std::printf("  %-16s from Debian package %s\n", m.impl.c_str(), m.package.c_str());
    if (packages.find(m.package) == std::string::npos) packages += " " + m.package;
  }
  std::printf(
      "to measure them: sudo apt-get install%s, then configure and build again "
      "(cmake --preset release && cmake --build --preset release -j --target percpu_tool)\n",
      packages.c_str());
}

}  // namespace

int bench(const std::vector<std::string>& args) {
  request req = parse_args(args);
  if (!req.compare.empty()) return compare_reports(req.compare[0], req.compare[1]);
  const percpu_bench::options& opts = req.opts;
  report rep;
  rep.machine = describe_machine();
  rep.date = now_utc();
  rep.command = req.command;
  rep.quick = opts.quick;
  auto rows = percpu_bench::all_rows(rep.missing_peers);
  percpu_bench::plan plan;
  try {
    plan = percpu_bench::make_plan(rows, opts);
  } catch (const std::regex_error&) {
    throw std::invalid_argument("--filter '" + opts.filter + "' is not a valid regular expression");
  }
  if (plan.implementations == 0) {
    std::printf("no row matches --filter '%s'\n", opts.filter.c_str());
    return 1;
  }
  print_header(rep, plan);
  auto start = std::chrono::steady_clock::now();
  rep.results = percpu_bench::run(rows, opts);
  rep.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  print_table(rep);
  std::printf("measured in %.0f s\n", rep.wall_s);
  print_missing_peers(rep);
  if (!req.json_path.empty()) {
    write_json(req.json_path, rep);
    std::printf("wrote %s\n", req.json_path.c_str());
  }
  if (!req.svg_path.empty()) {
    write_svg(req.svg_path, rep);
    std::printf("wrote %s\n", req.svg_path.c_str());
  }
  return 0;
}

}  // namespace percpu_tool
