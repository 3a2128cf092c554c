#!/usr/bin/env bash
# Undoes apply.sh: removes the drop-ins and restores the values saved before. Run as root.
set -euo pipefail
backup=/var/lib/ringmq-tuning
rm -f /etc/sysctl.d/90-ringmq.conf /etc/security/limits.d/90-ringmq.conf
if [ -f "$backup/sysctl.before" ]; then
  while IFS= read -r line; do sysctl -q -w "$(echo "$line" | sed 's/ = /=/')" || true; done < "$backup/sysctl.before"
fi
if [ -f "$backup/thp.before" ] && [ -f /sys/kernel/mm/transparent_hugepage/enabled ]; then
  sed -E 's/.*\[([a-z]+)\].*/\1/' "$backup/thp.before" > /sys/kernel/mm/transparent_hugepage/enabled
fi
if [ -f /etc/systemd/system/ringmq.service ]; then
  systemctl disable --now ringmq 2>/dev/null || true
  rm -f /etc/systemd/system/ringmq.service
  systemctl daemon-reload
fi
echo "reverted; limits take effect at the next login"
