/* ioloop: a virtio polling loop for record/replay property tests. Never finishes by itself.
 *
 * Probes the eight virtio-mmio slots (0x10001000 + n*0x1000) for version-2 devices by DeviceID
 * (1 = net, 2 = blk, 4 = rng), brings each one up (VIRTIO_F_VERSION_1 only, split virtqueues in
 * static memory) and then polls forever, with no interrupts, no timers and no WFI:
 *   - net: 4 receive buffers of 12 + 1514 bytes on queue 0; each received frame is hashed, echoed
 *     on queue 1 (MACs swapped; skipped while all transmit descriptors are in flight) and reposted;
 *   - blk: one 512-byte read always outstanding, of sector k % capacity (k = completed reads);
 *   - rng: one 16-byte request always outstanding;
 *   - UART: each received byte is hashed and echoed.
 * Every completion folds its data, length, status and the loop counter at that moment into a
 * 64-bit FNV-1a hash, so every input (and the instruction count it arrives at) changes the
 * state. Prints `ioloop ready`, then `ioloop events N hash 0x..` whenever N (frames + blk + rng +
 * UART bytes) reaches a multiple of 16. Register accesses are 32-bit, as virtio-mmio requires. */
#include "test.h"
typedef unsigned short u16;
typedef unsigned char u8;

#include "virtio.h"

#define NET_HDR 12 /* virtio_net_hdr with VERSION_1 (num_buffers included) */
#define NET_FRAME 1514
#define NET_BUF (NET_HDR + NET_FRAME)
#define NET_RX_BUFS 4
#define RNG_LEN 16


static volatile struct vq vq_netrx, vq_nettx, vq_blk, vq_rng;
static struct queue q_netrx, q_nettx, q_blk, q_rng;

static volatile u8 net_rx[NET_RX_BUFS][NET_BUF] __attribute__((aligned(16)));
static volatile u8 net_tx[QN][NET_BUF] __attribute__((aligned(16)));
static u32 tx_busy; /* bit d: transmit descriptor d is in flight */
static volatile struct { u32 type, reserved; u64 sector; } blk_hdr __attribute__((aligned(16)));
static volatile u8 blk_data[SECTOR] __attribute__((aligned(16)));
static volatile u8 blk_status;
static volatile u8 rng_data[RNG_LEN] __attribute__((aligned(16)));

static u64 net_base, blk_base, rng_base, blk_sectors;
/* The state every input changes (kept in memory, not only in registers). */
static volatile u64 hash = 0xcbf29ce484222325UL; /* FNV-1a offset basis */
static volatile u64 loops, events, frames, blk_done, rng_done, uart_bytes, tx_sent, tx_done;


