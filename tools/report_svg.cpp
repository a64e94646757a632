// report_svg.cpp - the bench report as a chart.
//
// Problem: the rows span three orders of magnitude (a 0.4 ns add next to a
// 700 ns synchronize_rcu), so one linear axis makes the fast rows invisible
// and a log axis makes ratios hard to see.  Each group - one row name at one
// thread count and size - is therefore drawn on its own scale: the bars are
// proportional within the group (the slowest measurement spans the width),
// and every bar carries its value in ns and its verdict as text.  Panels
// follow the facilities (the row name before the dot); percpu's bars are
// coloured, the peers' grey; whiskers show min to max over the repetitions.
//
// The SVG is hand-written (no dependencies) and uses only what every
// renderer supports: rect, line, text, g, title.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "report.hpp"

namespace percpu_tool {

namespace {

// Geometry (user units = pixels).
constexpr double width = 1040;
constexpr double margin = 20;
constexpr double label_right = 210;   // impl names end here; bars start here
constexpr double bar_area = 470;      // the widest bar (with its whisker)
constexpr double verdict_left = 770;  // verdicts line up here, after the value labels
constexpr double bar_height = 16;
constexpr double bar_gap = 5;
constexpr double group_header = 24;
constexpr double group_gap = 10;
constexpr double panel_header = 34;
constexpr double panel_gap = 16;

const char* const percpu_colour = "#1f6fc5";
const char* const percpu_variant_colour = "#6fa8e6";
const char* const peer_colours[] = {"#8d949c", "#b4b9bf"};
const char* const ink = "#1d2228";
const char* const muted = "#5b636b";
const char* const faster_colour = "#1b7a3a";
const char* const slower_colour = "#b0440e";

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string fmt(const char* format, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, a);
  return buf;
}

// An implementation name that fits the label column (the bar's tooltip
// keeps the full name).
std::string shortened(const std::string& impl) {
  constexpr std::size_t fits = 24;
  return impl.size() <= fits ? impl : impl.substr(0, fits - 1) + "\xe2\x80\xa6";
}

// The figure for a bar's label: three significant digits or so.
std::string ns_text(double ns) {
  if (ns >= 100) return fmt("%.0f ns", ns);
  if (ns >= 10) return fmt("%.1f ns", ns);
  return fmt("%.2f ns", ns);
}

struct svg_text {
  double x, y;
  double size;
  const char* colour;
  const char* anchor;
  bool bold;
  std::string text;
};

std::string text_element(const svg_text& t) {
  char head[256];
  std::snprintf(head, sizeof head,
                "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.0f\" fill=\"%s\" text-anchor=\"%s\"%s>",
                t.x, t.y, t.size, t.colour, t.anchor, t.bold ? " font-weight=\"bold\"" : "");
  return head + escape(t.text) + "</text>\n";
}

std::string rect(double x, double y, double w, double h, const char* fill,
                 const std::string& extra = "") {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"%s", x, y, w,
                h, fill, extra.c_str());
  return buf;
}

std::string line(double x1, double y1, double x2, double y2, const char* colour) {
  char buf[200];
  std::snprintf(buf, sizeof buf,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                "stroke-width=\"1.3\"/>\n",
                x1, y1, x2, y2, colour);
  return buf;
}

const char* colour_of(const percpu_bench::result& r, unsigned& peer_index) {
  if (r.impl == "percpu") return percpu_colour;
  if (r.impl.rfind("percpu", 0) == 0) return percpu_variant_colour;
  return peer_colours[peer_index++ % 2];
}

// Green where percpu wins, orange where it loses, grey for even or for a
// comparison between percpu's own variants.
const char* verdict_colour(const percpu_bench::result& r) {
  if (!is_rival(r) || direction(r) == 0) return muted;
  return direction(r) > 0 ? faster_colour : slower_colour;
}

using group_key = std::tuple<std::string, unsigned, std::uint64_t>;

struct group {
  group_key key;
  std::vector<const percpu_bench::result*> members;
};

struct panel {
  std::string facility;
  std::vector<group> groups;
};

// Results in report order, gathered into panels and groups.
std::vector<panel> layout(const std::vector<percpu_bench::result>& results) {
  std::vector<panel> panels;
  for (const auto& r : results) {
    std::string facility = facility_of(r.name);
    if (panels.empty() || panels.back().facility != facility) panels.push_back({facility, {}});
    auto& groups = panels.back().groups;
    group_key key{r.name, r.threads, r.size};
    if (groups.empty() || groups.back().key != key) groups.push_back({key, {}});
    groups.back().members.push_back(&r);
  }
  return panels;
}

std::string group_title(const group_key& key) {
  const auto& [name, threads, size] = key;
  std::string title =
      name + "  \xc2\xb7  " + std::to_string(threads) + (threads == 1 ? " thread" : " threads");
  if (size != 0) title += "  \xc2\xb7  size " + std::to_string(size);
  return title;
}

// The title block - what, where, when, how - from y down; moves y below it.
std::string title_block(const report& rep, double& y) {
  std::string body;
  const machine_info& m = rep.machine;
  y += 22;
  body += text_element({margin, y, 22, ink, "start", true,
                        "percpu bench: time per operation, per thread (shorter is faster)"});
  y += 22;
  body +=
      text_element({margin, y, 13, muted, "start", false,
                    m.cpu_model + "  \xc2\xb7  " + std::to_string(m.cpus) + " CPUs  \xc2\xb7  " +
                        "Linux " + m.kernel + "  \xc2\xb7  backend " + m.backend});
  y += 18;
  body +=
      text_element({margin, y, 13, muted, "start", false, rep.date + "  \xc2\xb7  " + rep.command});
  if (!rep.missing_peers.empty()) {
    std::string missing = "not measured (not installed):";
    for (const auto& p : rep.missing_peers)
      missing += " " + p.impl + " (apt-get install " + p.package + ")";
    y += 18;
    body += text_element({margin, y, 13, "#a33a00", "start", false, missing});
  }
  std::string busy = busy_note(rep);
  if (!busy.empty()) {
    y += 18;
    body += text_element({margin, y, 13, slower_colour, "start", false, busy});
  }
  return body;
}

