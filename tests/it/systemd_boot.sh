#!/bin/bash
# Boots the host's systemd as PID 1 of a throw-away system, for the test that
# runs the shipped unit the way it runs in production (tests/it/systemd_boot.rs).
# Run it inside fresh namespaces, as root:
#
#   unshare --pid --fork --mount --uts --ipc --net --cgroup --mount-proc \
#       --propagation private tests/it/systemd_boot.sh DIR TARGET
#
# DIR (outside the namespaces, on a filesystem that takes overlay upper
# directories) receives everything the system writes to /etc, /usr and /var;
# /run, /tmp, /srv, /home, /root and /dev are private tmpfs. DIR/share, if
# present, appears read-only at /run/workcopy-test (what the test installs
# from). The host is not touched: its files are the lower layers, and every
# mount dies with the namespace.
# TARGET is the unit systemd starts (a target the script writes, see below).
# Drive the system from outside with `nsenter -t PID -a systemctl ...`, where
# PID is this script's pid as the host sees it.
set -euo pipefail

dir=${1:?usage: systemd_boot.sh DIR TARGET}
target=${2:?usage: systemd_boot.sh DIR TARGET}
[[ $$ -eq 1 ]] || { echo "systemd_boot.sh: must run as PID 1 of a new pid namespace (see the header)" >&2; exit 2; }

# Writes to /etc, /usr and /var stay in DIR.
for d in etc usr var; do
  mkdir -p "$dir/overlay/$d/upper" "$dir/overlay/$d/work"
  mount -t overlay "overlay-$d" -o "lowerdir=/$d,upperdir=$dir/overlay/$d/upper,workdir=$dir/overlay/$d/work" "/$d"
done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
if [[ -d $dir/share ]]; then
  mkdir /run/workcopy-test
  mount --bind "$dir/share" /run/workcopy-test
  mount -o remount,bind,ro /run/workcopy-test
fi
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
for d in /srv /home /root; do
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 0700 /root

# A minimal /dev: the pseudo devices, a terminal, FUSE, a private devpts.
mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
mknod -m 0666 /dev/null c 1 3
mknod -m 0666 /dev/zero c 1 5
mknod -m 0666 /dev/full c 1 7
mknod -m 0666 /dev/random c 1 8
mknod -m 0666 /dev/urandom c 1 9
mknod -m 0666 /dev/tty c 5 0
mknod -m 0666 /dev/fuse c 10 229
mkdir -m 0755 /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr

# sysfs of this network namespace, read-only as in a container, and the
# unified cgroup hierarchy rooted at this cgroup namespace.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup

ip link set lo up
hostname workcopy-test

# Units that would touch the host's kernel, hardware or network, or that a
# container has no use for.
for u in \
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
  systemd-udev-trigger.service systemd-udev-settle.service \
  systemd-modules-load.service kmod-static-nodes.service systemd-sysctl.service \
  systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
  sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
  systemd-remount-fs.service systemd-random-seed.service systemd-pstore.service \
  systemd-timesyncd.service systemd-networkd.service systemd-resolved.service \
  systemd-firstboot.service systemd-repart.service systemd-machine-id-commit.service \
  systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-hwdb-update.service \
  systemd-journald-audit.socket systemd-logind.service getty.target console-getty.service \
  ssh.service sshd.service postgresql.service cron.service e2scrub_reap.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "/etc/systemd/system/$u"
done

# The target to boot: the system's basic initialisation (journald, tmpfiles,
# sysusers) and nothing else; the test starts the service itself.
cat >"/etc/systemd/system/$target" <<UNIT
[Unit]
Description=A test system for workcopy
Requires=sysinit.target
After=sysinit.target
AllowIsolate=yes
UNIT

exec env -i container=other PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit="$target" --show-status=no
