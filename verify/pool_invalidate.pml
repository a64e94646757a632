/*
 * pool_invalidate.pml - the generation-safe invalidate of percpu's
 * pool_cache, as a Promela model for spin.
 *
 * Problem: pool_cache keeps constructed objects for reuse in per-CPU arrays
 * and in a depot of magazines.  invalidate() must throw away everything
 * cached, everywhere: once it returns, no get() that begins afterwards may
 * hand out an object constructed before the invalidate began.  Meanwhile
 * other threads keep getting and putting objects - objects they took
 * before the call are put back during and after it, refills move magazines
 * from the depot into CPU arrays, full arrays flush magazines into the
 * depot - and none of them waits for the invalidate.
 *
 * Mechanism (include/percpu/pool_cache.hpp, src/pool_cache/invalidate.cpp): every
 * object carries a stamp, the generation G current when it was
 * constructed.  invalidate() first increments G, then stops every CPU and
 * fences (stop.hpp), empties every array, starts the CPUs, empties the
 * depot under its lock, and destructs what it found.  Every way back into
 * the cache checks the stamp against G at a point the invalidate orders:
 *  - a put's push is guarded: inside the restartable sequence, after the
 *    stop test, it compares G with the object's stamp and commits only when
 *    they are equal (seq::push with a seq::guard).  A push that read the old
 *    G either commits before the fence (and the array drain finds the
 *    object) or is aborted by it and, restarting, reads the new G;
 *  - the depot keeps, under its lock, only objects whose stamp equals G
 *    (give); the invalidate takes the lock after its increment;
 *  - a refill (get's slow path) pushes the rest of a magazine taken from
 *    the depot with a guard on the objects' OWN stamp: the depot may still
 *    hold magazines of the old generation between the increment and the
 *    depot drain;
 *  - construct_new stamps the object with G and checks G again afterwards.
 *
 * What the model abstracts:
 *  - NCPU CPUs, each with one array of CAP object slots and one thread
 *    running on it (no migration: a thread's sequences run on its CPU);
 *  - NOBJ object slots.  An object is constructed (live) or not; its stamp
 *    is its generation.  Containers hold object indices: the CPU arrays
 *    (stacks), the depot (full magazines), a thread's private magazine,
 *    what a thread holds.  The slabs are the set of slots not live;
 *  - a restartable sequence is a series of atomic steps on in_seq[c] and
 *    aborted[c]: start with the stop test, the guard read (guarded pushes),
 *    and the commit, which also reads the array's count (after the stop
 *    test only a stopper could change the array, and its fence aborts the
 *    sequence, so the count read and the commit need no step between them;
 *    stop_fence_visit.pml checks that protocol itself with every read a
 *    step of its own).  The fence is one atomic step
 *    that sets aborted[c] for every CPU with a sequence in progress; every
 *    step tests aborted[c] first, in the same atomic step (the kernel moves
 *    the instruction pointer to the abort handler: nothing after the abort
 *    runs) and restarts the sequence.  Preemption aborts are not modelled:
 *    with one thread per CPU a restart only returns the thread to a state
 *    it had before;
 *  - the stop word is stop[c]; the invalidator is the only stopper;
 *  - the depot lock: each depot operation (take_full, give, drain_depot) is
 *    one atomic step.  Everything the depot holds is only touched under
 *    the lock; the one outside value read under it, G, is read once, so an
 *    atomic step is an exact picture of the critical section;
 *  - the magazine size is MAG (=1) objects per flush; a magazine holds up
 *    to MAG + 1 objects (the flushed ones and the put object), as in
 *    put_slow.  Empty magazines, working-set trim and magazine resizing are
 *    left out (they only destruct objects or change sizes);
 *  - memory is sequentially consistent; the code's seq_cst generation
 *    accesses and the fence's full barrier are what justify that.
 *  - initial state: any distribution of the NOBJ objects (all of the
 *    current generation) over "not constructed", the arrays, the depot and
 *    the threads' hands; then each thread does a few gets or puts while the
 *    invalidator runs once, starting at any moment.
 *
 * Property (the contract of invalidate() in pool_cache.hpp): a get that
 * begins after invalidate() returned hands out only objects stamped with
 * the generation that invalidate created (INV_GEN), i.e. constructed after
 * it began.  Also: no object is handed out that is destructed, still
 * cached or held by a thread; everything a drain finds was cached (the
 * ghost where[]); no array is drained while a sequence could commit there.
 *
 * Broken variants (each must make spin report an assertion violation):
 *  -DBROKEN_BUMP_AFTER_FENCE: the invalidator increments G after it has
 *     stopped, fenced and drained the arrays: a put of an old object whose
 *     push runs after the drain still sees the old G and caches it;
 *  -DBROKEN_REFILL_GUARD_CURRENT: the refill guards its push with the G it
 *     read under the depot lock instead of the objects' own stamp: a
 *     refill that takes an old magazine the invalidate has not drained yet
 *     pushes old objects into an array the invalidate has already emptied;
 *  -DBROKEN_UNGUARDED_PUT: a put's push has no guard at all (the stamp is
 *     checked only in put_slow).
 */