static void fold8(u8 b) { hash = (hash ^ b) * 0x100000001b3UL; }
static void fold64(u64 v) { for (int i = 0; i < 8; i++) fold8((u8)(v >> (8 * i))); }
static void fold_bytes(const volatile u8 *p, u32 n) {
  u64 h = hash;
  for (u32 i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3UL;
  hash = h;
}
/* Every event: its kind and the loop count at which it was seen. */
static void fold_event(u8 kind) { fold8(kind); fold64(loops); }

static void count_event(void) {
  events = events + 1;
  if (events % 16 == 0) {
    puts_("ioloop events "); putdec(events); puts_(" hash "); puthex(hash); putc_('\n');
  }
}

/* ---------- virtio-mmio driver basics ---------- */


/* Reset, ACKNOWLEDGE, DRIVER, negotiate VERSION_1 only, FEATURES_OK. 0 on failure. */
static int dev_begin(u64 base) {
  set_status(base, 0);
  for (int i = 0; i < 1000000 && r32(base, R_STATUS) != 0; i++) {}
  set_status(base, ST_ACKNOWLEDGE);
  set_status(base, ST_ACKNOWLEDGE | ST_DRIVER);
  w32(base, R_DEVICE_FEATURES_SEL, 1);
  u32 hi = r32(base, R_DEVICE_FEATURES);
  w32(base, R_DEVICE_FEATURES_SEL, 0);
  u32 lo = r32(base, R_DEVICE_FEATURES);
  fold64(((u64)hi << 32) | lo);
  if (!(hi & 1)) { /* no VIRTIO_F_VERSION_1: not a device we can drive */
    set_status(base, ST_ACKNOWLEDGE | ST_DRIVER | ST_FAILED);
    return 0;
  }
  w32(base, R_DRIVER_FEATURES_SEL, 0);
  w32(base, R_DRIVER_FEATURES, 0);
  w32(base, R_DRIVER_FEATURES_SEL, 1);
  w32(base, R_DRIVER_FEATURES, 1); /* bit 32: VIRTIO_F_VERSION_1 */
  set_status(base, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
  if (!(r32(base, R_STATUS) & ST_FEATURES_OK)) {
    set_status(base, ST_ACKNOWLEDGE | ST_DRIVER | ST_FAILED);
    return 0;
  }
  return 1;
}






static void ack_interrupt(u64 base) {
  u32 s = r32(base, R_INTERRUPT_STATUS);
  if (s) w32(base, R_INTERRUPT_ACK, s);
  if (s & 2) { /* configuration change, or the device wants a reset (a malformed chain) */
    u32 st = r32(base, R_STATUS);
    fold64(st);
    puts_("ioloop: device at "); puthex(base); puts_(" status "); puthex(st); putc_('\n');
  }
}

/* ---------- virtio-net ---------- */

static void net_rx_post(u16 d) { queue_post_one(&q_netrx, d, net_rx[d], NET_BUF, DESC_F_WRITE); }

/* Echo a received packet (header + frame of `len` bytes) with its MAC addresses swapped. */
static void net_echo(const volatile u8 *pkt, u32 len) {
  if (!q_nettx.num || len < NET_HDR + 12) return;
  u16 d;
  for (d = 0; d < q_nettx.num && (tx_busy & (1u << d)); d++) {}
  if (d == q_nettx.num) return; /* every transmit descriptor in flight: drop the echo */
  volatile u8 *out = net_tx[d];
  for (u32 i = 0; i < NET_HDR; i++) out[i] = 0;
  for (u32 i = 0; i < 6; i++) {
    out[NET_HDR + i] = pkt[NET_HDR + 6 + i];
    out[NET_HDR + 6 + i] = pkt[NET_HDR + i];
  }
  for (u32 i = NET_HDR + 12; i < len; i++) out[i] = pkt[i];
  tx_busy |= 1u << d;
  tx_sent = tx_sent + 1;
  queue_post_one(&q_nettx, d, out, len, 0);
}

static void net_poll(void) {
  u32 id, len;
  int any = 0;
  while (queue_get(&q_netrx, &id, &len)) {
    any = 1;
    fold_event('N');
    fold64(((u64)id << 32) | len);
    if (id < NET_RX_BUFS) {
      u32 n = len < NET_BUF ? len : NET_BUF;
      fold_bytes(net_rx[id], n);
      net_echo(net_rx[id], n);
      net_rx_post((u16)id);
    }
    frames = frames + 1;
    count_event();
  }
  while (queue_get(&q_nettx, &id, &len)) {
    any = 1;
    fold_event('T');
    fold64(((u64)id << 32) | len);
    if (id < QN) tx_busy &= ~(1u << id);
    tx_done = tx_done + 1;
  }
  if (any) ack_interrupt(net_base);
}

/* ---------- virtio-blk ---------- */

static void blk_issue(void) {
  blk_hdr.type = 0; /* VIRTIO_BLK_T_IN */
  blk_hdr.reserved = 0;
  blk_hdr.sector = blk_sectors ? blk_done % blk_sectors : 0;
  for (u32 i = 0; i < SECTOR; i++) blk_data[i] = 0;
  blk_status = 0xff;
  volatile struct desc *d = q_blk.vq->desc;
  d[0].addr = (u64)&blk_hdr; d[0].len = 16; d[0].flags = DESC_F_NEXT; d[0].next = 1;
  d[1].addr = (u64)blk_data; d[1].len = SECTOR; d[1].flags = DESC_F_NEXT | DESC_F_WRITE; d[1].next = 2;
  d[2].addr = (u64)&blk_status; d[2].len = 1; d[2].flags = DESC_F_WRITE; d[2].next = 0;
  queue_put(&q_blk, 0, 1);
}

static void blk_poll(void) {
  u32 id, len;
  if (!queue_get(&q_blk, &id, &len)) return;
  fold_event('B');
  fold64(((u64)id << 32) | len);
  fold8(blk_status);
  fold_bytes(blk_data, SECTOR);
  blk_done = blk_done + 1;
  ack_interrupt(blk_base);
  count_event();
  blk_issue();
}

/* ---------- virtio-rng ---------- */

static void rng_issue(void) {
  for (u32 i = 0; i < RNG_LEN; i++) rng_data[i] = 0;
  volatile struct desc *d = q_rng.vq->desc;
  d[0].addr = (u64)rng_data; d[0].len = RNG_LEN; d[0].flags = DESC_F_WRITE; d[0].next = 0;
  queue_put(&q_rng, 0, 1);
}

static void rng_poll(void) {
  u32 id, len;
  if (!queue_get(&q_rng, &id, &len)) return;
  fold_event('R');
  fold64(((u64)id << 32) | len);
  fold_bytes(rng_data, len < RNG_LEN ? len : RNG_LEN);
  rng_done = rng_done + 1;
  ack_interrupt(rng_base);
  count_event();
  rng_issue();
}

/* ---------- UART ---------- */

static void uart_poll(void) {
  volatile u8 *u = (volatile u8 *)UART_BASE;
  while (u[5] & 1) {
    u8 c = u[0];
    fold_event('U');
    fold8(c);
    uart_bytes = uart_bytes + 1;
    putc_((char)c);
    count_event();
  }
}

/* ---------- bring-up ---------- */

static void probe(void) {
  for (int n = 0; n < VIRTIO_SLOTS; n++) {
    u64 base = VIRTIO_BASE + (u64)n * VIRTIO_SLOT_SIZE;
    if (r32(base, R_MAGIC) != VIRTIO_MAGIC || r32(base, R_VERSION) != 2) continue;
    u32 id = r32(base, R_DEVICE_ID);
    if (id == DEV_NET && !net_base) net_base = base;
    else if (id == DEV_BLK && !blk_base) blk_base = base;
    else if (id == DEV_RNG && !rng_base) rng_base = base;
  }
}

static void net_init(void) {
  if (!net_base || !dev_begin(net_base)) { net_base = 0; return; }
  u32 mac_lo = r32(net_base, R_CONFIG), mac_hi = r32(net_base, R_CONFIG + 4) & 0xffff;
  fold64(((u64)mac_hi << 32) | mac_lo);
  if (!queue_setup(&q_netrx, net_base, 0, &vq_netrx)) { dev_fail(net_base); net_base = 0; return; }
  queue_setup(&q_nettx, net_base, 1, &vq_nettx); /* without it: no echo */
  dev_ok(net_base);
  u16 n = NET_RX_BUFS < q_netrx.num ? NET_RX_BUFS : q_netrx.num;
  for (u16 d = 0; d < n; d++) net_rx_post(d);
}

static void blk_init(void) {
  if (!blk_base || !dev_begin(blk_base)) { blk_base = 0; return; }
  u32 gen, lo, hi;
  do {
    gen = r32(blk_base, R_CONFIG_GENERATION);
    lo = r32(blk_base, R_CONFIG);
    hi = r32(blk_base, R_CONFIG + 4);
  } while (gen != r32(blk_base, R_CONFIG_GENERATION));
  blk_sectors = ((u64)hi << 32) | lo;
  fold64(blk_sectors);
  if (!queue_setup(&q_blk, blk_base, 0, &vq_blk) || q_blk.num < 3) { dev_fail(blk_base); blk_base = 0; return; }
  dev_ok(blk_base);
  blk_issue();
}

static void rng_init(void) {
  if (!rng_base || !dev_begin(rng_base)) { rng_base = 0; return; }
  if (!queue_setup(&q_rng, rng_base, 0, &vq_rng)) { dev_fail(rng_base); rng_base = 0; return; }
  dev_ok(rng_base);
  rng_issue();
}

static void show(const char *name, u64 base) {
  putc_(' '); puts_(name); putc_(' ');
  if (base) puthex(base); else puts_("none");
}

int main(void) {
  probe();
  net_init();
  blk_init();
  rng_init();
  puts_("ioloop devices:");
  show("net", net_base);
  show("blk", blk_base);
  if (blk_base) { puts_(" sectors "); putdec(blk_sectors); }
  show("rng", rng_base);
  putc_('\n');
  puts_("ioloop ready\n");
  for (;;) {
    loops = loops + 1;
    if (net_base) net_poll();
    if (blk_base) blk_poll();
    if (rng_base) rng_poll();
    uart_poll();
  }
}
