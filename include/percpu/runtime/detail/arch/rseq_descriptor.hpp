// percpu/runtime/detail/arch/rseq_descriptor.hpp - the descriptor every
// restartable sequence places in __rseq_cs, the same text on every
// architecture.
//
// Problem: the kernel finds a sequence's range and abort handler through a
// 32-byte descriptor (struct rseq_cs: version, flags, start_ip,
// post_commit_offset, abort_ip) whose address the sequence stores in its
// rseq area.  Each architecture's sequences emit one per sequence from
// assembly; the layout below is written once and tied to the kernel's
// struct by the static_asserts.
//
// Mechanism: the descriptor goes in section __rseq_cs, created with the "?"
// flag so that it joins the section group of the code around it (a
// discarded duplicate of an inline function takes its descriptors along),
// at label 3, for the range [1, 2) and the abort handler at 4: labels the
// sequence defines after it.  The sequence then loads the address of 3b.
//
// Included by the architectures' rseq.hpp only.
#pragma once

#include <linux/rseq.h>

#include <cstddef>

static_assert(sizeof(struct rseq_cs) == 32 && offsetof(struct rseq_cs, version) == 0 &&
                  offsetof(struct rseq_cs, flags) == 4 && offsetof(struct rseq_cs, start_ip) == 8 &&
                  offsetof(struct rseq_cs, post_commit_offset) == 16 &&
                  offsetof(struct rseq_cs, abort_ip) == 24,
              "PERCPU_RSEQ_DESCRIPTOR_TEXT writes the kernel's struct rseq_cs");

// Version 0, flags 0, start 1f, length 2f - 1f, abort handler 4f.
#define PERCPU_RSEQ_DESCRIPTOR_TEXT     \
  ".pushsection __rseq_cs, \"aw?\"\n\t" \
  ".balign 32\n\t"                      \
  "3:\n\t"                              \
  ".long 0x0, 0x0\n\t"                  \
  ".quad 1f, (2f - 1f), 4f\n\t"         \
  ".popsection\n\t"
