#!/usr/bin/env bash
# Make `ssh root@127.0.0.1` work with a key and no password, for cluster-local.yaml and its end-to-end
# test (tests/test_cluster.py): the Ray cluster launcher's local provider reaches every node, the head
# included, over ssh and copies files with rsync.
#
#   sudo bash .ci/cluster-setup.sh        # as root, no stdin needed; safe to run again (idempotent)
#
# What it does, each step only when needed:
#   1. apt-get install openssh-server rsync
#   2. key pair /root/.ssh/ebomlc_cluster (auth.ssh_private_key in cluster-local.yaml), authorised
#      for root
#   3. sshd on 127.0.0.1:22 only (never on a public interface), in its own PID namespace when the
#      kernel allows it. Why: `ray up` and `ray down` run `ray stop` on each node, and `ray stop` kills
#      every Ray process it can see on the machine. Inside the namespace it sees only the processes
#      started through this sshd, so the end-to-end test cannot stop a Ray instance that another test
#      or person started on the same machine. Without the permission (an unprivileged container) sshd
#      runs plainly and that caveat applies.
# The sshd it starts is left running for later runs (the tests do not stop it). To stop it, and with it
# every process started through it:  kill -KILL "$(cat /run/ebomlc-sshd.pid)"  (`unshare` ignores SIGTERM).
set -euo pipefail

KEY=/root/.ssh/ebomlc_cluster
PIDFILE=/run/ebomlc-sshd.pid
LOG=/var/log/ebomlc-sshd.log

if [ "$(id -u)" != 0 ]; then
    echo "cluster-setup.sh: run as root (the local cluster logs in as root@127.0.0.1)" >&2
    exit 1
fi

ssh_works() {
    ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=5 -o LogLevel=ERROR -i "$KEY" root@127.0.0.1 true 2>/dev/null
}

# 1. packages
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v rsync >/dev/null || missing+=(rsync)
if [ ${#missing[@]} -gt 0 ]; then
    echo "cluster-setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2. key, authorised for root
install -d -m 700 /root/.ssh
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C ebomlc-cluster -f "$KEY"
touch /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
grep -qxF "$(cat "$KEY.pub")" /root/.ssh/authorized_keys || cat "$KEY.pub" >> /root/.ssh/authorized_keys

# 3. sshd on 127.0.0.1:22
if ssh_works; then
    echo "cluster-setup: ssh -i $KEY root@127.0.0.1 works"
    exit 0
fi
mkdir -p /run/sshd   # sshd's privilege-separation directory
ssh-keygen -A        # host keys, only the missing ones
# -D: stay in the foreground (as the namespace's first process); PidFile=none: its pid inside the
# namespace means nothing outside it, so PIDFILE records the pid of `unshare` instead.
sshd=(/usr/sbin/sshd -D -e -o ListenAddress=127.0.0.1 -o PidFile=none)
if unshare --pid --fork --mount-proc true 2>/dev/null; then
    echo "cluster-setup: starting sshd on 127.0.0.1:22 in its own PID namespace (log: $LOG)"
    setsid unshare --pid --fork --mount-proc --kill-child "${sshd[@]}" >"$LOG" 2>&1 </dev/null &
else
    echo "cluster-setup: no permission for a PID namespace; starting sshd on 127.0.0.1:22 plainly" \
         "(ray up/down on cluster-local.yaml will stop every Ray on this machine) (log: $LOG)"
    setsid "${sshd[@]}" >"$LOG" 2>&1 </dev/null &
fi
echo $! > "$PIDFILE"
for _ in $(seq 50); do
    if ssh_works; then
        echo "cluster-setup: ssh -i $KEY root@127.0.0.1 works (sshd pid $(cat "$PIDFILE"))"
        exit 0
    fi
    sleep 0.2
done
echo "cluster-setup: sshd did not accept the key within 10 s; its log ($LOG):" >&2
cat "$LOG" >&2
exit 1
