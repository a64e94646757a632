/*
 * rwlock_bias.pml - percpu::rwlock's reader bias, revoked by a writer with
 * one fence and re-armed by readers, as a Promela model for spin.
 *
 * Problem: the big-reader lock's readers count themselves per CPU without a
 * fence; a writer that finds the lock biased closes every CPU's gate and
 * pays for the readers' missing fences with one membarrier.  After that the
 * bias stays revoked: readers take a slow path with a fence of their own,
 * and the writers of a burst pay an atomic instruction each, no
 * membarrier.  A reader re-arms the bias after a quiet period.  Three things
 * must never let a reader and a writer in together: the revocation's fence,
 * the readers' fence while the bias is revoked, and the transitions
 * between the two modes racing with readers and writers.
 *
 * Mechanism (include/percpu/rwlock.hpp, src/rwlock.cpp, steps 1-3 of its
 * file comment; docs/counters-and-rwlock.md):
 *  - reader fast path (seq::try_add): a restartable add to "in" on the
 *    current CPU that tests the CPU's gate first; closed: the slow path;
 *  - reader slow path (enter_slow): if the writer bit is set, wait for it to
 *    clear and start again; else add to slow_in, full fence, read state_,
 *    and back out (add to slow_out) and wait if the writer bit is set now.
 *    After entering, it may re-arm: set the re-arming bit with a
 *    compare-and-swap against the state it read, open every gate, clear the
 *    revoked and re-arming bits;
 *  - unlock_shared: the same try_add to "out", else an add to slow_out;
 *  - writer (lock): set the writer and revoked bits with a compare-and-swap
 *    once neither the writer nor the re-arming bit is set; if the revoked bit
 *    was clear, close every gate (stop_all) and issue the membarrier fence;
 *    read all "out" counts, then all "in" counts, until they are equal;
 *  - writer (unlock): clear the writer bit (read-modify-write).
 *
 * What the model abstracts:
 *  - memory is x86-64's (TSO): each reader's count increments go through a
 *    store buffer of its own (per thread, not per CPU: that allows more
 *    reorderings than the hardware, never fewer), which a separate process
 *    drains at any moment, oldest first; a load reads memory.  Readers load
 *    only the gates and state_, which they never store except through
 *    locked read-modify-writes; a locked instruction and the full fence
 *    drain the thread's buffer first.  The writer's and the re-armer's
 *    stores to the gates and state_ go straight to memory: the gates are
 *    set by locked instructions, and cleared only by a re-armer that ends
 *    with a locked instruction, so their being visible early is the only
 *    case that matters;
 *  - an increment is applied when it leaves the buffer (count + 1 then):
 *    only the thread on a CPU changes that CPU's counts, and the hardware
 *    forwards a CPU's own pending store to its next load of the same place;
 *  - a restartable sequence is three atomic steps: start (pick the CPU:
 *    migration), the gate test, the commit (the increment enters the store
 *    buffer).  The membarrier is one atomic step that drains every store
 *    buffer and aborts every sequence in progress (the kernel then restarts
 *    it from its start).  Preemption aborts are left out: the sequence
 *    reads no data it commits, so a restart only repeats it;
 *  - the quiet period is not modelled: a reader on the slow path may try to
 *    re-arm whenever it has entered, which covers every timing of the real
 *    one.  The write count in state_ is left out: without it a re-arm's
 *    compare-and-swap succeeds more often, never less;
 *  - writers spin (the sleeping protocol, step 4, is about waking, not
 *    exclusion); the portable backend, where the gates are slot locks, is
 *    not modelled.
 *
 * Property: no reader is inside while a writer is, and no two writers are
 * (ghost counts checked as each enters).
 *
 * Broken variants (each must make spin report an assertion violation):
 *  -DBROKEN_NO_REVOKED_FENCE: the slow-path reader does not fence between
 *     its count and its look at the writer bit.  Its count waits in the
 *     store buffer while it reads the bit clear; a writer of the revoked
 *     mode, which issues no membarrier, reads the counts without it;
 *  -DBROKEN_NO_MEMBARRIER: the revoking writer closes the gates but issues
 *     no fence.  A fast-path reader that passed its gate before it closed
 *     has its count in the store buffer, unseen by the writer;
 *  -DBROKEN_STALE_BIAS_CHECK: the writer decides whether to revoke from a
 *     read of the revoked bit before its compare-and-swap.  A re-arm in
 *     between opens the gates, and the writer, believing the bias revoked,
 *     neither closes them nor fences;
 *  -DBROKEN_REARM_WITHOUT_EXCLUSION: the re-armer opens the gates after
 *     checking that no writer holds the lock, without holding the
 *     re-arming bit: a writer can come in between, find the bias revoked,
 *     and have its gates opened under it.
 */

