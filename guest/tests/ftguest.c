/* ftguest: the workload of the deterministic FT simulator (crates/sim). Never passes or fails by
 * itself; it runs TICKS ticks and then powers off (pass).
 *
 * Brings up virtio-blk, virtio-rng and (if present) virtio-net (polled virtqueues, as ioloop.c;
 * completions wake WFI through the PLIC, context 0 = M-mode, with mstatus.MIE = 0 so no trap is
 * ever taken) and then, every 1-5 ms of guest time (CLINT timer + WFI, so the guest idles between
 * ticks), tick n:
 *   - asks virtio-rng for 16 bytes and waits for them;
 *   - h = FNV-1a over (n, the entropy, mtime);
 *   - writes a 512-byte record derived from (n, h) to sector 1 + n % NSEC and waits for its
 *     completion; then remembers (n, h) for that sector in `ftg_table` (the simulator reads this
 *     table from guest RAM at the end: every write the guest saw complete must be on the disk);
 *   - prints `tick N 0x<h>`, so the output depends on timing and inputs;
 *   - transmits a tick frame (n, h) to the broadcast address;
 *   - every third tick re-reads a sector whose write completed earlier and prints `BAD ...` if it
 *     does not hold what was written (a lost acknowledged write), else nothing.
 * The next tick is 1-5 ms after this one began (the period also comes from h).
 *
 * The network (whenever the guest wakes): a client sends request frames numbered 1, 2, ...; the
 * guest accepts request k only when it expects k (`next_req`), folds the request's bytes, the
 * current tick and mtime into a running hash and answers with (k, hash); a request it already
 * accepted (a client's retransmission) gets the same answer again from a cache of the last
 * ANS_WIN, anything else is ignored. Every frame the guest transmits carries the next number of
 * one sequence (1, 2, ...: no gaps), given only when a transmit descriptor is free (else the frame
 * is not sent: a tick frame is skipped, an answer waits for the client's retransmission). Tick
 * frames use at most half the descriptors, so that on a slow link (frames held by the output rule
 * for a round trip) they do not starve the answers.
 *
 * Ethernet frames (type 0x88b5), after dst, src and type, 60 bytes in all:
 *   request "FTGQ" k (u64 LE), then any bytes;   answer "FTGA" seq k hash;   tick "FTGT" seq n h.
 * `ftg_net` keeps the sequence, the answers and the last TX_WIN frames sent for the simulator,
 * which compares them with what the world received when a VM goes live and at the end. */
#include "test.h"
typedef unsigned short u16;
typedef unsigned char u8;

#ifndef TICKS
#define TICKS 1000000
#endif
#define NSEC 8

#include "virtio.h"
#define VIRTIO_FIRST_IRQ 1
#define PLIC_BASE 0x0c000000UL

#define MIE_MTIE (1UL << 7)
#define MIE_MEIE (1UL << 11)

#define RNG_LEN 16

#define NET_HDR 12 /* virtio_net_hdr with VERSION_1 (num_buffers included) */
#define NET_FRAME 1514
#define NET_BUF (NET_HDR + NET_FRAME)
#define NET_RX_BUFS 4
#define FRAME_LEN 60 /* every frame the guest sends */
#define ANS_WIN 16   /* answers kept for retransmitted requests */
#define TX_WIN 32    /* frames kept for the simulator */

static volatile struct vq vq_blk, vq_rng, vq_netrx, vq_nettx;
static struct queue q_blk, q_rng, q_netrx, q_nettx;
static volatile u8 net_rx[NET_RX_BUFS][NET_BUF] __attribute__((aligned(16)));
static volatile u8 net_tx[QN][NET_HDR + FRAME_LEN] __attribute__((aligned(16)));
static u32 tx_busy; /* bit d: transmit descriptor d is in flight */
static u8 mac[6];
static u64 net_base, cur_tick;
static volatile struct { u32 type, reserved; u64 sector; } blk_hdr __attribute__((aligned(16)));
static volatile u8 blk_data[SECTOR] __attribute__((aligned(16)));
static volatile u8 blk_status;
static volatile u8 rng_data[RNG_LEN] __attribute__((aligned(16)));
static u64 blk_base, rng_base, blk_sectors;

/* What the guest knows is on the disk: for sector 1 + i, valid / tick / hash of the last write
 * whose completion it saw. Read by the simulator (by symbol) at the end of a run. */
volatile u64 ftg_table[NSEC][3];

