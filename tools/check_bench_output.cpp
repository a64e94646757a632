// check_bench_output - checks what `percpu bench --json F --svg G` wrote.
//
// Problem: the JSON report has a documented schema (docs/bench-schema.json)
// and the chart must be an SVG a browser can open, and CI has neither a
// JSON Schema validator nor an XML toolkit.  This program validates the
// JSON against the schema - implementing the part of JSON Schema the schema
// uses: type, enum, required, properties, additionalProperties (false),
// dependentRequired, items, minItems, minimum, exclusiveMinimum, minLength,
// pattern; any other keyword makes it fail rather than pass unchecked - and
// checks that the SVG is well-formed XML with an <svg> root and at least one
// bar (a rect of class "bar").
//
// usage: check_bench_output SCHEMA JSON [SVG]; exit status 0 when all hold.
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "json.hpp"

namespace {

using percpu_tool::json::value;
using kind = value::kind;

// Collects every violation with the JSON path where it occurred.
class validator {
 public:
  std::vector<std::string> errors;

  void check(const value& schema, const value& v, const std::string& path) {
    if (schema.type != kind::object)
      throw std::runtime_error("schema at " + path + " is not an object");
    for (const auto& [keyword, rule] : schema.object) apply(keyword, rule, schema, v, path);
  }

 private:
  void fail(const std::string& path, const std::string& what) {
    errors.push_back(path + ": " + what);
  }

  static bool has_type(const value& v, const std::string& type) {
    if (type == "integer") return v.is_integer();
    return type == percpu_tool::json::kind_name(v.type);
  }

  static bool equal(const value& a, const value& b) {
    if (a.type != b.type) return false;
    switch (a.type) {
      case kind::null:
        return true;
      case kind::boolean:
        return a.boolean == b.boolean;
      case kind::number:
        return a.number == b.number;
      case kind::string:
        return a.string == b.string;
      default:
        return false;  // the schema compares only scalars
    }
  }

  void apply(const std::string& keyword, const value& rule, const value& schema, const value& v,
             const std::string& path) {
    static const std::set<std::string> annotations = {"$schema", "title", "description"};
    if (annotations.count(keyword) != 0) return;
    if (keyword == "type") {
      if (!has_type(v, rule.string)) fail(path, "not of type " + rule.string);
    } else if (keyword == "enum") {
      bool found = false;
      for (const auto& option : rule.array) found = found || equal(option, v);
      if (!found) fail(path, "not one of the allowed values");
    } else if (keyword == "required") {
      if (v.type != kind::object) return;
      for (const auto& name : rule.array) {
        if (v.find(name.string) == nullptr) fail(path, "missing \"" + name.string + "\"");
      }
    } else if (keyword == "dependentRequired") {
      if (v.type != kind::object) return;
      for (const auto& [present, needed] : rule.object) {  // present -> members it needs
        if (v.find(present) == nullptr) continue;
        for (const auto& name : needed.array) {
          if (v.find(name.string) == nullptr) {
            fail(path, "\"" + present + "\" without \"" + name.string + "\"");
          }
        }
      }
    } else if (keyword == "properties") {
      if (v.type != kind::object) return;
      for (const auto& [name, content] : v.object) {
        if (const value* sub = rule.find(name)) {
          std::string member_path = path;
          member_path += '.';
          member_path += name;
          check(*sub, content, member_path);
        }
      }
    } else if (keyword == "additionalProperties") {
      if (v.type != kind::object) return;
      if (rule.type != kind::boolean) {
        throw std::runtime_error("additionalProperties must be a boolean here");
      }
      const value* declared = schema.find("properties");
      for (const auto& member : v.object) {
        const std::string& name = member.name;
        if (!rule.boolean && (declared == nullptr || declared->find(name) == nullptr)) {
          fail(path, "unexpected member \"" + name + "\"");
        }
      }
    } else if (keyword == "items") {
      if (v.type != kind::array) return;
      for (std::size_t i = 0; i < v.array.size(); ++i) {
        check(rule, v.array[i], path + "[" + std::to_string(i) + "]");
      }
    } else if (keyword == "minItems") {
      if (v.type == kind::array && static_cast<double>(v.array.size()) < rule.number)
        fail(path, "too few items");
    } else if (keyword == "minimum") {
      if (v.type == kind::number && v.number < rule.number) fail(path, "below the minimum");
    } else if (keyword == "exclusiveMinimum") {
      if (v.type == kind::number && v.number <= rule.number) fail(path, "not above the minimum");
    } else if (keyword == "minLength") {
      if (v.type == kind::string && static_cast<double>(v.string.size()) < rule.number)
        fail(path, "too short");
    } else if (keyword == "pattern") {
      if (v.type == kind::string && !std::regex_search(v.string, std::regex(rule.string))) {
        fail(path, "\"" + v.string + "\" does not match " + rule.string);
      }
    } else {
      throw std::runtime_error("schema keyword \"" + keyword +
                               "\" is not supported by this checker");
    }
  }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Well-formedness of the subset of XML the chart uses: an optional
// declaration, elements with quoted attributes, text, comments; tags must
// nest and close.  count_bars() returns the number of <rect> elements of
// class "bar".
class svg_checker {
 public:
  explicit svg_checker(const std::string& text) : text_(text) {}