#define NCPU 2
#ifndef NREADER
#define NREADER 1
#endif
#ifndef READS
#define READS 2    /* read sections per reader */
#endif
#ifndef NWRITER
#define NWRITER 2
#endif
#ifndef WRITES
#define WRITES 1   /* write sections per writer */
#endif
#define SB 3       /* store buffer entries per reader */

/* state_ bits */
#define W 1
#define R 2
#define REARM 4

/* the counts: index kind * NCPU + cpu */
#define IN 0
#define OUT 1
#define SLOW_IN 2
#define SLOW_OUT 3

byte state;
bool gate[NCPU];             /* true: closed (the CPU is stopped) */
byte count[4 * NCPU];
byte sb[NREADER * SB];       /* pending increments: count indexes, oldest first */
byte sb_len[NREADER];
bool in_seq[NREADER];        /* a restartable sequence is in progress */
bool aborted[NREADER];
byte readers_inside;         /* ghosts */
byte writers_inside;
byte finished;

/* (Only where sb_len[r] < SB: a store into a full buffer waits.) */
inline sb_push(r, idx) {
  sb[r * SB + sb_len[r]] = idx;
  sb_len[r]++
}

/* One pending increment of reader r leaves its store buffer. */
inline sb_drain_one(r) {
  count[sb[r * SB]]++;
  sb[r * SB] = sb[r * SB + 1];
  sb[r * SB + 1] = sb[r * SB + 2];
  sb[r * SB + 2] = 0;
  sb_len[r]--
}

inline sb_drain_all(r) {
  do
  :: sb_len[r] > 0 -> sb_drain_one(r)
  :: else -> break
  od
}

inline pick_cpu(c) {
  if
  :: c = 0
  :: c = 1
  fi
}

/* seq::try_add(kind): the add tests the gate of its CPU; `ok` says whether
 * it committed.  An aborted attempt starts again from the start. */
inline try_add(r, kind, c, ok) {
  do
  :: atomic { pick_cpu(c); in_seq[r] = true; aborted[r] = false };
     atomic {
       if
       :: aborted[r] -> in_seq[r] = false; retry = true
       :: else ->
          retry = false;
          if
          :: gate[c] -> in_seq[r] = false; ok = false
          :: else -> ok = true
          fi
       fi
     };
     if
     :: !retry && ok ->
        atomic {
          sb_len[r] < SB ->
          if
          :: aborted[r] -> in_seq[r] = false; retry = true
          :: else -> sb_push(r, kind * NCPU + c); in_seq[r] = false
          fi
        }
     :: else -> skip
     fi;
     if
     :: retry -> skip
     :: else -> break
     fi
  od
}

/* seq::add on the slow paths' never-stopped words: one commit step. */
inline slow_add(r, kind, c) {
  atomic { sb_len[r] < SB -> pick_cpu(c); sb_push(r, kind * NCPU + c) }
}

proctype memory(byte r) {
end:
  do
  :: atomic { sb_len[r] > 0 -> sb_drain_one(r) }
  od
}