/* The network state, read by the simulator (by symbol; crates/sim knows this layout). */
volatile struct {
  u64 sent;                  /* sequence number of the last frame transmitted */
  u64 next_req;              /* the request expected next (requests 1 .. next_req - 1 accepted) */
  u64 hash;                  /* running hash over the accepted requests */
  u64 reserved;
  u64 answers[ANS_WIN][2];   /* [k % ANS_WIN] = {k, hash after request k} */
  u64 frames[TX_WIN][4];     /* [seq % TX_WIN] = {seq, magic, word b, word c} */
} ftg_net;

static volatile u64 *const mtimecmp = (volatile u64 *)CLINT_MTIMECMP;
static volatile u64 *const mtime = (volatile u64 *)CLINT_MTIME;

static inline void wfi(void) { asm volatile("wfi" ::: "memory"); }

static u64 fnv(u64 h, u64 v) {
  for (int i = 0; i < 8; i++) h = (h ^ ((v >> (8 * i)) & 0xff)) * 0x100000001b3UL;
  return h;
}

/* The record for tick n with hash h: byte i of the sector. */
static u8 record_byte(u64 n, u64 h, u32 i) {
  if (i < 8) return (u8)(0x46544754UL >> (8 * (i & 3))); /* "TGTF" twice */
  if (i < 16) return (u8)(n >> (8 * (i - 8)));
  if (i < 24) return (u8)(h >> (8 * (i - 16)));
  return (u8)(h >> (8 * (i & 7))) ^ (u8)i;
}

