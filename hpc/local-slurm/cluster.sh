#!/usr/bin/env bash
# A real single-node SLURM for testing the templates of hpc/: Debian's slurm-wlm + munge,
# its own configuration, keys, spool, state, logs and pid files in one temporary folder,
# daemons in the background (no systemd), everything stopped and removed at the end.
#
#   hpc/local-slurm/cluster.sh run -- CMD ...   install if needed, start, run CMD with the
#                                               cluster's environment, stop; exits with CMD's status
#   hpc/local-slurm/cluster.sh install          apt-get install the packages when sbatch/slurmd/munged are missing
#   hpc/local-slurm/cluster.sh start DIR        start a cluster in DIR (prints `source DIR/env`)
#   hpc/local-slurm/cluster.sh stop DIR         stop it and remove DIR
#
# The environment of CMD (and DIR/env): SLURM_CONF (every client command reads it),
# MLIP_SLURM_CLUSTER=DIR (tests/test_slurm.py runs only when it is set), MLIP_SLURM_JOBCOMP
# (the job completion log: one line per finished job with its JobState and ExitCode).
# Needs root (slurmd starts jobs as their user; munged runs as the munge user).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "local-slurm: $*" >&2; }

install() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        log "sbatch/slurmctld/slurmd/munged missing and not root: apt-get install ${PACKAGES[*]} first"
        exit 1
    fi
    log "installing ${PACKAGES[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    # the packages may start daemons of their own (policy-rc.d permitting): ours have their own config
    for name in slurmctld slurmd munge; do
        service "$name" stop >/dev/null 2>&1 || true
    done
}

free_port() {
    python3 - <<'EOF'
import random, socket
for _ in range(500):
    port = random.randrange(30000, 60000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
EOF
}

wait_for() { # seconds, description, command...
    local seconds=$1 what=$2
    shift 2
    local end=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

start() {
    local dir=$1
    [ "$(id -u)" = 0 ] || { log "start needs root"; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 755 "$dir"
    mkdir -p "$dir"/{munge,state,spool,log,run}
    local node cpus mem port_ctld port_d
    node=$(hostname -s)
    # the node's CPUs and memory as slurmd detects them (a node above what slurmd finds is drained)
    read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        print v["CPUs"], v["RealMemory"] }')
    mem=$((mem * 9 / 10))
    port_ctld=$(free_port)
    port_d=$(free_port)
    while [ "$port_d" = "$port_ctld" ]; do port_d=$(free_port); done

    # munge: its own key, socket, log, pid and seed, run as the munge user
    chown munge: "$dir/munge"
    chmod 700 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chown munge: "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    runuser -u munge -- munged --force \
        --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    wait_for 20 munged munge -S "$dir/munge/munge.socket" -n
    chmod 755 "$dir/munge" # the socket is for every user

    cat >"$dir/slurm.conf" <<EOF
# written by hpc/local-slurm/cluster.sh: one node, root daemons, no accounting database
ClusterName=mlip-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (a container): processes tracked by their parent, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# one line per finished job (JobState, ExitCode): the tests read outcomes here
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
MpiDefault=pmi2
SwitchType=switch/none
LaunchParameters=use_interactive_step
# fast turnaround (heterogeneous jobs start only by backfill): schedule on every event and every second, short timeouts, finished jobs kept 5 minutes
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,bf_resolution=1,sched_min_interval=0,batch_sched_delay=0,default_queue_depth=100
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=300
KillWait=15
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=20
SlurmctldTimeout=30
SlurmdTimeout=60
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    # Debian's 22.05 slurmd loads a cgroup plugin even without cgroup tracking: v1, no mounts of its own
    cat >"$dir/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
IgnoreSystemd=yes
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
    cat >"$dir/env" <<EOF
export SLURM_CONF=$dir/slurm.conf
export MLIP_SLURM_CLUSTER=$dir
export MLIP_SLURM_JOBCOMP=$dir/log/jobcomp.log
EOF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    slurmd -f "$SLURM_CONF"
    if ! wait_for 60 "node $node idle" bash -c "sinfo -h -n $node -o %t | grep -qx idle"; then
        sinfo -N -l || true
        tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
        return 1
    fi
    log "up: node $node ($cpus CPUs, ${mem} MB), controller port $port_ctld, folder $dir"
}

stop_pid() { # pid file, name
    local file=$1 name=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    log "$name ($pid) ignored SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    local dir=$1
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/slurm.conf" ]; then
        # jobs first (their steps are slurmstepd children of slurmd), then the daemons
        SLURM_CONF=$dir/slurm.conf scancel --full --quiet --user=root 2>/dev/null || true
        for _ in $(seq 1 40); do
            [ -z "$(SLURM_CONF=$dir/slurm.conf squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_pid "$dir/run/slurmd.pid" slurmd
    stop_pid "$dir/run/slurmctld.pid" slurmctld
    # slurmstepd of this cluster left behind (they name the spool folder on their command line)
    local pid
    for pid in $(pgrep -f "slurmstepd" || true); do
        if tr '\0' ' ' <"/proc/$pid/environ" 2>/dev/null | grep -q "SLURM_CONF=$dir/slurm.conf"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    stop_pid "$dir/munge/munged.pid" munged
    rm -rf "$dir"
}

run() {
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || { log "run -- CMD ..."; exit 2; }
    install
    local rc=0
    CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mlip-slurm.XXXXXX")
    local dir=$CLUSTER_DIR
    trap 'stop "$CLUSTER_DIR"' EXIT
    trap 'exit 130' INT TERM
    if ! start "$dir"; then
        log "the cluster did not start (logs above)"
        exit 1
    fi
    # shellcheck disable=SC1091
    source "$dir/env"
    "$@" || rc=$?
    if [ "$rc" != 0 ]; then
        log "command failed ($rc): controller and node logs, last lines"
        tail -n 30 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    fi
    return "$rc"
}

case "${1:-}" in
install) install ;;
start) install && start "${2:?start DIR}" && echo "source ${2}/env" ;;
stop) stop "${2:?stop DIR}" ;;
run) shift && run "$@" ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
