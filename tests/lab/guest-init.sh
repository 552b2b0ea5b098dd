#!/bin/busybox sh
# /init of the vmsnapd lab guest (busybox-static). Kernel cmdline parameters:
#   counter_disks=vda,vdb   raw disks that receive the counter records (same seq on each)
#   token_disk=vdc          small read-only disk; its first bytes are the token (re-read every record, O_DIRECT)
#   fs_disk=vdd             optional ext4 disk mounted at /mnt (agent variant: something for fsfreeze)
#   agent=1                 start qemu-guest-agent on the virtio-serial port org.qemu.guest_agent.0
#   interval_us=20000       pause between records
#   dirty_mib=64            optional: keep dirtying that much guest RAM (a tmpfs file of random bytes copied
#                           over and over in the background), a busy guest for pause benchmarks
# Record: 512 bytes at sector (seq % 1000) = "seq %010d token <TOKEN>" padded with spaces, ending in "\n".
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /mnt /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "lab-init: loading modules"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
    [ -f /lib/modules/$m.ko ] || continue
    insmod /lib/modules/$m.ko || echo "lab-init: insmod $m failed"
done
counter_disks=vda; token_disk=""; fs_disk=""; agent=0; interval_us=20000; dirty_mib=0
for p in $(cat /proc/cmdline); do
    case "$p" in
        counter_disks=*) counter_disks="${p#counter_disks=}" ;;
        token_disk=*) token_disk="${p#token_disk=}" ;;
        fs_disk=*) fs_disk="${p#fs_disk=}" ;;
        agent=*) agent="${p#agent=}" ;;
        interval_us=*) interval_us="${p#interval_us=}" ;;
        dirty_mib=*) dirty_mib="${p#dirty_mib=}" ;;
    esac
done
disks=$(echo "$counter_disks" | tr ',' ' ')
for d in $disks $token_disk $fs_disk; do
    n=0
    while [ ! -b /dev/$d ] && [ $n -lt 100 ]; do usleep 50000; n=$((n+1)); done
    [ -b /dev/$d ] || echo "lab-init: ERROR /dev/$d missing"
done
if [ -n "$fs_disk" ]; then
    mount -t ext4 /dev/$fs_disk /mnt && echo "lab-init: mounted /dev/$fs_disk on /mnt"
fi
if [ "$agent" = 1 ]; then
    n=0
    while [ ! -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && [ $n -lt 100 ]; do usleep 50000; n=$((n+1)); done
    port=/dev/virtio-ports/org.qemu.guest_agent.0
    [ -e $port ] || port=/dev/vport0p1
    /usr/sbin/qemu-ga -m virtio-serial -p $port -d -t /run && echo "lab-init: qemu-ga started on $port"
fi
if [ "$dirty_mib" -gt 0 ] 2>/dev/null; then
    mkdir -p /dirty
    mount -t tmpfs -o size=$((dirty_mib * 2 + 8))m tmpfs /dirty
    dd if=/dev/urandom of=/dirty/src bs=1048576 count="$dirty_mib" 2>/dev/null
    ( while true; do cp /dirty/src /dirty/copy; done ) &
    echo "lab-init: dirtying $dirty_mib MiB of RAM continuously"
fi
# continue from the highest counter already on any counter disk (after a reboot: continue, not restart)
seq=0
for d in $disks; do
    m=$(dd if=/dev/$d bs=512 count=1000 2>/dev/null | tr -c 'a-zA-Z0-9_. \n-' '\n' \
        | sed -n 's/^seq \([0-9]\{10\}\) .*/\1/p' | sort -n | tail -n 1)
    [ -n "$m" ] || m=0
    m=$(expr "$m" + 0)
    [ "$m" -gt "$seq" ] && seq=$m
done
echo "lab-init: counter starts after $seq on $disks (token disk: ${token_disk:-none})"
tok=none
while true; do
    seq=$((seq + 1))
    if [ -n "$token_disk" ]; then
        tok=$(dd if=/dev/$token_disk bs=512 count=1 iflag=direct 2>/dev/null | head -n 1 | tr -cd 'A-Za-z0-9_.:-' | cut -c1-64)
        [ -n "$tok" ] || tok=none
    fi
    rec=$(printf 'seq %010d token %s' "$seq" "$tok")
    for d in $disks; do
        printf '%-511s\n' "$rec" | dd of=/dev/$d bs=512 count=1 seek=$((seq % 1000)) oflag=direct conv=fsync,notrunc 2>/dev/null
    done
    if [ -n "$fs_disk" ] && [ $((seq % 50)) = 0 ]; then echo "$rec" > /mnt/last-seq; fi
    [ $((seq % 500)) = 0 ] && echo "lab-init: seq $seq token $tok"
    usleep "$interval_us"
done
