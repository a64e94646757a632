/*
 * pool_local.pml - pool_cache's per-CPU arrays with migrating threads, two
 * threads per CPU and invalidate_local(), as a Promela model for spin.
 *
 * Problem: pool_invalidate.pml checks the generation-safe invalidate() with
 * one thread pinned to each CPU.  Real threads migrate, and several share a
 * CPU.  A get's slow path takes a full magazine from the depot and then
 * pushes the rest of it into "this CPU's" array - by then the thread may
 * run on another CPU.  Two threads on one CPU interleave their sequences
 * whenever one is preempted.  And invalidate_local() stops only the CPU it
 * was called on, skipping the fence when it still runs there - correct only
 * because a sequence of another thread on that CPU was preempted to let
 * the stopper run, which aborts it.
 *
 * Mechanism (src/pool_cache.cpp, src/stop.cpp): every operation on an
 * array is a restartable sequence that reads its CPU, tests the CPU's stop
 * word, then reads the array's count and commits with one store; the
 * kernel aborts it on preemption, migration or a fence.  get_slow takes a
 * magazine under the depot lock (take_full), hands out its top object and
 * loads the rest with push_batch - a sequence like the others, on the CPU
 * the thread runs on when it starts; what does not fit goes back through
 * give().  put_slow moves a magazine's worth off a full array (pop_batch)
 * and gives it to the depot.  invalidate_local() reads its CPU c, stops c
 * (stop word, then a fence of c unless the caller runs on c at that
 * moment), empties c's array, starts c, empties the depot, destructs.
 *
 * What the model abstracts (see also pool_invalidate.pml):
 *  - NT threads on NCPU CPUs; cur[t] is the CPU thread t runs on.  A thread
 *    may migrate when it begins an operation, between take_full and the
 *    push_batch of a refill, and between invalidate_local's read of its
 *    CPU and its stop: a migration aborts the thread's sequence in
 *    progress;
 *  - preemption: every step of thread t runs on cur[t], so another thread
 *    on the same CPU is not running: its sequence in progress, if any, is
 *    aborted (the kernel aborts it when it resumes);
 *  - a sequence is BEGIN (CPU and stop test), a read of the count (and of
 *    the item, for a pop), and the commit, each an atomic step that first
 *    tests aborted[t];
 *  - no generation changes (invalidate() is pool_invalidate.pml's): every
 *    object is of the current generation, so the guards always pass and
 *    are left out, as are signal handlers' deferred puts;
 *  - the depot lock: take_full, give and the depot drain are atomic steps.
 *
 * Properties: an object handed out was cached (not destructed, not held by
 * another thread); everything a pop, a drain or a batch takes out of an
 * array or the depot was cached there; no sequence that could still commit
 * works on the array invalidate_local() drains while it drains it.
 *
 * Broken variants (each must make spin report an assertion violation):
 *  -DBROKEN_REFILL_STALE_CPU: a refill pushes into the array of the CPU it
 *     read when the get began, not of the CPU its sequence runs on; after a
 *     migration mid-refill, its commit races with the other thread's
 *     sequences on that array, which nothing aborts, and an object is
 *     handed out twice (migration);
 *  -DBROKEN_COUNT_READ_OUTSIDE: a refill reads the array's count before its
 *     sequence begins; another thread on the same CPU pops meanwhile, and
 *     the commit writes above a stale count (two threads per CPU);
 *  -DBROKEN_LOCAL_NO_FENCE: invalidate_local() never fences, reasoning that
 *     it stops its own CPU; after a migration between reading the CPU and
 *     stopping it, a sequence of the other thread on that CPU commits
 *     during the drain (invalidate_local).
 */

#define NOBJ 3       /* object slots */
#define NCPU 2       /* CPUs */
#define NT 2         /* threads */
#define CAP 2        /* capacity of a CPU array */
#define MAG 1        /* objects a flush moves out of a full array */
#define HOLD 2       /* objects a thread holds at most */
#define NDEPOT 3     /* full magazines the depot can hold */
#define OPS 3        /* operations per thread */
#define NONE 255

