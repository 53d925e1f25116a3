/* virtio-mmio (version 2) on QEMU's virt board, shared by the guest
 * programs that drive virtio devices (ioloop, ftguest); include after test.h
 * and the u8/u16 typedefs. */
#ifndef FTVM_GUEST_VIRTIO_H
#define FTVM_GUEST_VIRTIO_H

#define VIRTIO_BASE 0x10001000UL
#define VIRTIO_SLOT_SIZE 0x1000UL
#define VIRTIO_SLOTS 8
#define VIRTIO_MAGIC 0x74726976

/* registers */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_STATUS 0x060
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC_LOW 0x080
#define R_QUEUE_DESC_HIGH 0x084
#define R_QUEUE_DRIVER_LOW 0x090
#define R_QUEUE_DRIVER_HIGH 0x094
#define R_QUEUE_DEVICE_LOW 0x0a0
#define R_QUEUE_DEVICE_HIGH 0x0a4
#define R_CONFIG_GENERATION 0x0fc
#define R_CONFIG 0x100

/* device status bits */
#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_FAILED 128

/* device IDs */
#define DEV_NET 1
#define DEV_BLK 2
#define DEV_RNG 4

/* descriptor flags */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define SECTOR 512

/* ---------- a minimal split-virtqueue driver ---------- */

#define QN 8 /* descriptors per queue (power of two) */

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct used_elem { u32 id; u32 len; };
/* One split virtqueue: descriptor table, available ring, used ring (each properly aligned). */
struct vq {
  struct desc desc[QN];
  struct { u16 flags, idx, ring[QN], used_event; } avail;
  struct { u16 flags, idx; struct used_elem ring[QN]; u16 avail_event; } used __attribute__((aligned(4)));
} __attribute__((aligned(4096)));

struct queue {
  u64 base;            /* the device's register base */
  volatile struct vq *vq;
  u32 index;           /* queue index in the device */
  u16 num;             /* queue size in use (0: queue not set up) */
  u16 avail_idx;       /* next available ring index to publish */
  u16 last_used;       /* next used ring index to consume */
};

static inline void fence(void) { asm volatile("fence rw, rw" ::: "memory"); }
static inline u32 r32(u64 base, u64 off) { return *(volatile u32 *)(base + off); }
static inline void w32(u64 base, u64 off, u32 v) { *(volatile u32 *)(base + off) = v; }

static inline void set_status(u64 base, u32 s) { w32(base, R_STATUS, s); }
static inline void dev_ok(u64 base) { set_status(base, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK); }
static inline void dev_fail(u64 base) { set_status(base, ST_ACKNOWLEDGE | ST_DRIVER | ST_FAILED); }

/* Set up queue `index` of the device at `base` on `vq`. 0 if it cannot be. */
static inline int queue_setup(struct queue *q, u64 base, u32 index, volatile struct vq *vq) {
  q->base = base;
  q->vq = vq;
  q->index = index;
  q->num = q->avail_idx = q->last_used = 0;
  w32(base, R_QUEUE_SEL, index);
  if (r32(base, R_QUEUE_READY)) return 0;
  u32 max = r32(base, R_QUEUE_NUM_MAX);
  if (max == 0) return 0;
  u16 n = QN;
  while (n > max) n >>= 1;
  u64 desc = (u64)&vq->desc, avail = (u64)&vq->avail, used = (u64)&vq->used;
  w32(base, R_QUEUE_NUM, n);
  w32(base, R_QUEUE_DESC_LOW, (u32)desc);
  w32(base, R_QUEUE_DESC_HIGH, (u32)(desc >> 32));
  w32(base, R_QUEUE_DRIVER_LOW, (u32)avail);
  w32(base, R_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
  w32(base, R_QUEUE_DEVICE_LOW, (u32)used);
  w32(base, R_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
  fence();
  w32(base, R_QUEUE_READY, 1);
  q->num = n;
  return 1;
}

/* Make descriptor chain `head` available; notify if asked. */
static inline void queue_put(struct queue *q, u16 head, int notify) {
  q->vq->avail.ring[q->avail_idx % q->num] = head;
  fence();
  q->avail_idx++;
  q->vq->avail.idx = q->avail_idx;
  fence();
  if (notify) w32(q->base, R_QUEUE_NOTIFY, q->index);
}

/* Make the one-descriptor buffer `d` (`len` bytes at `addr`; `flags` 0 for the device to read,
 * DESC_F_WRITE for it to write) available, and notify the device. */
static inline void queue_post_one(struct queue *q, u16 d, volatile void *addr, u32 len, u16 flags) {
  q->vq->desc[d].addr = (u64)addr;
  q->vq->desc[d].len = len;
  q->vq->desc[d].flags = flags;
  q->vq->desc[d].next = 0;
  queue_put(q, d, 1);
}

/* Take the next used entry, if the device has returned one. */
static inline int queue_get(struct queue *q, u32 *id, u32 *len) {
  if (!q->num || q->vq->used.idx == q->last_used) return 0;
  fence();
  volatile struct used_elem *e = &q->vq->used.ring[q->last_used % q->num];
  *id = e->id;
  *len = e->len;
  q->last_used++;
  return 1;
}

#endif