#define NOBJ 3       /* object slots */
#define NCPU 2       /* CPUs, one thread each */
#define CAP 2        /* capacity of a CPU array (two magazines of MAG) */
#define MAG 1        /* objects a flush moves out of a full array */
#define HOLD 2       /* objects a thread holds at most */
#define NDEPOT 3     /* full magazines the depot can hold */
#define OPS0 3       /* gets and puts by the thread of CPU 0 */
#define OPS1 2       /* gets and puts by the thread of CPU 1 */
#define NONE 255
#define OLD_GEN 1    /* generation_ starts at 1 */
#define INV_GEN 2    /* the generation the invalidate creates */

typedef magazine {
  byte n;              /* objects in it */
  byte it[NOBJ]        /* it[0 .. n) */
};

byte G = OLD_GEN;             /* cache.generation_ */
bool live[NOBJ];              /* the slot holds a constructed object */
byte stamp[NOBJ];             /* its generation (pool_header::generation) */
byte where[NOBJ];             /* ghost: IN_CACHE, HELD or NOWHERE */
#define NOWHERE 0
#define IN_CACHE 1
#define HELD 2

byte items[NCPU * CAP];       /* cpu_array::items of CPU c at c * CAP */
byte count[NCPU];             /* cpu_array::count */
byte stop[NCPU];              /* stop words (stop_state) */
bool in_seq[NCPU];            /* a sequence is in progress on c */
bool aborted[NCPU];           /* the fence aborted it */

magazine depot[NDEPOT];       /* the depot's full magazines, a stack */
byte depot_n;

byte held[NCPU * HOLD];       /* objects thread c holds, a stack */
byte nheld[NCPU];

bool inv_done;                /* invalidate() has returned */

/* Destructs object x and gives its slot back to the slabs (the stamp is
 * cleared only to keep the state space small). */
#define DESTROY(x) live[x] = false; stamp[x] = 0

/* ---- restartable sequences on the thread's CPU c ------------------------ */

/* PERCPU_RSEQ_BEGIN and PERCPU_RSEQ_CHECK_STOP in one step: publish the
 * descriptor, test the stop word; a stopped CPU is left and waited out
 * (the retry loop of sequences.hpp), then the sequence starts again.  (A
 * sequence that has started but not yet read the word is, for everyone
 * else, the same as one that has not started: the fence would only send it
 * back to its start.) */
#define BEGIN(stopped) \
  atomic { \
    if \
    :: stop[c] != 0 -> goto stopped \
    :: else -> in_seq[c] = true; aborted[c] = false \
    fi \
  }
/* One step: aborted, the sequence restarts at `restart`; else `body`. */
#define STEP(restart, body) \
  atomic { \
    if \
    :: aborted[c] -> in_seq[c] = false; goto restart \
    :: else -> body \
    fi \
  }
#define LEAVE in_seq[c] = false

/* ---- depot (src/pool_cache/: depot.cpp take_full, invalidate.cpp give)  */

/* give(m): under the depot lock, keep only objects whose stamp is the
 * current G; destruct the others; a non-empty magazine joins the full
 * list. */
inline give(m) {
  atomic {
    k = 0;
    for (i : 0 .. m.n - 1) {
      if
      :: stamp[m.it[i]] == G ->
         depot[depot_n].it[k] = m.it[i];
         k++
      :: else ->
         assert(where[m.it[i]] == NOWHERE);
         DESTROY(m.it[i])
      fi
    }
    if
    :: k > 0 ->
       for (i : 0 .. k - 1) {
         where[depot[depot_n].it[i]] = IN_CACHE
       }
       depot[depot_n].n = k;
       depot_n++
    :: else -> skip
    fi;
    m.n = 0
  }
}

/* The thread of CPU c: OPS0 or OPS1 times get() or put() (pool_cache.hpp) with
 * their slow paths get_slow/construct_new and put_slow (src/pool_cache/invalidate.cpp). */
