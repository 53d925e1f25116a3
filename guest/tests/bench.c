/* CPU benchmark: CRC32, matrix multiply, insertion/quick sort, linked-list walk, branches and
 * calls, repeated BENCH_ITERS times. Prints a deterministic checksum; nothing timing-related. */
#include "test.h"
#ifndef BENCH_ITERS
#define BENCH_ITERS 40
#endif
#define BUF 4096
#define N 24
#define SORTN 1024
#define LISTN 2048

static unsigned char buf[BUF];
static u32 crc_table[256];
static i32 ma[N][N], mb[N][N], mc[N][N];
static u32 arr[SORTN];
struct node { struct node *next; u32 val; };
static struct node nodes[LISTN];
static u64 rng = 0x243f6a8885a308d3UL;

static u64 xorshift(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void crc_init(void) {
  for (u32 i = 0; i < 256; i++) {
    u32 c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}
static u32 crc32(const unsigned char *p, unsigned long n, u32 crc) {
  crc = ~crc;
  while (n--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}
static u64 matmul(void) {
  u64 s = 0;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++) {
      i32 acc = 0;
      for (int k = 0; k < N; k++) acc += ma[i][k] * mb[k][j];
      mc[i][j] = acc;
      s += (u32)acc;
    }
  for (int i = 0; i < N; i++) for (int j = 0; j < N; j++) ma[i][j] = mc[i][j] & 0xff;
  return s;
}
static void swap(u32 *a, u32 *b) { u32 t = *a; *a = *b; *b = t; }
static void quicksort(u32 *a, long lo, long hi) {
  while (hi - lo > 16) {
    u32 p = a[(lo + hi) / 2];
    long i = lo, j = hi;
    while (i <= j) {
      while (a[i] < p) i++;
      while (a[j] > p) j--;
      if (i <= j) { swap(&a[i], &a[j]); i++; j--; }
    }
    if (j - lo < hi - i) { quicksort(a, lo, j); lo = i; } else { quicksort(a, i, hi); hi = j; }
  }
  for (long i = lo + 1; i <= hi; i++) {
    u32 v = a[i]; long j = i - 1;
    while (j >= lo && a[j] > v) { a[j + 1] = a[j]; j--; }
    a[j + 1] = v;
  }
}
static u64 sort_round(void) {
  for (int i = 0; i < SORTN; i++) arr[i] = (u32)xorshift();
  quicksort(arr, 0, SORTN - 1);
  u64 s = 0;
  for (int i = 1; i < SORTN; i++) s += (arr[i] >= arr[i - 1]) ? arr[i] >> 20 : 0xdead;
  return s;
}
static u64 list_walk(void) {
  u64 s = 0; struct node *p = &nodes[0];
  for (int i = 0; i < LISTN * 2; i++) { s += p->val; p->val = p->val * 3 + 1; p = p->next; }
  return s;
}
static __attribute__((noinline)) u64 collatz(u64 n) {
  u64 steps = 0;
  while (n != 1) { n = (n & 1) ? 3 * n + 1 : n >> 1; steps++; }
  return steps;
}

int main(void) {
  crc_init();
  for (int i = 0; i < BUF; i++) buf[i] = (unsigned char)xorshift();
  for (int i = 0; i < N; i++) for (int j = 0; j < N; j++) { ma[i][j] = (i32)(xorshift() & 0xff); mb[i][j] = (i32)(xorshift() & 0xff) - 128; }
  /* list: a permutation cycle */
  for (int i = 0; i < LISTN; i++) { nodes[i].val = (u32)i; nodes[i].next = &nodes[(i * 1031 + 7) % LISTN]; }
  u64 sum = 0;
  u32 crc = 0;
  for (int it = 0; it < BENCH_ITERS; it++) {
    crc = crc32(buf, BUF, crc);
    buf[it % BUF] ^= (unsigned char)crc;
    sum += crc;
    sum = sum * 31 + matmul();
    sum = sum * 31 + sort_round();
    sum = sum * 31 + list_walk();
    for (u64 n = 1; n < 300; n++) sum += collatz(n + (u64)it);
  }
  puts_("bench: iters "); putdec(BENCH_ITERS);
  puts_(" crc "); puthex(crc);
  puts_(" checksum "); puthex(sum); putc_('\n');
#ifdef BENCH_REPORT_INSTRET
  /* measurement build only (not deterministic across machines): instructions retired so far */
  puts_("instret "); putdec(csrr(minstret)); putc_('\n');
#endif
  CHECK("bench completed", 1, 1);
  finish();
}