static int dev_begin(u64 base) {
  w32(base, R_STATUS, 0);
  w32(base, R_STATUS, ST_ACKNOWLEDGE);
  w32(base, R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
  w32(base, R_DEVICE_FEATURES_SEL, 1);
  if (!(r32(base, R_DEVICE_FEATURES) & 1)) return 0;
  w32(base, R_DRIVER_FEATURES_SEL, 0);
  w32(base, R_DRIVER_FEATURES, 0);
  w32(base, R_DRIVER_FEATURES_SEL, 1);
  w32(base, R_DRIVER_FEATURES, 1);
  w32(base, R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
  return (r32(base, R_STATUS) & ST_FEATURES_OK) != 0;
}




/* Route a slot's interrupt to context 0 (M-mode) so that it wakes WFI. */
static void plic_enable(u64 base) {
  u32 irq = VIRTIO_FIRST_IRQ + (u32)((base - VIRTIO_BASE) / VIRTIO_SLOT_SIZE);
  w32(PLIC_BASE, 4 * irq, 1);
  w32(PLIC_BASE, 0x2000 + 4 * (irq / 32), r32(PLIC_BASE, 0x2000 + 4 * (irq / 32)) | (1u << (irq % 32)));
}

/* ---------- virtio-net ---------- */

#define MAGIC_REQ 0x51475446u /* "FTGQ" */
#define MAGIC_ANS 0x41475446u /* "FTGA" */
#define MAGIC_TICK 0x54475446u /* "FTGT" */

static void put64(volatile u8 *p, u64 v) { for (int i = 0; i < 8; i++) p[i] = (u8)(v >> (8 * i)); }
static u64 get64(const volatile u8 *p) {
  u64 v = 0;
  for (int i = 0; i < 8; i++) v |= (u64)p[i] << (8 * i);
  return v;
}

static void net_rx_post(u16 d) { queue_post_one(&q_netrx, d, net_rx[d], NET_BUF, DESC_F_WRITE); }

/* Transmit a frame to `dst`: magic, then the next sequence number and words b, c. Returns 0 (and
 * uses no sequence number) if `most` transmit descriptors or all are in flight. */
static int net_send(const volatile u8 *dst, u32 magic, u64 b, u64 c, u32 most) {
  if (!net_base || !q_nettx.num) return 0;
  u32 busy = 0;
  for (u16 i = 0; i < q_nettx.num; i++) busy += (tx_busy >> i) & 1;
  if (busy >= most) return 0;
  u16 d;
  for (d = 0; d < q_nettx.num && (tx_busy & (1u << d)); d++) {}
  if (d == q_nettx.num) return 0;
  u64 seq = ftg_net.sent + 1;
  volatile u8 *out = net_tx[d];
  for (u32 i = 0; i < NET_HDR + FRAME_LEN; i++) out[i] = 0;
  volatile u8 *f = out + NET_HDR;
  for (u32 i = 0; i < 6; i++) { f[i] = dst[i]; f[6 + i] = mac[i]; }
  f[12] = 0x88; f[13] = 0xb5;
  for (u32 i = 0; i < 4; i++) f[14 + i] = (u8)(magic >> (8 * i));
  put64(f + 18, seq);
  put64(f + 26, b);
  put64(f + 34, c);
  volatile u64 *rec = ftg_net.frames[seq % TX_WIN];
  rec[0] = seq; rec[1] = magic; rec[2] = b; rec[3] = c;
  ftg_net.sent = seq;
  tx_busy |= 1u << d;
  queue_post_one(&q_nettx, d, out, NET_HDR + FRAME_LEN, 0);
  return 1;
}

/* A received frame (without the virtio header): a request is accepted, answered again, or
 * ignored. */
static void net_frame(const volatile u8 *f, u32 len) {
  if (len < 26 || f[12] != 0x88 || f[13] != 0xb5) return;
  u32 magic = f[14] | (u32)f[15] << 8 | (u32)f[16] << 16 | (u32)f[17] << 24;
  if (magic != MAGIC_REQ) return;
  u64 k = get64(f + 18);
  if (k == ftg_net.next_req) {
    u64 h = ftg_net.hash;
    for (u32 i = 0; i < len; i++) h = (h ^ f[i]) * 0x100000001b3UL;
    h = fnv(fnv(h, cur_tick), *mtime);
    ftg_net.hash = h;
    ftg_net.answers[k % ANS_WIN][0] = k;
    ftg_net.answers[k % ANS_WIN][1] = h;
    ftg_net.next_req = k + 1;
  } else if (k >= ftg_net.next_req || k + ANS_WIN < ftg_net.next_req || ftg_net.answers[k % ANS_WIN][0] != k) {
    return;
  }
  net_send(f + 6, MAGIC_ANS, k, ftg_net.answers[k % ANS_WIN][1], QN);
}

static void net_poll(void) {
  if (!net_base) return;
  u32 id, len;
  while (queue_get(&q_nettx, &id, &len))
    if (id < QN) tx_busy &= ~(1u << id);
  while (queue_get(&q_netrx, &id, &len)) {
    if (id >= NET_RX_BUFS) continue;
    if (len > NET_HDR && len <= NET_BUF) net_frame(net_rx[id] + NET_HDR, len - NET_HDR);
    net_rx_post((u16)id);
  }
}

/* After a wake-up: acknowledge the devices and the PLIC so the line drops, then look at the
 * network. */
static void service(void) {
  u32 s;
  if ((s = r32(blk_base, R_INTERRUPT_STATUS))) w32(blk_base, R_INTERRUPT_ACK, s);
  if ((s = r32(rng_base, R_INTERRUPT_STATUS))) w32(rng_base, R_INTERRUPT_ACK, s);
  if (net_base && (s = r32(net_base, R_INTERRUPT_STATUS))) w32(net_base, R_INTERRUPT_ACK, s);
  u32 claim;
  while ((claim = r32(PLIC_BASE, 0x200004))) w32(PLIC_BASE, 0x200004, claim);
  net_poll();
}

static void net_init(void) {
  if (!net_base || !dev_begin(net_base)) { net_base = 0; return; }
  u32 lo = r32(net_base, R_CONFIG), hi = r32(net_base, R_CONFIG + 4);
  for (u32 i = 0; i < 4; i++) mac[i] = (u8)(lo >> (8 * i));
  mac[4] = (u8)hi; mac[5] = (u8)(hi >> 8);
  if (!queue_setup(&q_netrx, net_base, 0, &vq_netrx) || !queue_setup(&q_nettx, net_base, 1, &vq_nettx)) {
    dev_fail(net_base);
    net_base = 0;
    return;
  }
  dev_ok(net_base);
  ftg_net.next_req = 1;
  ftg_net.hash = 0xcbf29ce484222325UL;
  u16 n = NET_RX_BUFS < q_netrx.num ? NET_RX_BUFS : q_netrx.num;
  for (u16 d = 0; d < n; d++) net_rx_post(d);
  plic_enable(net_base);
}

static void wait_done(struct queue *q) {
  u32 id, len;
  while (!queue_get(q, &id, &len)) {
    wfi();
    service();
  }
}

static void blk_io(u32 type, u64 sector) {
  blk_hdr.type = type; /* 0 = IN (read), 1 = OUT (write) */
  blk_hdr.reserved = 0;
  blk_hdr.sector = sector;
  blk_status = 0xff;
  volatile struct desc *d = q_blk.vq->desc;
  d[0].addr = (u64)&blk_hdr; d[0].len = 16; d[0].flags = DESC_F_NEXT; d[0].next = 1;
  d[1].addr = (u64)blk_data; d[1].len = SECTOR; d[1].flags = DESC_F_NEXT | (type ? 0 : DESC_F_WRITE); d[1].next = 2;
  d[2].addr = (u64)&blk_status; d[2].len = 1; d[2].flags = DESC_F_WRITE; d[2].next = 0;
  queue_put(&q_blk, 0, 1);
  wait_done(&q_blk);
}

static void get_entropy(void) {
  for (u32 i = 0; i < RNG_LEN; i++) rng_data[i] = 0;
  volatile struct desc *d = q_rng.vq->desc;
  d[0].addr = (u64)rng_data; d[0].len = RNG_LEN; d[0].flags = DESC_F_WRITE; d[0].next = 0;
  queue_put(&q_rng, 0, 1);
  wait_done(&q_rng);
}

static void check_sector(u32 i) {
  u64 n = ftg_table[i][1], h = ftg_table[i][2];
  for (u32 b = 0; b < SECTOR; b++) blk_data[b] = 0;
  blk_io(0, 1 + i);
  u32 bad = 0;
  for (u32 b = 0; b < SECTOR; b++) bad += blk_data[b] != record_byte(n, h, b);
  if (blk_status != 0 || bad) {
    puts_("BAD sector "); putdec(1 + i); puts_(" tick "); putdec(n); puts_(" status ");
    putdec(blk_status); puts_(" wrong bytes "); putdec(bad); putc_('\n');
  }
}

int main(void) {
  for (int n = 0; n < VIRTIO_SLOTS; n++) {
    u64 base = VIRTIO_BASE + (u64)n * VIRTIO_SLOT_SIZE;
    if (r32(base, R_MAGIC) != VIRTIO_MAGIC || r32(base, R_VERSION) != 2) continue;
    u32 id = r32(base, R_DEVICE_ID);
    if (id == DEV_BLK && !blk_base) blk_base = base;
    else if (id == DEV_RNG && !rng_base) rng_base = base;
    else if (id == DEV_NET && !net_base) net_base = base;
  }
  if (!blk_base || !rng_base || !dev_begin(blk_base) || !dev_begin(rng_base) ||
      !queue_setup(&q_blk, blk_base, 0, &vq_blk) || q_blk.num < 3 ||
      !queue_setup(&q_rng, rng_base, 0, &vq_rng)) {
    puts_("ftguest: needs virtio-blk and virtio-rng\n");
    exit_code(3);
  }
  dev_ok(blk_base);
  dev_ok(rng_base);
  blk_sectors = r32(blk_base, 0x100) | ((u64)r32(blk_base, 0x104) << 32);
  if (blk_sectors < NSEC + 1) {
    puts_("ftguest: disk too small\n");
    exit_code(3);
  }
  plic_enable(blk_base);
  plic_enable(rng_base);
  net_init();
  w32(PLIC_BASE, 0x200000, 0); /* context 0 threshold */
  *mtimecmp = -1UL;
  csrw(mie, MIE_MTIE | MIE_MEIE); /* wake-up sources only: mstatus.MIE stays 0 */
  puts_("ftguest ready\n");
  u64 next = *mtime;
  for (u64 n = 1; n <= TICKS; n++) {
    *mtimecmp = next;
    while (*mtime < next) {
      wfi();
      service();
    }
    *mtimecmp = -1UL;
    u64 start = *mtime;
    cur_tick = n;
    get_entropy();
    u64 h = fnv(0xcbf29ce484222325UL, n);
    for (u32 i = 0; i < RNG_LEN; i++) h = (h ^ rng_data[i]) * 0x100000001b3UL;
    h = fnv(h, *mtime);
    u32 slot = (u32)(n % NSEC);
    for (u32 b = 0; b < SECTOR; b++) blk_data[b] = record_byte(n, h, b);
    blk_io(1, 1 + slot);
    if (blk_status == 0) {
      ftg_table[slot][0] = 1;
      ftg_table[slot][1] = n;
      ftg_table[slot][2] = h;
    } else {
      ftg_table[slot][0] = 0;
    }
    puts_("tick "); putdec(n); putc_(' '); puthex(h); putc_('\n');
    static const u8 broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    net_send(broadcast, MAGIC_TICK, n, h, QN / 2); /* half the descriptors stay for answers */
    if (n % 3 == 0) {
      u32 other = (slot + NSEC - 3) % NSEC;
      if (ftg_table[other][0]) check_sector(other);
    }
    next = start + 10000 + (h >> 20) % 40000; /* 1-5 ms of guest time */
  }
  puts_("ftguest done\n");
  exit_code(0);
}