proctype user(byte c) {
  byte op, o, n, g, k, i;
  bool late;            /* this get began after invalidate() returned */
  magazine m;           /* the thread's private magazine */
  for (op : 1 .. (c == 0 -> OPS0 : OPS1)) {
    if
    :: nheld[c] < HOLD -> goto get
    :: nheld[c] > 0 -> goto put
    fi;

    /* ---- get(): the pop sequence, else get_slow ---- */
get:
    late = inv_done;
pop_restart:
    BEGIN(pop_stopped);
    STEP(pop_restart,   /* read count; commit: count -= 1 */
         n = count[c];
         if
         :: n == 0 -> LEAVE; goto get_slow
         :: else -> skip
         fi;
         o = items[c * CAP + n - 1];
         assert(where[o] == IN_CACHE);
         where[o] = NOWHERE;
         items[c * CAP + n - 1] = 0;
         count[c] = n - 1;
         LEAVE);
    goto got;
pop_stopped:
    (stop[c] == 0);
    goto pop_restart;

get_slow:
    /* take_full: a full magazine from the depot, under its lock */
    atomic {
      if
      :: depot_n > 0 ->
         depot_n--;
         m.n = depot[depot_n].n;
         for (i : 0 .. m.n - 1) {
           m.it[i] = depot[depot_n].it[i];
           depot[depot_n].it[i] = 0;
           where[m.it[i]] = NOWHERE
         }
         depot[depot_n].n = 0;
#ifdef BROKEN_REFILL_GUARD_CURRENT
         g = G;      /* the generation read under the depot lock */
#endif
         skip
      :: else -> m.n = 0
      fi
    }
    if
    :: m.n == 0 -> goto construct_new
    :: else -> skip
    fi;
    /* hand out the top object whatever its generation */
    m.n--;
    o = m.it[m.n];
    if
    :: m.n == 0 -> goto got
    :: else -> skip
    fi;
#ifndef BROKEN_REFILL_GUARD_CURRENT
    g = stamp[m.it[0]];    /* the objects' own generation */
#endif
    /* push_batch guarded by G == g: the rest goes into this CPU's array */
pb_restart:
    BEGIN(pb_stopped);
    STEP(pb_restart, if      /* the guard */
                     :: G != g -> LEAVE; goto pb_done
                     :: else -> skip
                     fi);
    STEP(pb_restart,   /* read count; commit: count += k */
         n = count[c];
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
           items[c * CAP + n + i] = m.it[i];
           where[m.it[i]] = IN_CACHE
         }
         count[c] = n + k;
         for (i : k .. m.n - 1) {
           m.it[i - k] = m.it[i];
           m.it[i] = 0
         }
         m.n = m.n - k;
         LEAVE);
    goto pb_done;
pb_stopped:
    (stop[c] == 0);
    goto pb_restart;
pb_done:
    give(m);     /* what did not fit or was refused; give destructs stale ones */
    goto got;

construct_new:
    atomic {     /* take_slot under the slab lock */
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
    :: o == NONE -> goto get_done   /* get() fails: no memory */
    :: else -> skip
    fi;
construct:
    g = G;
    stamp[o] = g;      /* the constructor runs here */
    if
    :: G != g -> goto construct    /* an invalidate began: build it again */
    :: else -> skip
    fi;

got:
    /* the object is handed out */
    assert(where[o] == NOWHERE);
    assert(live[o]);
    assert(!late || stamp[o] == INV_GEN);
    where[o] = HELD;
    held[c * HOLD + nheld[c]] = o;
    nheld[c]++;
get_done:
    goto op_done;

    /* ---- put(): the guarded push, else put_slow ---- */
put:
    nheld[c]--;
    o = held[c * HOLD + nheld[c]];
    held[c * HOLD + nheld[c]] = 0;
    where[o] = NOWHERE;
push_restart:
    BEGIN(push_stopped);
#ifndef BROKEN_UNGUARDED_PUT
    STEP(push_restart, if     /* the guard: G == the object's stamp */
                       :: G != stamp[o] -> LEAVE; goto put_slow
                       :: else -> skip
                       fi);
#endif
    STEP(push_restart,   /* read count; commit: count += 1 */
         n = count[c];
         if
         :: n >= CAP -> LEAVE; goto put_slow
         :: else -> skip
         fi;
         items[c * CAP + n] = o;
         where[o] = IN_CACHE;
         count[c] = n + 1;
         LEAVE);
    goto op_done;
push_stopped:
    (stop[c] == 0);
    goto push_restart;

put_slow:
    if
    :: atomic { stamp[o] != G -> DESTROY(o) }   /* older: destructed */
       goto op_done
    :: else -> skip
    fi;
    /* the array is full: pop_batch MAG objects into a magazine, add o */
    m.n = 0;
popb_restart:
    BEGIN(popb_stopped);
    STEP(popb_restart,   /* read count; commit: count -= k */
         n = count[c];
         k = MAG;
         if
         :: k > n -> k = n
         :: else -> skip
         fi;
         for (i : 0 .. k - 1) {
           m.it[i] = items[c * CAP + n - k + i];
           items[c * CAP + n - k + i] = 0;
           where[m.it[i]] = NOWHERE
         }
         count[c] = n - k;
         m.n = k;
         LEAVE);
    goto popb_done;
popb_stopped:
    (stop[c] == 0);
    goto popb_restart;
popb_done:
    m.it[m.n] = o;
    m.n++;
    give(m);

op_done:
    /* forget this operation's temporaries (fewer distinct states) */
    atomic {
      o = 0; n = 0; g = 0; k = 0; i = 0; late = false;
      m.n = 0; m.it[0] = 0; m.it[1] = 0; m.it[2] = 0
    }
  }
}

