/*
 * fsync_fault.so: an LD_PRELOAD shim that makes fsync(2) and fdatasync(2) fail with
 * EIO, the way a failing disk does, for tests of the real daemon binary.
 *
 * Environment (read by the shim in the daemon's process):
 *   FSYNC_FAULT_CONTROL  a path; while a file exists there, every fsync/fdatasync of a
 *                        file named FSYNC_FAULT_NAME fails
 *   FSYNC_FAULT_NAME     the base name of the files to fail (e.g. audit.ndjson)
 *
 * A failure also does what the kernel may do after a failed writeback: the data
 * written since the file's last successful fsync is lost. The shim overwrites that
 * range with zero bytes (the file keeps its length, as a file whose dirty pages were
 * dropped reads back its unwritten blocks). A writer that counts the failed data as
 * written, or that keeps writing after it without cutting the file back, leaves NUL
 * bytes or missing lines behind, which the test sees.
 *
 * Other descriptors, and every call while the control file is absent, go to the real
 * functions. The shim remembers, per inode, the file's length at its last successful
 * fsync as it was when that fsync started (a small fixed table; enough for one test
 * daemon).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOTS 64

struct synced {
    dev_t dev;
    ino_t ino;
    off_t len;
    int used;
};

static struct synced table[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct synced *slot(const struct stat *st, int create) {
    for (int i = 0; i < SLOTS; i++) {
        if (table[i].used && table[i].dev == st->st_dev && table[i].ino == st->st_ino) {
            return &table[i];
        }
    }
    if (!create) {
        return NULL;
    }
    for (int i = 0; i < SLOTS; i++) {
        if (!table[i].used) {
            table[i].used = 1;
            table[i].dev = st->st_dev;
            table[i].ino = st->st_ino;
            table[i].len = 0;
            return &table[i];
        }
    }
    return NULL;
}

/* Whether fd is a regular file named FSYNC_FAULT_NAME. */
static int targeted(int fd, struct stat *st) {
    const char *name = getenv("FSYNC_FAULT_NAME");
    if (name == NULL || fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        return 0;
    }
    char link[64];
    char path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) {
        return 0;
    }
    path[n] = '\0';
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strcmp(base, name) == 0;
}

static int failing(void) {
    const char *control = getenv("FSYNC_FAULT_CONTROL");
    return control != NULL && access(control, F_OK) == 0;
}

/* The data since the last successful fsync is lost: overwrite it with zeros. */
static void lose_unsynced(int fd, const struct stat *st) {
    pthread_mutex_lock(&lock);
    struct synced *s = slot(st, 0);
    /* A file never fsync'd successfully under the shim: its history is unknown, so
     * nothing is taken away. */
    off_t from = s ? s->len : st->st_size;
    pthread_mutex_unlock(&lock);
    static const char zeros[4096];
    for (off_t at = from; at < st->st_size;) {
        size_t n = (size_t)(st->st_size - at) < sizeof zeros ? (size_t)(st->st_size - at) : sizeof zeros;
        ssize_t w = pwrite(fd, zeros, n, at);
        if (w <= 0) {
            break;
        }
        at += w;
    }
}

/* Only what was written before the fsync started is known to be durable after it. */
static void record_synced(const struct stat *before) {
    pthread_mutex_lock(&lock);
    struct synced *s = slot(before, 1);
    if (s) {
        s->len = before->st_size;
    }
    pthread_mutex_unlock(&lock);
}

static int call(int fd, const char *symbol) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, symbol);
    struct stat st;
    int target = targeted(fd, &st);
    if (target && failing()) {
        lose_unsynced(fd, &st);
        errno = EIO;
        return -1;
    }
    int rc = real(fd);
    if (rc == 0 && target) {
        record_synced(&st);
    }
    return rc;
}

int fsync(int fd) { return call(fd, "fsync"); }

int fdatasync(int fd) { return call(fd, "fdatasync"); }
