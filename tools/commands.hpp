// commands.hpp - the subcommands of the percpu tool.
#pragma once

#include <string>
#include <vector>

namespace percpu_tool {

// Each returns the process exit status; bad arguments throw std::invalid_argument.
int info(const std::vector<std::string>& args);
int bench(const std::vector<std::string>& args);
int stress(const std::vector<std::string>& args);
int memory(const std::vector<std::string>& args);

}  // namespace percpu_tool
