#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the `slurm` tests (tests/test_slurm.py) and for trying
# `experiment=slurm` without a real cluster. Debian/Ubuntu, as root.
#
#   scripts/slurm_cluster.sh start    install (once) slurmctld, slurmd, slurm-client and munge; write
#                                     /etc/slurm/slurm.conf for this node; start munged, slurmctld, slurmd
#   scripts/slurm_cluster.sh status   the daemons this script started, and `sinfo`
#   scripts/slurm_cluster.sh stop     stop the daemons this script started (pid files under $STATE)
#
# Idempotent: `start` on a running cluster changes nothing; `stop` on a stopped one does nothing. Only the
# daemons whose pid files are under $STATE are stopped. One partition `debug` (the default) with this node's
# cores and memory as `slurmd -C` reports them; no cgroups (task/none, proctrack/linuxproc), so it runs in
# a container too.
set -euo pipefail

STATE=${SLURM_CLUSTER_STATE:-/var/lib/sft_sweeps_slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

log() { echo "slurm_cluster: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || { echo "error: installing Slurm needs root (apt-get)" >&2; exit 1; }
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$STATE/log"
    # NodeName=... CPUs=... RealMemory=... as slurmd detects them; MemSpecLimit etc. are not needed here.
    local node
    node=$(slurmd -C | head -1)
    cat >"$CONF.new" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node test cluster. Rewritten on every start.
ClusterName=sft-sweeps-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits the credential lifetime before it starts again (default 120 s): short on a test node.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
MpiDefault=none
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Requeued jobs (submitit's timeout/preemption protocol) start again at once.
JobRequeue=1
MinJobAge=300
# SIGTERM to SIGKILL: short, so a preempted (requeued) test job dies mid-training.
KillWait=2
InactiveLimit=0
$node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.new" "$CONF"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged is already answering (ours or the system's)
    fi
    # munged runs as its own user, so its pid file goes where that user can write.
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/sft_sweeps_munged.pid
    ln -sf /run/munge/sft_sweeps_munged.pid "$STATE/munged.pid"
}

wait_idle() {
    local i
    for i in $(seq 60); do
        if sinfo -h -N -o '%T' 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then
            return
        fi
        sleep 1
    done
    echo "error: node $HOST not idle after 60 s; see $STATE/log/slurmctld.log and slurmd.log" >&2
    sinfo -N -l >&2 || true
    exit 1
}

start() {
    install_packages
    mkdir -p "$STATE"
    if running "$STATE/slurmctld.pid" && running "$STATE/slurmd.pid"; then
        log "already running"
        wait_idle
        return
    fi
    write_conf
    start_munge
    running "$STATE/slurmctld.pid" || slurmctld
    running "$STATE/slurmd.pid" || slurmd
    wait_idle
    # A node left `down` by an earlier unclean stop: bring it back.
    scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
    log "up: $(sinfo -h -o '%P %D %c CPUs %m MB %T')"
}

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        if running "$STATE/$name.pid"; then
            pid=$(cat "$STATE/$name.pid")
            kill "$pid"
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            log "stopped $name ($pid)"
        fi
        rm -f "$STATE/$name.pid"
    done
    rm -f /run/munge/sft_sweeps_munged.pid
}

status() {
    local name
    for name in munged slurmctld slurmd; do
        if running "$STATE/$name.pid"; then echo "$name: running ($(cat "$STATE/$name.pid"))"
        else echo "$name: stopped"; fi
    done
    sinfo 2>/dev/null || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
