/* epoch.h - safe reclamation for liballot's rule table: readers that cost
 * two plain stores, writers that wait for them.
 *
 * The rule table is reached through one atomic pointer and replaced whole.
 * A decision reads it inside a read section (epoch_enter .. epoch_exit); a
 * writer that unpublished a table calls epoch_synchronize() and may free it
 * once that returns: every read section that could still see the old table
 * has ended.
 *
 * How: each thread that reads has a record (registered on its first read,
 * recycled when it exits) with one word, `state`: 0 outside a read section,
 * else the global epoch it saw on entry. A writer bumps the epoch, makes
 * every thread's earlier stores visible, then waits, for each record that
 * shows an older epoch, until that record changes. The "make visible" step
 * is membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) when the kernel has it,
 * so readers need no fence at all (only a compiler barrier); otherwise
 * readers issue a full fence after their store (slower, still lock-free).
 * This is the scheme of liburcu's urcu-memb flavour, with registration done
 * implicitly so callers of a library need not register threads.
 *
 * (Table loads are sequentially consistent: a plain load on x86 and arm64's
 * LDAR, the price of an acquire load.) ThreadSanitizer cannot see what
 * membarrier() orders, so TSan builds always use the second mode.
 *
 * The same per-thread record gives each thread a counter stripe: the first
 * EPOCH_STRIPES threads alive at once each own one stripe, written by that
 * thread only (no atomic read-modify-write); later threads share stripe
 * EPOCH_STRIPE_SHARED with atomic adds.
 *
 * Read sections do not nest, and must not be entered from a signal handler
 * that interrupted one. */
#ifndef ALLOT_ENFORCE_EPOCH_H
#define ALLOT_ENFORCE_EPOCH_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EPOCH_STRIPES       8u
#define EPOCH_STRIPE_SHARED EPOCH_STRIPES /* index of the shared stripe */

struct epoch_reader
{
    alignas(64) _Atomic uint64_t state; /* 0 idle, else the epoch entered */
    uint32_t stripe; /* owned stripe, or EPOCH_STRIPE_SHARED */
    _Atomic int in_use;
    struct epoch_reader *_Atomic next; /* registry list, append-only */
};

/* Once per process, before any read section: choose membarrier or fences.
 * Idempotent and thread-safe. 0, or ALLOT_ENOMEM/ALLOT_EINTERNAL. */
int epoch_global_init(void);

/* True when readers need no fence (membarrier registered). */
extern bool epoch_use_membarrier;
extern _Atomic uint64_t epoch_global;
/* initial-exec: one %fs-relative load, no __tls_get_addr call, also in the
 * shared library (a single pointer fits glibc's static TLS reserve). */
extern _Thread_local struct epoch_reader *epoch_tls_reader
    __attribute__((tls_model("initial-exec")));

/* Register the calling thread (the slow path of epoch_enter). NULL only if
 * out of memory. */
struct epoch_reader *epoch_register(void);

/* Enter a read section. Returns the thread's record (for epoch_exit and its
 * stripe), or NULL if the thread could not be registered (out of memory):
 * the caller must then not read the table. */
static inline struct epoch_reader *epoch_enter(void)
{
    struct epoch_reader *r = epoch_tls_reader;
    if (__builtin_expect(r == NULL, 0)) {
        r = epoch_register();
        if (r == NULL) {
            return NULL;
        }
    }
    uint64_t e = atomic_load_explicit(&epoch_global, memory_order_acquire);
    if (epoch_use_membarrier) {
        /* The writer's membarrier() stands in for our fence. */
        atomic_store_explicit(&r->state, e, memory_order_relaxed);
        atomic_signal_fence(memory_order_seq_cst);
    } else {
        /* Store then load, both sequentially consistent, against the
         * writer's store then load (Dekker): one of us sees the other. */
        atomic_store_explicit(&r->state, e, memory_order_seq_cst);
    }
    return r;
}

static inline void epoch_exit(struct epoch_reader *r)
{
    atomic_store_explicit(&r->state, 0, memory_order_release);
}

/* Wait until every read section that began before this call has ended.
 * Never call it inside a read section. May sleep; never fails. */
void epoch_synchronize(void);

/* Counters of the registry, for tests: records allocated, in use. */
void epoch_registry_counts(unsigned *records, unsigned *in_use);

#endif /* ALLOT_ENFORCE_EPOCH_H */
