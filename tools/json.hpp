// json.hpp - a small JSON reader for the bench reports.
//
// Problem: `percpu bench --compare` and the schema check read back the JSON
// the bench writes, and neither may depend on anything a bare Debian build
// machine lacks.  This reads standard JSON (RFC 8259) into a tree; it keeps
// object members in file order and numbers as double.
#pragma once

#include <string>
#include <vector>

namespace percpu_tool::json {

struct member;

struct value {
  enum class kind { null, boolean, number, string, array, object };
  kind type = kind::null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<value> array;
  std::vector<member> object;  // in file order

  // The member named `key` of an object, or nullptr.
  const value* find(const std::string& key) const;
  // Whether a number is integral.
  bool is_integer() const;
};

struct member {
  std::string name;
  value content;
};

// The JSON type name of `v`'s kind ("null", "boolean", "number", "string",
// "array", "object").
const char* kind_name(value::kind k);

// Parses `text`; throws std::runtime_error with the offset of the first error.
value parse(const std::string& text);

// Reads and parses the file at `path`; throws std::runtime_error.
value parse_file(const std::string& path);

}  // namespace percpu_tool::json
