// Stand-in for the generated percpu/runtime/config.hpp, for the standalone
// sequence tests of tests/arch/: fault injection compiled in unless NDEBUG
// (the two programs rseq_aarch64_test and rseq_aarch64_test_debug).
#pragma once

#if defined(NDEBUG)
#define PERCPU_FAULT_INJECTION 0
#else
#define PERCPU_FAULT_INJECTION 1
#endif