typedef magazine {
  byte n;              /* objects in it */
  byte it[NOBJ]        /* it[0 .. n) */
};

bool live[NOBJ];              /* the slot holds a constructed object */
byte where[NOBJ];             /* ghost: IN_CACHE, HELD or NOWHERE */
#define NOWHERE 0
#define IN_CACHE 1
#define HELD 2

byte items[NCPU * CAP];       /* cpu_array::items of CPU c at c * CAP */
byte count[NCPU];             /* cpu_array::count */
byte stop[NCPU];              /* stop words */
byte cur[NT];                 /* the CPU thread t runs on */
bool in_seq[NT];              /* thread t has a sequence in progress */
byte arr[NT];                 /* ghost: the array (CPU) that sequence works on */
bool aborted[NT];             /* the kernel aborted it */

magazine depot[NDEPOT];       /* full magazines, a stack */
byte depot_n;

byte held[NT * HOLD];         /* objects thread t holds, a stack */
byte nheld[NT];

/* invalidate_local() runs once, by either thread.  The stale-CPU variant
 * is checked without it, so that what spin reports is the data race on
 * the array itself (with it, the drain's check is violated first). */
#ifdef BROKEN_REFILL_STALE_CPU
bool local_called = true;
#else
bool local_called;
#endif
byte draining = NONE;         /* ghost: the CPU invalidate_local() drains */

#define DESTROY(x) live[x] = false
#define OTHER (1 - t)

/* Thread t runs on cur[t]: the other thread, if it is on that CPU, is not
 * running - preempted, its sequence in progress is aborted. */
#define RUN \
  if \
  :: in_seq[OTHER] && cur[OTHER] == cur[t] -> aborted[OTHER] = true \
  :: else -> skip \
  fi

/* Migration: to either CPU; a sequence in progress is aborted. */
#define MIGRATE \
  atomic { \
    if \
    :: cur[t] = 0 \
    :: cur[t] = 1 \
    fi; \
    if \
    :: in_seq[t] -> aborted[t] = true \
    :: else -> skip \
    fi \
  }

/* The start of a sequence: its CPU (sc), the array it works on (ac: the
 * array of sc, unless a broken variant says otherwise) and the stop test
 * of that array's CPU; a stopped CPU is waited out at `stopped`, then the
 * sequence starts again at `restart`. */
#define BEGIN(restart, stopped, array_cpu) \
  atomic { \
    RUN; \
    sc = cur[t]; \
    ac = array_cpu; \
    if \
    :: stop[ac] != 0 -> goto stopped \
    :: else -> in_seq[t] = true; aborted[t] = false; arr[t] = ac \
    fi \
  }
#define WAIT(stopped, restart) \
stopped: \
  (stop[ac] == 0); \
  goto restart
/* One step of the sequence: aborted, it restarts at `restart`. */
#define STEP(restart, body) \
  atomic { \
    RUN; \
    if \
    :: aborted[t] -> in_seq[t] = false; arr[t] = 0; goto restart \
    :: else -> body \
    fi \
  }
#define LEAVE in_seq[t] = false; arr[t] = 0

/* give(m) under the depot lock: a non-empty magazine joins the full list. */
inline give(m) {
  atomic {
    RUN;
    if
    :: m.n > 0 ->
       for (i : 0 .. m.n - 1) {
         depot[depot_n].it[i] = m.it[i];
         where[m.it[i]] = IN_CACHE
       }
       depot[depot_n].n = m.n;
       depot_n++
    :: else -> skip
    fi;
    m.n = 0
  }
}