/* invalidate() (src/pool_cache/invalidate.cpp): bump, stop_all + fence, drain every
 * array, start_all, drain the depot, destruct, return. */
proctype invalidator() {
  byte d, i;
#ifndef BROKEN_BUMP_AFTER_FENCE
  G++;                  /* the seq_cst increment comes first */
#endif
  /* stop_all: every stop word, ascending.  One step: between two of the
   * words only the thread of a CPU not yet stopped could act, and it reads
   * no other CPU's word, so its step commutes with the earlier stores. */
  atomic {
    for (d : 0 .. NCPU - 1) {
      stop[d] = 1
    }
    d = 0
  }
  /* one broadcast fence: every sequence in progress is aborted */
  atomic {
    for (d : 0 .. NCPU - 1) {
      if
      :: in_seq[d] -> aborted[d] = true
      :: else -> skip
      fi
    }
    d = 0
  }
  /* visit_all with drain_cpu: every stopped array emptied (no sequence can
   * touch a stopped array, so the drains of all CPUs are one step) */
  atomic {
    for (d : 0 .. NCPU - 1) {
      for (i : 0 .. count[d] - 1) {
        assert(!in_seq[d] || aborted[d]);   /* no sequence can commit here */
        assert(where[items[d * CAP + i]] == IN_CACHE);
        where[items[d * CAP + i]] = NOWHERE;
        DESTROY(items[d * CAP + i]);   /* destructed with the victims */
        items[d * CAP + i] = 0
      }
      count[d] = 0
    }
    d = 0;
    i = 0
  }
  /* start_all: release stores (one step, as for stop_all) */
  atomic {
    for (d : 0 .. NCPU - 1) {
      stop[d] = 0
    }
    d = 0
  }
#ifdef BROKEN_BUMP_AFTER_FENCE
  G++;                  /* too late: after the fence and the array drain */
#endif
  atomic {                             /* drain_depot, under the depot lock */
    for (d : 0 .. depot_n - 1) {
      for (i : 0 .. depot[d].n - 1) {
        assert(where[depot[d].it[i]] == IN_CACHE);
        where[depot[d].it[i]] = NOWHERE;
        DESTROY(depot[d].it[i]);
        depot[d].it[i] = 0
      }
      depot[d].n = 0
    }
    depot_n = 0;
    d = 0;
    i = 0
  }
  inv_done = true       /* invalidate() returns */
}

/* Every distribution of NOBJ objects of the current generation over "not
 * constructed", the CPU arrays, one depot magazine and the threads' hands
 * (up to a renaming of the objects). */
init {
  byte o, c, place;
  atomic {
    place = 0;
    for (o : 0 .. NOBJ - 1) {
      /* objects are interchangeable: choose places in ascending order */
      do
      :: break
      :: place < 5 -> place++
      od;
      if
      :: place == 0 -> skip    /* not constructed */
      :: place == 1 || place == 2 ->
         c = place - 1;
         if
         :: count[c] < CAP ->
            items[c * CAP + count[c]] = o;
            count[c]++;
            where[o] = IN_CACHE;
            live[o] = true
         :: else -> skip
         fi
      :: place == 3 ->
         depot[0].it[depot[0].n] = o;
         depot[0].n++;
         depot_n = 1;
         where[o] = IN_CACHE;
         live[o] = true
      :: place == 4 || place == 5 ->
         c = place - 4;
         if
         :: nheld[c] < HOLD ->
            held[c * HOLD + nheld[c]] = o;
            nheld[c]++;
            where[o] = HELD;
            live[o] = true
         :: else -> skip
         fi
      fi;
      stamp[o] = OLD_GEN
    }
    for (c : 0 .. NCPU - 1) {
      run user(c)
    }
    run invalidator();
    o = 0;
    c = 0;
    place = 0
  }
}
