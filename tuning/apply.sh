#!/usr/bin/env bash
# Applies the tuning persistently: sysctl drop-in, limits drop-in, and with --service the
# systemd unit and its user. Keeps backups so revert.sh can undo it. Run as root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
backup=/var/lib/ringmq-tuning
mkdir -p "$backup"
sysctl -a 2>/dev/null | grep -E "^($(grep -vE '^\s*(#|$)' "$here/sysctl.conf" | cut -d= -f1 | tr -d ' ' | paste -sd'|'))\b" > "$backup/sysctl.before" || true
install -m 0644 "$here/sysctl.conf" /etc/sysctl.d/90-ringmq.conf
install -m 0644 "$here/limits.conf" /etc/security/limits.d/90-ringmq.conf
sysctl -q -p /etc/sysctl.d/90-ringmq.conf || echo "some keys were not applied (nf_conntrack not loaded?)"
if [ -f /sys/kernel/mm/transparent_hugepage/enabled ]; then
  cat /sys/kernel/mm/transparent_hugepage/enabled > "$backup/thp.before"
  echo madvise > /sys/kernel/mm/transparent_hugepage/enabled
fi
if [ "${1:-}" = "--service" ]; then
  id ringmq >/dev/null 2>&1 || useradd --system --home /var/lib/ringmq --shell /usr/sbin/nologin ringmq
  install -d -o ringmq -g ringmq /var/lib/ringmq /etc/ringmq
  [ -f /etc/ringmq/ringmq.toml ] || /usr/local/bin/ringmq print-config --default > /etc/ringmq/ringmq.toml
  install -m 0644 "$here/ringmq.service" /etc/systemd/system/ringmq.service
  systemctl daemon-reload
  echo "installed ringmq.service: systemctl enable --now ringmq"
fi
echo "applied; check with: ringmq doctor --connections 1000000"