// The legend line, from y down; moves y below it.
std::string legend(const report& rep, double& y) {
  std::string body;
  y += 24;
  body += rect(margin, y - 11, 14, 12, percpu_colour) + "/>\n";
  // Every row has at least the planned repetitions; groups whose ratios
  // spread widely get more (harness.hpp).
  unsigned fewest = 0;
  unsigned most = 0;
  for (const auto& r : rep.results) {
    fewest = fewest == 0 ? r.repetitions : std::min(fewest, r.repetitions);
    most = std::max(most, r.repetitions);
  }
  std::string repetitions = std::to_string(fewest);
  if (most > fewest) {
    repetitions += '-';  // not "-" + to_string(): g++ 12 warns there (-Wrestrict, a false alarm)
    repetitions += std::to_string(most);
  }
  body += text_element({margin + 20, y, 13, ink, "start", false, "percpu"});
  body += rect(margin + 90, y - 11, 14, 12, peer_colours[0]) + "/>\n";
  body += text_element({margin + 110, y, 13, ink, "start", false, "peers"});
  body += line(margin + 175, y - 5, margin + 205, y - 5, ink);
  body += line(margin + 175, y - 9, margin + 175, y - 1, ink);
  body += line(margin + 205, y - 9, margin + 205, y - 1, ink);
  body += text_element({margin + 212, y, 13, ink, "start", false,
                        "min to max over " + repetitions +
                            " repetitions;  each group has its own scale: compare within a group"});
  y += 12;
  return body;
}

// One implementation's bar at y, on the group's scale: its name, the bar
// with its min-max whisker and tooltip, its value and its verdict.
std::string bar(const percpu_bench::result& r, double y, double scale_ns, unsigned& peer_index) {
  std::string body;
  double x0 = label_right;
  double w = std::max(1.0, r.median_ns / scale_ns * bar_area);
  double mid = y + bar_height / 2;
  body += text_element({label_right - 8, mid + 4.5, 13,
                        r.impl.rfind("percpu", 0) == 0 ? percpu_colour : ink, "end",
                        r.impl == "percpu", shortened(r.impl)});
  body += "<g>" + rect(x0, y, w, bar_height, colour_of(r, peer_index), " class=\"bar\"") +
          "><title>" +
          escape(r.impl + ": median " + ns_text(r.median_ns) + ", min " + ns_text(r.min_ns) +
                 ", max " + ns_text(r.max_ns)) +
          "</title></rect>\n";
  double x_min = x0 + r.min_ns / scale_ns * bar_area;
  double x_max = x0 + r.max_ns / scale_ns * bar_area;
  body += line(x_min, mid, x_max, mid, ink);
  body += line(x_min, mid - 4, x_min, mid + 4, ink);
  body += line(x_max, mid - 4, x_max, mid + 4, ink) + "</g>\n";
  double label_x = std::max(x0 + w, x_max) + 8;
  body += text_element({label_x, mid + 4.5, 13, ink, "start", true, ns_text(r.median_ns)});
  if (!r.baseline.empty()) {
    body +=
        text_element({verdict_left, mid + 4.5, 13, verdict_colour(r), "start", false, verdict(r)});
  }
  return body;
}

// One panel (a facility) with its groups, from y down; moves y below it.
std::string panel_element(const panel& p, double& y) {
  std::string body;
  y += panel_gap;
  double top = y;
  double height = panel_header;
  for (const auto& g : p.groups) {
    height +=
        group_header + static_cast<double>(g.members.size()) * (bar_height + bar_gap) + group_gap;
  }
  body += rect(margin, top, width - 2 * margin, height, "#f3f5f7", " rx=\"6\" stroke=\"#d5dade\"") +
          "/>\n";
  body += text_element({margin + 12, top + 23, 17, ink, "start", true, p.facility});
  y = top + panel_header;
  for (const auto& g : p.groups) {
    y += group_header;
    body += text_element({margin + 12, y - 8, 13, ink, "start", true, group_title(g.key)});
    double scale_ns = 0;
    for (const auto* r : g.members)
      scale_ns = std::max(scale_ns, std::max(r->max_ns, r->median_ns));
    if (scale_ns <= 0) scale_ns = 1;
    unsigned peer_index = 0;
    for (const auto* r : g.members) {
      body += bar(*r, y, scale_ns, peer_index);
      y += bar_height + bar_gap;
    }
    y += group_gap;
  }
  y = top + height;
  return body;
}

}  // namespace

void write_svg(const std::string& path, const report& rep) {
  double y = margin;
  std::string body = title_block(rep, y);
  body += legend(rep, y);
  for (const auto& p : layout(rep.results)) body += panel_element(p, y);
  y += margin;

  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  char head[400];
  std::snprintf(head, sizeof head,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                "viewBox=\"0 0 %.0f %.0f\" font-family=\"DejaVu Sans, Helvetica, Arial, "
                "sans-serif\">\n",
                width, y, width, y);
  out << head << rect(0, 0, width, y, "#ffffff") << "/>\n" << body << "</svg>\n";
  if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

}  // namespace percpu_tool
