#include "child.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "percpu/runtime/cpu.hpp"

extern char** environ;

namespace percpu_bench {

namespace {

// Reads one line (without the newline) from fd; false at end of file.
bool read_line(int fd, std::string& line) {
  line.clear();
  char c;
  for (;;) {
    ssize_t n = read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return !line.empty();
    if (c == '\n') return true;
    line.push_back(c);
  }
}

bool write_all(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

std::string find_library(const char* file_name) {
  for (const char* dir : {"/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
                          "/lib/x86_64-linux-gnu"}) {
    std::string path = std::string(dir) + "/" + file_name;
    if (access(path.c_str(), R_OK) == 0) return path;
  }
  return "";
}

child_body::child_body(const std::string& row_name, std::size_t size, unsigned threads,
                       const std::string& preload, const std::vector<std::string>& env) {
  int down[2];
  int up[2];
  if (pipe2(down, O_CLOEXEC) != 0 || pipe2(up, O_CLOEXEC) != 0) {
    throw std::runtime_error("bench: cannot create a pipe for a child process");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, down[0], 0);
  posix_spawn_file_actions_adddup2(&actions, up[1], 1);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "LD_PRELOAD=", 11) != 0) env_strings.emplace_back(*e);
  }
  if (!preload.empty()) env_strings.push_back("LD_PRELOAD=" + preload);
  // getenv finds the first entry of a name: `env` goes before the inherited.
  env_strings.insert(env_strings.begin(), env.begin(), env.end());
  std::vector<char*> envp;
  envp.reserve(env_strings.size() + 1);
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string command = "bench-child";
  std::string size_arg = std::to_string(size);
  std::string threads_arg = std::to_string(threads);
  std::string name = row_name;
  char* argv[] = {exe.data(),      command.data(),     name.data(),
                  size_arg.data(), threads_arg.data(), nullptr};
  int rc = posix_spawn(&pid_, exe.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(down[0]);
  close(up[1]);
  to_child_ = down[1];
  from_child_ = up[0];
  if (rc != 0) {
    close(to_child_);
    close(from_child_);
    throw std::runtime_error("bench: cannot start a child process: " +
                             std::generic_category().message(rc));
  }
  std::string ready;
  if (!read_line(from_child_, ready) || ready != "ready") {
    throw std::runtime_error("bench: the child process for " + row_name + " did not start");
  }
}

child_body::~child_body() {
  close(to_child_);  // end of file: the child exits
  close(from_child_);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

void child_body::run(unsigned thread, std::uint64_t iterations) {
  if (thread != 0) return;
  std::string reply;
  if (!write_all(to_child_, std::to_string(iterations) + "\n") || !read_line(from_child_, reply)) {
    std::fprintf(stderr, "bench: a child process died\n");
    std::abort();
  }
  last_ns_ = std::strtod(reply.c_str(), nullptr);
}

std::vector<index_peer> index_peers() {
  const percpu::backend_info& b = percpu::backend();
  if (b.kind != percpu::backend_kind::rseq || !b.mm_cid) return {};
  return {{"cpu", "percpu_cpu"}, {"mm_cid", "percpu_mm_cid"}};
}

std::function<std::unique_ptr<body>(unsigned)> index_maker(const index_peer& peer,
                                                           const std::string& row_name,
                                                           std::size_t size) {
  std::vector<std::string> env = {"PERCPU_BENCH_CHILD_BODY=percpu", "PERCPU_INDEX=" + peer.index};
  return [row_name, size, env](unsigned t) -> std::unique_ptr<body> {
    return std::make_unique<child_body>(row_name, size, t, "", env);
  };
}

namespace {

std::unique_ptr<body> make_percpu_body(const std::string& row_name, std::size_t size) {
  if (row_name == "slot.add") return make_slot_percpu_body();
  return make_pool_percpu_body(row_name, size);
}

}  // namespace

int child_main(const std::vector<std::string>& args) {
  if (args.size() != 3) {
    std::fprintf(stderr, "usage: percpu bench-child ROW SIZE THREADS (used by percpu bench)\n");
    return 2;
  }
  std::size_t size = std::strtoull(args[1].c_str(), nullptr, 10);
  auto threads = static_cast<unsigned>(std::strtoul(args[2].c_str(), nullptr, 10));
  const char* own = std::getenv("PERCPU_BENCH_CHILD_BODY");
  std::unique_ptr<body> b = own != nullptr && std::string(own) == "percpu"
                                ? make_percpu_body(args[0], size)
                                : make_malloc_body(args[0], size);
  if (!b || threads == 0) {
    std::fprintf(stderr, "percpu bench-child: no body for %s\n", args[0].c_str());
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if (!write_all(1, "ready\n")) return 1;
  std::string line;
  while (read_line(0, line)) {
    std::uint64_t iterations = std::strtoull(line.c_str(), nullptr, 10);
    double ns = measure_once(*b, threads, iterations);
    char reply[64];
    std::snprintf(reply, sizeof reply, "%.1f\n", ns);
    if (!write_all(1, reply)) return 1;
  }
  return 0;
}

}  // namespace percpu_bench
