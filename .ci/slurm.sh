#!/usr/bin/env bash
# A single-node Slurm cluster on loopback, without systemd, for the tests:
#   bash .ci/slurm.sh start [DIR]   munged, slurmctld, slurmd; waits for an idle node;
#                                   writes DIR/env (SLURM_CONF, PATH) for the tests
#   bash .ci/slurm.sh stop [DIR]    stops every daemon by its pid file
# DIR defaults to $OPEN_LTH_SLURM_DIR or /tmp/open_lth_slurm. Needs root and Debian's
# slurm-wlm and munge (`apt-get install -y --no-install-recommends slurm-wlm munge`).
# Exit status 0 with a running cluster; otherwise non-zero and one line saying why.
set -euo pipefail

action="${1:-start}"
DIR="$(realpath -m "${2:-${OPEN_LTH_SLURM_DIR:-/tmp/open_lth_slurm}}")"

stop() {
    # Jobs first, so that no job step outlives its slurmd.
    if [[ -f "$DIR/slurm.conf" && -f "$DIR/slurmctld.pid" ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
        export SLURM_CONF="$DIR/slurm.conf"
        scancel --full --quiet --user=root 2>/dev/null || true
        for _ in $(seq 100); do
            [[ -z "$(squeue --noheader --states=RUNNING,COMPLETING,CONFIGURING 2>/dev/null)" ]] && break
            sleep 0.2
        done
    fi
    for daemon in slurmd slurmctld munged; do
        pid_file="$DIR/$daemon.pid"
        [[ -f "$pid_file" ]] || continue
        pid="$(cat "$pid_file")"
        if [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pid_file"
    done
}

if [[ "$action" == stop ]]; then
    stop
    exit 0
fi
[[ "$action" == start ]] || { echo "usage: $0 start|stop [DIR]" >&2; exit 2; }

for tool in munged slurmctld slurmd sinfo sbatch; do
    command -v "$tool" >/dev/null || { echo "slurm: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
done
[[ "$(id -u)" == 0 ]] || { echo "slurm: the single-node cluster needs root" >&2; exit 3; }

stop  # a cluster left by an earlier run
rm -rf "$DIR"
mkdir -p "$DIR"/{state,spool,bin}
chmod 700 "$DIR"
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)"
# Ports of our own, so that a cluster elsewhere on the machine is not in the way.
port="${OPEN_LTH_SLURM_PORT:-16817}"

# munge: its own key, socket and pid file under DIR.
dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge.key"
munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge.sock" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge.seed"

# cred_expire=10: a requeued job waits that long before it starts again (default 120).
# KillWait=5: SIGKILL 5 s after SIGTERM. MinJobAge: squeue keeps finished jobs for an
# hour, since without accounting it is the only record of their end state.
cat > "$DIR/slurm.conf" <<CONF
ClusterName=openlth
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.sock,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=3600
SchedulerParameters=sched_interval=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$DIR/slurm.conf"

# Without an accounting daemon there is no sacct, and submitit would wait forever on a
# job that died: this stand-in answers sacct's question from squeue.
cat > "$DIR/bin/sacct" <<'SACCT'
#!/usr/bin/env bash
ids=()
while [[ $# -gt 0 ]]; do
    case "$1" in -j) ids+=("$2"); shift 2 ;; *) shift ;; esac
done
echo "JobID|State|NodeList"
for id in "${ids[@]}"; do
    squeue --states=all --noheader --array --format='%i|%T|%N' --jobs="$id" 2>/dev/null || true
done
SACCT
chmod +x "$DIR/bin/sacct"

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    state="$(sinfo --noheader --format=%t 2>/dev/null | head -1 || true)"
    if [[ "$state" == idle ]]; then
        printf 'export SLURM_CONF=%s\nexport PATH=%s:"$PATH"\n' "$SLURM_CONF" "$DIR/bin" > "$DIR/env"
        echo "slurm: single-node cluster up ($host, $cpus CPUs), SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
echo "slurm: the node did not become idle (sinfo says '${state:-nothing}'; see $DIR/*.log)" >&2
stop
exit 4