  unsigned count_bars() {
    if (text_.compare(0, 5, "<?xml") == 0) {
      pos_ = text_.find("?>");
      if (pos_ == std::string::npos) fail("unterminated declaration");
      pos_ += 2;
    }
    while (pos_ < text_.size()) {
      if (!text_before_tag()) break;
      if (text_.compare(pos_, 4, "<!--") == 0) {
        pos_ = text_.find("-->", pos_);
        if (pos_ == std::string::npos) fail("unterminated comment");
        pos_ += 3;
        continue;
      }
      element(next_tag());
    }
    if (!root_seen_) fail("no root element");
    if (!open_.empty()) fail("<" + open_.back() + "> is never closed");
    return bars_;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("SVG: " + what + " at offset " + std::to_string(pos_));
  }

  // Checks the text up to the next '<' and moves there; false when there is
  // no further tag.
  bool text_before_tag() {
    std::size_t lt = text_.find('<', pos_);
    std::string chars = text_.substr(pos_, lt == std::string::npos ? std::string::npos : lt - pos_);
    if (open_.empty() && chars.find_first_not_of(" \t\r\n") != std::string::npos)
      fail("text outside the root");
    if (chars.find_first_of("<>") != std::string::npos) fail("stray angle bracket");
    if (lt == std::string::npos) return false;
    pos_ = lt;
    return true;
  }

  // The tag at pos_ ("<...>", quotes respected), without its brackets; moves
  // past it.
  std::string next_tag() {
    std::size_t gt = pos_;
    char quote = 0;
    for (++gt; gt < text_.size(); ++gt) {
      char c = text_[gt];
      if (quote != 0) {
        if (c == quote) {
          quote = 0;
        } else if (c == '<') {
          fail("'<' in an attribute");
        }
      } else if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '>') {
        break;
      }
    }
    if (gt >= text_.size()) fail("unterminated tag");
    std::string tag = text_.substr(pos_ + 1, gt - pos_ - 1);
    pos_ = gt + 1;
    return tag;
  }

  // A closing, opening or self-closing tag.
  void element(std::string tag) {
    if (!tag.empty() && tag[0] == '/') {
      std::string name = tag.substr(1);
      if (open_.empty() || open_.back() != name)
        fail("</" + name + "> does not close the open element");
      open_.pop_back();
      return;
    }
    bool self_closing = !tag.empty() && tag.back() == '/';
    if (self_closing) tag.pop_back();
    std::size_t name_end = tag.find_first_of(" \t\r\n");
    std::string name = tag.substr(0, name_end);
    if (name.empty()) fail("empty tag");
    std::string rest = name_end == std::string::npos ? "" : tag.substr(name_end);
    check_attributes(name, rest);
    if (open_.empty()) {
      if (root_seen_) fail("second root element");
      if (name != "svg") fail("root element is <" + name + ">, not <svg>");
      if (rest.find("xmlns=\"http://www.w3.org/2000/svg\"") == std::string::npos)
        fail("no SVG namespace");
      root_seen_ = true;
    }
    if (name == "rect" && rest.find("class=\"bar\"") != std::string::npos) ++bars_;
    if (!self_closing) open_.push_back(name);
  }

  // Attributes: name="value" pairs, each name once.
  void check_attributes(const std::string& name, const std::string& rest) const {
    std::regex attribute(R"(\s+([A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*("[^"]*"|'[^']*'))");
    std::set<std::string> names;
    std::string leftover = std::regex_replace(rest, attribute, "");
    if (leftover.find_first_not_of(" \t\r\n") != std::string::npos)
      fail("malformed attributes in <" + name + ">");
    for (std::sregex_iterator it(rest.begin(), rest.end(), attribute), end; it != end; ++it) {
      if (!names.insert((*it)[1]).second) fail("attribute repeated in <" + name + ">");
    }
  }

  const std::string& text_;
  std::size_t pos_ = 0;
  std::vector<std::string> open_;
  bool root_seen_ = false;
  unsigned bars_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::fprintf(stderr, "usage: check_bench_output SCHEMA JSON [SVG]\n");
    return 2;
  }
  try {
    value schema = percpu_tool::json::parse_file(argv[1]);
    value report = percpu_tool::json::parse_file(argv[2]);
    validator v;
    v.check(schema, report, "$");
    for (const auto& e : v.errors) std::printf("%s: %s\n", argv[2], e.c_str());
    if (!v.errors.empty()) return 1;
    std::printf("%s: valid against %s\n", argv[2], argv[1]);
    if (argc == 4) {
      unsigned bars = svg_checker(read_file(argv[3])).count_bars();
      if (bars == 0) {
        std::printf("%s: well-formed but has no bar\n", argv[3]);
        return 1;
      }
      std::printf("%s: well-formed SVG, %u bars\n", argv[3], bars);
    }
  } catch (const std::exception& e) {
    std::printf("%s\n", e.what());
    return 1;
  }
  return 0;
}
