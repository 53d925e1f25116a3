/* virtio-mmio (version 2) on QEMU's virt board, shared by the guest
 * programs that drive virtio devices (ioloop, ftguest). */
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

#endif