proctype reader(byte r) {
  byte c, d, i, s;
  bool ok, retry;
  for (i : 1 .. READS) {
lock:
    try_add(r, IN, c, ok);
    if
    :: ok -> goto inside
    :: else -> skip
    fi;
    /* enter_slow */
    s = state;
    if
    :: s & W -> goto wait
    :: else -> skip
    fi;
    slow_add(r, SLOW_IN, c);
#ifndef BROKEN_NO_REVOKED_FENCE
    (sb_len[r] == 0);  /* full_barrier(): the buffer drains before the load */
#endif
    s = state;
    if
    :: s & W -> slow_add(r, SLOW_OUT, c); goto wait  /* back out */
    :: else -> skip
    fi;
    /* consider_rearm, at any moment */
    if
    :: (s & (R | REARM)) == R ->
#ifndef BROKEN_REARM_WITHOUT_EXCLUSION
       atomic {
         sb_drain_all(r);
         if
         :: state == s -> state = s | REARM
         :: else -> goto inside
         fi
       }
       for (d : 0 .. NCPU - 1) {
         gate[d] = false
       }
       d = 0;
       atomic { sb_drain_all(r); state = state & ~(R | REARM) }
#else
       if
       :: (state & (W | R | REARM)) == R -> skip
       :: else -> goto inside
       fi;
       for (d : 0 .. NCPU - 1) {
         gate[d] = false
       }
       d = 0;
       atomic { sb_drain_all(r); state = state & ~R }
#endif
    :: true -> skip
    fi;
    goto inside;
wait:
    ((state & W) == 0);
    goto lock;
inside:
    atomic { readers_inside++; assert(writers_inside == 0) }
    readers_inside--;
    /* unlock_shared */
    try_add(r, OUT, c, ok);
    if
    :: ok -> skip
    :: else -> slow_add(r, SLOW_OUT, c)
    fi;
    s = 0
  }
  finished++
}

proctype writer(byte w) {
  byte before, d, i, k, ins, outs, u;
  for (i : 1 .. WRITES) {
    /* take_writer_bit */
#ifdef BROKEN_STALE_BIAS_CHECK
    before = state;
    atomic { (state & (W | REARM)) == 0 -> state = state | W | R }
#else
    atomic { (state & (W | REARM)) == 0 -> before = state; state = state | W | R }
#endif
    if
    :: (before & R) == 0 ->
       /* stop_all: close every gate, then one broadcast fence */
       for (d : 0 .. NCPU - 1) {
         gate[d] = true
       }
       d = 0;
#ifndef BROKEN_NO_MEMBARRIER
       atomic {
         for (u : 0 .. NREADER - 1) {
           sb_drain_all(u);
           if
           :: in_seq[u] -> aborted[u] = true
           :: else -> skip
           fi
         }
         u = 0
       }
#endif
    :: else -> skip
    fi;
    /* wait_for_readers: every "out" count, then every "in" count */
scan:
    outs = 0;
    ins = 0;
    for (d : 0 .. NCPU - 1) {
      outs = outs + count[OUT * NCPU + d];
      outs = outs + count[SLOW_OUT * NCPU + d]
    }
    for (d : 0 .. NCPU - 1) {
      ins = ins + count[IN * NCPU + d];
      ins = ins + count[SLOW_IN * NCPU + d]
    }
    d = 0;
    if
    :: ins != outs -> goto scan
    :: else -> skip
    fi;
    atomic { writers_inside++; assert(writers_inside == 1 && readers_inside == 0) }
    writers_inside--;
    /* unlock */
    state = state & ~W;
    before = 0;
    ins = 0;
    outs = 0
  }
  finished++
}

init {
  byte t;
  atomic {
    for (t : 0 .. NREADER - 1) {
      run memory(t);
      run reader(t)
    }
    for (t : 0 .. NWRITER - 1) {
      run writer(t)
    }
  }
  (finished == NREADER + NWRITER)
}
