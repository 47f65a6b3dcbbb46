/*
 * Where a program's memcpy calls come from, and how large they are: an LD_PRELOAD shim that
 * counts calls by (call site, size) and writes them out at exit as "object offset size count".
 * callgrind says how many instructions memcpy costs; this says which moves they are (a
 * struct or future moved by value shows up as the same size from the same few sites).
 *
 *   gcc -O2 -shared -fPIC -o /tmp/memcpy_sites.so bench/memcpy_sites.c -ldl
 *   MEMCPY_SITES=/tmp/sites.txt LD_PRELOAD=/tmp/memcpy_sites.so target/release/ferroway run --config F &
 *   h2load --h1 -n 10000 -c 16 http://127.0.0.1:PORT/small; kill -TERM %1
 *   sort -k4 -n -r /tmp/sites.txt | head -40 | while read obj off size n; do
 *     echo "$size bytes x$((n / 10000))"; addr2line -e target/release/ferroway -i -f -C "$off"; done
 *
 * Not thread-safe (a rare lost count on a multi-threaded run); use it with `workers: 1`.
 * Written by hand: valgrind and perf see memcpy's cost, not its sizes per call site.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS 65536
static struct { void *site; size_t size; unsigned long count; } table[SLOTS];
static void *(*real_memcpy)(void *, const void *, size_t);

static void dump(void) {
  const char *path = getenv("MEMCPY_SITES");
  FILE *f = fopen(path ? path : "memcpy-sites.txt", "w");
  if (!f) return;
  for (int i = 0; i < SLOTS; i++) {
    if (!table[i].count) continue;
    Dl_info info;
    uintptr_t offset = (uintptr_t)table[i].site;
    const char *object = "?";
    if (dladdr(table[i].site, &info)) {
      offset -= (uintptr_t)info.dli_fbase;
      object = info.dli_fname;
    }
    fprintf(f, "%s 0x%lx %zu %lu\n", object, (unsigned long)offset, table[i].size, table[i].count);
  }
  fclose(f);
}

__attribute__((constructor)) static void init(void) {
  real_memcpy = (void *(*)(void *, const void *, size_t))dlsym(RTLD_NEXT, "memcpy");
  atexit(dump);
}

void *memcpy(void *dst, const void *src, size_t n) {
  void *site = __builtin_return_address(0);
  uintptr_t h = ((uintptr_t)site * 2654435761u ^ n * 40503u) % SLOTS;
  for (int k = 0; k < SLOTS; k++, h = (h + 1) % SLOTS) {
    if (table[h].count == 0) {
      table[h].site = site;
      table[h].size = n;
      table[h].count = 1;
      break;
    }
    if (table[h].site == site && table[h].size == n) {
      table[h].count++;
      break;
    }
  }
  if (!real_memcpy) {
    /* Before the constructor ran (the loader's own copies). */
    volatile char *d = dst; /* volatile: the compiler must not make this loop a memcpy call */
    const char *s = src;
    for (size_t i = 0; i < n; i++) d[i] = s[i];
    return dst;
  }
  return real_memcpy(dst, src, n);
}
