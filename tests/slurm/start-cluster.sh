#!/usr/bin/env bash
# A one-node Slurm cluster for the executor tests: munged, slurmctld and slurmd started in the
# background (no systemd), the node declaring CPUs=8 and two fake GPUs (plain files in gres.conf).
#
#   bash tests/slurm/start-cluster.sh DIR    # writes DIR/slurm.conf, starts the daemons, waits
#   export SLURM_CONF=DIR/slurm.conf          # what every Slurm command then needs
#   bash tests/slurm/stop-cluster.sh DIR      # stops them
#
# Needs root and Debian's packages `slurm-wlm munge` (`.ci/run` installs them).
set -euo pipefail
dir=$(realpath -m "${1:?usage: start-cluster.sh DIR}")
mkdir -p "$dir"/{state,spool,munge}
host=$(hostname -s)
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || { echo "start-cluster: $tool not found (apt-get install -y slurm-wlm munge)" >&2; exit 3; }
done

# munge: our own key and socket, so nothing on the host is touched.
if [ ! -f "$dir/munge/munge.key" ]; then
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
fi
socket="$dir/munge/munge.socket"
# Two free ports (unless given), so a cluster left running elsewhere does not get in the way.
read -r ctld_port slurmd_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
ctld_port=${SLURMCTLD_PORT:-$ctld_port}
slurmd_port=${SLURMD_PORT:-$slurmd_port}
munged --force --key-file="$dir/munge/munge.key" --socket="$socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
  --seed-file="$dir/munge/munged.seed"

# Slurm wants character devices for GPU files; these are inert nodes (the major number of
# /dev/null's memory driver), so nothing can be done with them but counting.
for i in 0 1; do
  [ -c "$dir/fake-gpu$i" ] || { rm -f "$dir/fake-gpu$i"; mknod "$dir/fake-gpu$i" c 1 $((3 + i)); }
done
cat > "$dir/gres.conf" <<CONF
NodeName=$host Name=gpu File=$dir/fake-gpu[0-1]
CONF
cat > "$dir/slurm.conf" <<CONF
ClusterName=edgeeval
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerParameters=sched_interval=1
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=8 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -i
slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "start-cluster: one node ($host, 8 CPUs, 2 fake GPUs) is up; SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "start-cluster: the node did not come up; logs:" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
