/*
 * stop_fence_visit.pml - the stop/fence/visit protocol of percpu, as a
 * Promela model for spin.
 *
 * Problem: per-CPU data is changed without atomics by restartable sequences
 * (rseq) that run on the data's own CPU, yet a remote thread sometimes has
 * to read and change one CPU's data (a counter fold, a drain, a reset).  The
 * remote visit must not lose an update: a sequence that read the data before
 * the visitor changed it must never store a value computed from it
 * afterwards, and no sequence may commit while the visitor works.
 *
 * Mechanism (include/percpu/core/stop.hpp, src/core/stop.cpp, docs/design.md section 3):
 * every structure has one stop word per CPU; every sequence tests the word
 * before it reads any data it commits to.  The visitor sets the word, fences
 * the CPU (membarrier PRIVATE_EXPEDITED_RSEQ: every sequence in progress
 * there is aborted and restarts from its beginning), reads and changes the
 * data with plain code, then clears the word.
 *
 * What the model abstracts:
 *  - a CPU is an index; a thread reads its CPU at the start of every
 *    sequence and may be on any CPU each time (migration);
 *  - a restartable sequence is a series of atomic steps (start, stop test,
 *    data read, commit).  rseq's abort is the flag aborted[t]: every step
 *    first tests it, in the same atomic step, and an aborted sequence goes
 *    back to its start.  That is what the kernel does by moving the
 *    thread's instruction pointer to the abort handler: no instruction of
 *    the sequence after the abort runs;
 *  - preemption: a thread that starts a sequence on CPU c aborts the
 *    sequence another thread had in progress on c (that thread was
 *    preempted to let this one run, and the kernel aborts it when it
 *    resumes).  Spontaneous aborts of a lone sequence (signals) are not
 *    modelled separately: a restart leads back to a state the thread had
 *    before, so it adds no reachable state;
 *  - the fence on CPU c (or on all CPUs) is one atomic step that sets
 *    aborted[t] for every thread whose sequence is in progress there;
 *    membarrier returns only after the target CPUs ran the abort, so the
 *    visitor's next step comes after it;
 *  - the stop word's acquire compare-and-swap and release store are atomic
 *    steps.  Memory is sequentially consistent in the model: the code's
 *    orderings (x86-64 loads in program order, the fence's full barrier,
 *    the release of start()) are what make that abstraction hold, and are
 *    argued in src/core/stop.cpp, not checked here.
 *
 * Property: the adds are conserved.  When every thread and the visitor have
 * finished, what the visitor moved to `moved` plus what remains in the
 * slots equals the number of adds (no update lost by a remote visit).
 * And no sequence commits on a CPU while a visitor works on it (between
 * the fence and start(); the ghost flag visiting[c]).
 *
 * Broken variants (each must make spin report an assertion violation):
 *  -DBROKEN_READ_BEFORE_STOP: the sequence reads its slot before it tests
 *     the stop word (the faster add the storm test caught, docs/design.md
 *     "Stop test before any data read"): a sequence that starts after the
 *     fence reads the slot before the visitor drains it and the word after
 *     the visitor cleared it, and stores a stale sum over the visit;
 *  -DBROKEN_NO_FENCE: the visitor sets the stop word but does not fence:
 *     a sequence that passed its stop test before the word was set commits
 *     during the visit.
 */

#define NCPU 2       /* CPUs */
#define NTHREAD 2    /* threads running sequences */
#define ADDS 2       /* adds per thread */
#define VISITS 2     /* visits by the remote thread */
#define NONE 255     /* no sequence in progress */
#define ALL NCPU     /* the visitor's target for stop_all/visit_all */

byte stop[NCPU];          /* the stop words (stop_state) */
byte slot[NCPU];          /* the per-CPU data: a counter's slot */
byte moved;               /* what the visitor drained out of the slots */
byte seq_cpu[NTHREAD];    /* CPU of thread t's sequence in progress, or NONE */
bool aborted[NTHREAD];    /* the kernel aborted thread t's sequence */
byte finished;            /* processes that have finished */
bool visiting[NCPU];      /* ghost: the visitor works on c (after its fence) */

/* One step of thread t's sequence: aborted, it restarts; else `body` runs.
 * The test and the step are one atomic action: the kernel's abort either
 * comes before the instruction (which then never runs) or after it. */
#define STEP(body) \
  atomic { \
    if \
    :: aborted[t] -> seq_cpu[t] = NONE; goto restart \
    :: else -> body \
    fi \
  }

