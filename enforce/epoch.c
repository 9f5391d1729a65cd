/* epoch.c - reader registry and grace periods (see epoch.h).
 *
 * Why a writer may free after epoch_synchronize(): the writer publishes
 * the new table, bumps the epoch, then forces a full barrier on every
 * thread (membarrier) or issues one itself (fence mode, where readers fence
 * too). For each reader R one of these holds:
 *   - R's state store is visible to the scan: the writer sees R's epoch.
 *     Old epoch: R may hold the old table, so the writer waits until R's
 *     state changes (R left; a later entry loads the new table). New epoch:
 *     R loaded the epoch after the bump (acquire), so its table load comes
 *     after the publish and sees the new table.
 *   - R's store is not visible: R's barrier point came before its store,
 *     so its table load comes after the barrier, after the publish, and
 *     sees the new table.
 * State values only grow within a section, and a reader re-reads the epoch
 * on every entry, so a writer waits at most for the sections in progress
 * when it scanned (plus one that read the epoch just before the bump). */
#include "epoch.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../proto/allot_error.h"

bool epoch_use_membarrier;
_Atomic uint64_t epoch_global = 1;
_Thread_local struct epoch_reader *epoch_tls_reader
    __attribute__((tls_model("initial-exec")));

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rv;
static pthread_key_t reader_key;
static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct epoch_reader *_Atomic registry_head;
static unsigned registry_records;
static bool stripe_taken[EPOCH_STRIPES];

static long membarrier(int cmd)
{
    return syscall(__NR_membarrier, cmd, 0, 0);
}

/* A thread with a record exits: give the record and its stripe back. */
static void reader_release(void *arg)
{
    struct epoch_reader *r = arg;
    pthread_mutex_lock(&registry_mu);
    if (r->stripe < EPOCH_STRIPES) {
        stripe_taken[r->stripe] = false;
    }
    r->stripe = EPOCH_STRIPE_SHARED;
    atomic_store_explicit(&r->state, 0, memory_order_release);
    atomic_store_explicit(&r->in_use, 0, memory_order_release);
    pthread_mutex_unlock(&registry_mu);
    /* A later call on this thread (another key's destructor) registers
     * again rather than write into a record someone else may now own. */
    epoch_tls_reader = NULL;
}

static void init_once_fn(void)
{
    if (pthread_key_create(&reader_key, reader_release) != 0) {
        init_rv = ALLOT_ENOMEM;
        return;
    }
    /* Registering costs one system call per process; if the kernel (or a
     * seccomp filter) refuses, readers fence instead. */
#if defined(__SANITIZE_THREAD__)
    epoch_use_membarrier = false;
#else
    long q = membarrier(MEMBARRIER_CMD_QUERY);
    epoch_use_membarrier =
        getenv("ALLOT_EPOCH_FENCE") == NULL && q > 0 &&
        (q & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
        membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
#endif
}

int epoch_global_init(void)
{
    pthread_once(&init_once, init_once_fn);
    return init_rv;
}

struct epoch_reader *epoch_register(void)
{
    if (epoch_global_init() != 0) {
        return NULL;
    }
    pthread_mutex_lock(&registry_mu);
    struct epoch_reader *r = atomic_load(&registry_head);
    for (; r != NULL; r = atomic_load(&r->next)) {
        if (atomic_load(&r->in_use) == 0) {
            break;
        }
    }
    if (r == NULL) {
        r = aligned_alloc(64, sizeof *r);
        if (r == NULL) {
            pthread_mutex_unlock(&registry_mu);
            return NULL;
        }
        atomic_init(&r->state, 0);
        atomic_init(&r->in_use, 0);
        atomic_init(&r->next, atomic_load(&registry_head));
        /* Published before it is used: scanners see it idle. */
        atomic_store_explicit(&registry_head, r, memory_order_release);
        registry_records++;
    }
    atomic_store(&r->in_use, 1);
    r->stripe = EPOCH_STRIPE_SHARED;
    for (uint32_t i = 0; i < EPOCH_STRIPES; i++) {
        if (!stripe_taken[i]) {
            stripe_taken[i] = true;
            r->stripe = i;
            break;
        }
    }
    pthread_mutex_unlock(&registry_mu);
    if (pthread_setspecific(reader_key, r) != 0) {
        reader_release(r);
        return NULL;
    }
    epoch_tls_reader = r;
    return r;
}

static void pause_briefly(unsigned spins)
{
    if (spins < 64) {
        sched_yield();
        return;
    }
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 50000};
    nanosleep(&ts, NULL);
}

void epoch_synchronize(void)
{
    if (epoch_global_init() != 0) {
        return; /* no reader could register either */
    }
    /* The caller's table store was sequentially consistent, and so is
     * this bump; in fence mode the loads below are too (Dekker). */
    uint64_t e = atomic_fetch_add(&epoch_global, 1) + 1;
    if (epoch_use_membarrier) {
        /* Registered at init, it cannot fail; if it did, readers would be
         * unprotected, so stop rather than free under them. */
        while (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0) {
            pause_briefly(64);
        }
    }
    struct epoch_reader *r =
        atomic_load_explicit(&registry_head, memory_order_acquire);
    for (; r != NULL;
         r = atomic_load_explicit(&r->next, memory_order_acquire)) {
        uint64_t s = atomic_load_explicit(&r->state, memory_order_seq_cst);
        if (s == 0 || s >= e) {
            continue;
        }
        for (unsigned spins = 0;
             atomic_load_explicit(&r->state, memory_order_acquire) == s;
             spins++) {
            pause_briefly(spins);
        }
    }
}

void epoch_registry_counts(unsigned *records, unsigned *in_use)
{
    pthread_mutex_lock(&registry_mu);
    unsigned n = 0;
    for (struct epoch_reader *r = atomic_load(&registry_head); r != NULL;
         r = atomic_load(&r->next)) {
        n += atomic_load(&r->in_use) != 0;
    }
    *records = registry_records;
    *in_use = n;
    pthread_mutex_unlock(&registry_mu);
}