proctype user(byte t) {
  byte op, o, n, k, i, sc, ac, gc, lc;
  magazine m;
  for (op : 1 .. OPS) {
    MIGRATE;     /* wherever the scheduler put the thread */
    if
    :: nheld[t] < HOLD -> goto get
    :: nheld[t] > 0 -> goto put
    :: atomic { !local_called -> local_called = true }; goto inv_local
    fi;

    /* ---- get(): pop, else get_slow ---- */
get:
    gc = cur[t];    /* the CPU when the get began */
pop_restart:
    BEGIN(pop_restart, pop_stopped, sc);
    STEP(pop_restart,   /* read the count and the top item */
         n = count[ac];
         if
         :: n == 0 -> LEAVE; goto get_slow
         :: else -> o = items[ac * CAP + n - 1]
         fi);
    STEP(pop_restart,   /* commit: count = n - 1 */
         assert(where[o] == IN_CACHE);
         where[o] = NOWHERE;
         count[ac] = n - 1;
         LEAVE);
    goto got;
    WAIT(pop_stopped, pop_restart);

get_slow:
    atomic {    /* take_full under the depot lock */
      RUN;
      if
      :: depot_n > 0 ->
         depot_n--;
         m.n = depot[depot_n].n;
         for (i : 0 .. m.n - 1) {
           m.it[i] = depot[depot_n].it[i];
           assert(where[m.it[i]] == IN_CACHE);
           where[m.it[i]] = NOWHERE;
           depot[depot_n].it[i] = 0
         }
         depot[depot_n].n = 0
      :: else -> m.n = 0
      fi
    }
    if
    :: m.n == 0 -> goto construct_new
    :: else -> skip
    fi;
    m.n--;
    o = m.it[m.n];      /* the top object is handed out */
    m.it[m.n] = 0;
    if
    :: m.n == 0 -> goto got
    :: else -> skip
    fi;
    MIGRATE;            /* mid-refill */
#ifdef BROKEN_COUNT_READ_OUTSIDE
    n = count[cur[t]];  /* read before the sequence */
#endif
pb_restart:
#ifdef BROKEN_REFILL_STALE_CPU
    BEGIN(pb_restart, pb_stopped, gc);   /* the array of the CPU the get began on */
#else
    BEGIN(pb_restart, pb_stopped, sc);
#endif
#ifndef BROKEN_COUNT_READ_OUTSIDE
    STEP(pb_restart, n = count[ac]);
#endif
    STEP(pb_restart,    /* commit: the rest above the count */
         if
         :: n >= CAP -> LEAVE; goto pb_done
         :: else -> skip
         fi;
         k = CAP - n;
         if
         :: k > m.n -> k = m.n
         :: else -> skip
         fi;
         for (i : 0 .. k - 1) {
           items[ac * CAP + n + i] = m.it[i];
           where[m.it[i]] = IN_CACHE
         }
         count[ac] = n + k;
         for (i : k .. m.n - 1) {
           m.it[i - k] = m.it[i];
           m.it[i] = 0
         }
         m.n = m.n - k;
         LEAVE);
    goto pb_done;
    WAIT(pb_stopped, pb_restart);
pb_done:
    give(m);
    goto got;

construct_new:
    atomic {    /* a free slot, constructed */
      RUN;
      o = NONE;
      for (i : 0 .. NOBJ - 1) {
        if
        :: o == NONE && !live[i] -> o = i
        :: else -> skip
        fi
      }
      if
      :: o != NONE -> live[o] = true
      :: else -> skip
      fi
    }
    if
    :: o == NONE -> goto op_done   /* no memory: get() fails */
    :: else -> skip
    fi;

got:
    atomic {
      assert(live[o]);
      assert(where[o] == NOWHERE);
      where[o] = HELD;
      held[t * HOLD + nheld[t]] = o;
      nheld[t]++
    }
    goto op_done;

    /* ---- put(): push, else put_slow ---- */
put:
    nheld[t]--;
    o = held[t * HOLD + nheld[t]];
    held[t * HOLD + nheld[t]] = 0;
    assert(where[o] == HELD && live[o]);
    where[o] = NOWHERE;
push_restart:
    BEGIN(push_restart, push_stopped, sc);
    STEP(push_restart, n = count[ac]);
    STEP(push_restart,   /* commit: count = n + 1 */
         if
         :: n >= CAP -> LEAVE; goto put_slow
         :: else -> skip
         fi;
         items[ac * CAP + n] = o;
         where[o] = IN_CACHE;
         count[ac] = n + 1;
         LEAVE);
    goto op_done;
    WAIT(push_stopped, push_restart);

put_slow:
    m.n = 0;
popb_restart:
    BEGIN(popb_restart, popb_stopped, sc);
    STEP(popb_restart, n = count[ac]);
    STEP(popb_restart,   /* commit: MAG objects off the top */
         k = MAG;
         if
         :: k > n -> k = n
         :: else -> skip
         fi;
         for (i : 0 .. k - 1) {
           m.it[i] = items[ac * CAP + n - k + i];
           assert(where[m.it[i]] == IN_CACHE);
           where[m.it[i]] = NOWHERE;
           items[ac * CAP + n - k + i] = 0
         }
         count[ac] = n - k;
         m.n = k;
         LEAVE);
    goto popb_done;
    WAIT(popb_stopped, popb_restart);
popb_done:
    m.it[m.n] = o;
    m.n++;
    give(m);
    goto op_done;

    /* ---- invalidate_local() ---- */
inv_local:
    lc = cur[t];        /* seq::current_cpu() */
    MIGRATE;            /* the thread may move before it stops lc */
    atomic { RUN; stop[lc] = 1 }
#ifndef BROKEN_LOCAL_NO_FENCE
    atomic {            /* stop(): a fence of lc unless the caller runs there */
      RUN;
      if
      :: cur[t] != lc && in_seq[OTHER] && cur[OTHER] == lc -> aborted[OTHER] = true
      :: else -> skip
      fi
    }
#endif
    atomic {            /* drain_cpu(lc) */
      RUN;
      assert(!(in_seq[OTHER] && arr[OTHER] == lc && !aborted[OTHER]));
      draining = lc;
      for (i : 0 .. count[lc] - 1) {
        assert(where[items[lc * CAP + i]] == IN_CACHE);
        where[items[lc * CAP + i]] = NOWHERE;
        DESTROY(items[lc * CAP + i]);
        items[lc * CAP + i] = 0
      }
      count[lc] = 0
    }
    atomic { RUN; draining = NONE; stop[lc] = 0 }
    atomic {            /* detach_full and destroy, under the depot lock */
      RUN;
      for (k : 0 .. depot_n - 1) {
        for (i : 0 .. depot[k].n - 1) {
          assert(where[depot[k].it[i]] == IN_CACHE);
          where[depot[k].it[i]] = NOWHERE;
          DESTROY(depot[k].it[i]);
          depot[k].it[i] = 0
        }
        depot[k].n = 0
      }
      depot_n = 0
    }

op_done:
    atomic {   /* forget this operation's temporaries */
      o = 0; n = 0; k = 0; i = 0; sc = 0; ac = 0; gc = 0; lc = 0;
      m.n = 0; m.it[0] = 0; m.it[1] = 0; m.it[2] = 0
    }
  }
}

/* Starting states: CPU 0's array full and a magazine of one object in the
 * depot; one object in CPU 0's array and a magazine of two in the depot (a
 * refill then has an object to push); one object in each array and one
 * held by thread 0. */
init {
  atomic {
    if
    :: items[0] = 0; items[1] = 1; count[0] = 2;
       depot[0].it[0] = 2; depot[0].n = 1; depot_n = 1;
       where[0] = IN_CACHE; where[1] = IN_CACHE; where[2] = IN_CACHE
    :: depot[0].it[0] = 1; depot[0].it[1] = 2; depot[0].n = 2; depot_n = 1;
       items[0] = 0; count[0] = 1;
       where[0] = IN_CACHE; where[1] = IN_CACHE; where[2] = IN_CACHE
    :: items[0] = 0; count[0] = 1;
       items[CAP] = 1; count[1] = 1;
       held[0] = 2; nheld[0] = 1;
       where[0] = IN_CACHE; where[1] = IN_CACHE; where[2] = HELD
    fi;
    live[0] = true; live[1] = true; live[2] = true;
    run user(0);
    run user(1)
  }
}