/* A thread doing ADDS times "*slot += 1 on the current CPU" with the
 * add_sign shape of include/percpu/runtime/detail/arch/aarch64/rseq.hpp: stop test,
 * read the slot, compute, commit the store; seq::add's retry loop
 * (sequences.hpp: run<>) restarts it after an abort and waits out a stop. */
proctype adder(byte t) {
  byte c;      /* the CPU this attempt runs on */
  byte v;      /* the slot value read */
  byte u;
  byte n = 0;  /* adds done */
  do
  :: n < ADDS ->
restart:
     /* PERCPU_RSEQ_BEGIN: publish the descriptor, read cpu_id.  Whoever
      * ran a sequence on c before was preempted: its sequence is aborted. */
     atomic {
       if
       :: c = 0
       :: c = 1
       fi;
       for (u : 0 .. NTHREAD - 1) {
         if
         :: u != t && seq_cpu[u] == c -> aborted[u] = true
         :: else -> skip
         fi
       }
       u = 0;
       seq_cpu[t] = c;
       aborted[t] = false
     }
#ifdef BROKEN_READ_BEFORE_STOP
     STEP(v = slot[c]);
#endif
     /* PERCPU_RSEQ_CHECK_STOP: a stopped CPU is left, the word waited out
      * outside the sequence, and the add retried from its start. */
     STEP(if
          :: stop[c] != 0 -> seq_cpu[t] = NONE; goto stopped
          :: else -> skip
          fi);
#ifndef BROKEN_READ_BEFORE_STOP
     STEP(v = slot[c]);
#endif
     /* The commit: one store, or nothing when aborted. */
     STEP(assert(!visiting[c]); slot[c] = v + 1; v = 0; seq_cpu[t] = NONE);
     n++;
     goto next;
stopped:
     (stop[c] == 0);
     goto restart;
next:
     skip
  :: else -> break
  od;
  finished++
}

/* The remote thread: stop_state::visit(c, f) and visit_all(f)
 * (include/percpu/core/stop.hpp, src/core/stop.cpp), with f moving the slot's value
 * out, as a counter's fold or a cache's drain does. */
proctype visitor() {
  byte i, c, d, u, v;
  for (i : 1 .. VISITS) {
    if
    :: c = 0
    :: c = 1
    :: c = ALL
    fi;
    /* stop: set the word(s) with the acquire compare-and-swap, ascending
     * (one step: the visitor is the only stopper, so no word is ever found
     * set, and an adder reads only its own CPU's word) */
    atomic {
      for (d : 0 .. NCPU - 1) {
        if
        :: c == ALL || c == d -> assert(stop[d] == 0); stop[d] = 1
        :: else -> skip
        fi
      }
      d = 0
    }
#ifndef BROKEN_NO_FENCE
    /* fence: membarrier(PRIVATE_EXPEDITED_RSEQ[, FLAG_CPU, c]) aborts every
     * sequence in progress on the target CPU(s) */
    atomic {
      for (u : 0 .. NTHREAD - 1) {
        if
        :: seq_cpu[u] != NONE && (c == ALL || seq_cpu[u] == c) -> aborted[u] = true
        :: else -> skip
        fi
      }
      u = 0
    }
#endif
    /* visit: plain reads and writes of the stopped CPUs' data.  One
     * step per CPU: a sequence that interleaved with it would have to commit
     * there, which the assertion at the commit reports anyway. */
    for (d : 0 .. NCPU - 1) {
      atomic {
        if
        :: c == ALL || c == d ->
           visiting[d] = true;
           v = slot[d];
           slot[d] = 0;
           moved = moved + v;
           v = 0
        :: else -> skip
        fi
      }
    }
    /* start: clear the word(s) with a release store */
    atomic {
      for (d : 0 .. NCPU - 1) {
        if
        :: c == ALL || c == d -> visiting[d] = false; stop[d] = 0
        :: else -> skip
        fi
      }
      d = 0;
      c = 0
    }
  }
  finished++
}

init {
  byte t;
  atomic {
    for (t : 0 .. NTHREAD - 1) {
      seq_cpu[t] = NONE
    }
    for (t : 0 .. NTHREAD - 1) {
      run adder(t)
    }
    run visitor()
  }
  /* Conservation: nothing added was lost. */
  (finished == NTHREAD + 1);
  assert(moved + slot[0] + slot[1] == NTHREAD * ADDS)
}
