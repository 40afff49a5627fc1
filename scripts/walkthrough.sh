#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copyright 2026 The d2c Authors

# Runs docs/walkthrough.md as written, the way CI does: its ```sh blocks, in
# order, in one bash shell, as an unprivileged user (the walkthrough is for an
# ordinary user: mosquitto started as root would switch to the user mosquitto,
# which cannot read the walkthrough's 0600 keys), on free ports of 127.0.0.1
# passed in the walkthrough's DEMO_*_PORT variables. Run it as root:
#
#   ./scripts/walkthrough.sh
#
# It creates the user WALKTHROUGH_USER (default d2c-walkthrough) if missing,
# copies the working tree (the files git tracks or would, without .git) to
# ~USER/d2c, runs the walkthrough there with a time limit, checks what it
# printed, and always stops every process the run left and removes ~USER/d2c,
# ~USER/d2c-demo and the user's Go caches: the user must be one for this
# script alone. The user's Go downloads modules from a copy of root's module
# cache (then from root's GOPROXY) and builds with an empty build cache.
#
# Environment:
#   WALKTHROUGH_USER        the user (default d2c-walkthrough)
#   WALKTHROUGH_TIMEOUT     seconds the run may take, build included (default 600)
#   WALKTHROUGH_TRANSCRIPT  also copy the transcript (the blocks' output, each
#                           after a line "@@BLOCK n@@") to this file
#   DEMO_MQTT_PORT, DEMO_EST_PORT, DEMO_CMD_PORT,
#   DEMO_UPDATE_PORT, DEMO_OPS_PORT
#                           a port to use instead of a free one (8883 8443
#                           8444 8445 9090: the run the walkthrough shows)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
doc=$repo/docs/walkthrough.md
user=${WALKTHROUGH_USER:-d2c-walkthrough}
limit=${WALKTHROUGH_TIMEOUT:-600}
say() { printf 'walkthrough.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: it runs the walkthrough as the unprivileged user $user"
for tool in go git tar runuser setsid timeout curl jq openssl base64 /usr/sbin/mosquitto; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install mosquitto curl jq openssl)"
done

if ! id -u "$user" >/dev/null 2>&1; then
  say "creating the user $user"
  useradd --create-home --shell /bin/bash "$user"
fi
uid=$(id -u "$user")
[[ $uid -ne 0 ]] || die "$user is root"
home=$(getent passwd "$user" | cut -d: -f6)
[[ -d $home ]] || { mkdir -p "$home"; chown "$user:" "$home"; }
state=("$home/d2c" "$home/d2c-demo" "$home/go" "$home/.cache/go-build" "$home/.config/go")

work=$(mktemp -d /tmp/d2c-walkthrough.XXXXXX)
chmod 755 "$work"
mkdir "$work/run"
chown "$user:" "$work/run"
transcript=$work/transcript.txt

# The processes of the run: the walkthrough's shell is a session leader
# (setsid) that writes its process ID to run/pid; its background programs
# stay in its process group. Anything else the user still runs is also ours.
user_processes() {
  local d
  for d in /proc/[0-9]*; do
    [[ $(stat -c %u "$d" 2>/dev/null) == "$uid" ]] && echo "${d#/proc/}"
  done
  return 0
}
cleanup() {
  local pg p left
  if [[ -s $work/run/pid ]]; then
    pg=$(<"$work/run/pid")
    kill -TERM -- "-$pg" 2>/dev/null && sleep 2
    kill -KILL -- "-$pg" 2>/dev/null || true
  fi
  left=$(user_processes)
  if [[ -n $left ]]; then
    say "stopping processes of $user the walkthrough left:"
    for p in $left; do
      printf '  %s %s\n' "$p" "$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)"
    done
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  rm -rf "${state[@]}" "$work"
}
trap cleanup EXIT
rm -rf "${state[@]}"

# Free ports: not listening on any address now, and below the range of
# ephemeral ports (ip_local_port_range) that outgoing connections use.
declare -A taken=()
for f in /proc/net/tcp /proc/net/tcp6; do
  [[ -r $f ]] || continue
  while read -r _ addr _ st _; do
    [[ $st == 0A ]] && taken[$((16#${addr##*:}))]=1
  done < <(tail -n +2 "$f")
done
read -r eph_low _ < /proc/sys/net/ipv4/ip_local_port_range || eph_low=32768
hi=$(( eph_low > 20000 ? eph_low : 60999 ))
ports=()
for var in DEMO_MQTT_PORT DEMO_EST_PORT DEMO_CMD_PORT DEMO_UPDATE_PORT DEMO_OPS_PORT; do
  port=${!var:-}
  if [[ -z $port ]]; then
    while :; do
      port=$(( 20000 + (RANDOM * 32768 + RANDOM) % (hi - 20000) ))
      [[ -z ${taken[$port]:-} ]] && break
    done
  fi
  taken[$port]=1
  ports+=("$var=$port")
done
say "ports: ${ports[*]}"

# The repository, as the user's own copy.
mkdir "$home/d2c"
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$home/d2c"
chown -R "$user:" "$home/d2c"

# The modules the build needs, as a file proxy the user can read.
go mod download
dl=$(go env GOMODCACHE)/cache/download
while read -r mod ver _; do
  ver=${ver%/go.mod}
  esc=$(sed 's/[A-Z]/!\L&/g' <<<"$mod")
  mkdir -p "$work/goproxy/$esc/@v"
  for ext in info mod zip; do
    [[ -e $dl/$esc/@v/$ver.$ext ]] && cp "$dl/$esc/@v/$ver.$ext" "$work/goproxy/$esc/@v/"
  done
done < go.sum
chmod -R a+rX "$work/goproxy"

# The walkthrough's sh blocks, exactly as written, each after a marker. Every
# command that fails is logged to run/errors: the walkthrough has one that
# must fail (the revoked device's renewal), and no other.
awk '
BEGIN { print "echo $$ > \"$WT_RUN/pid\""
        print "trap '\''echo \"$LINENO: $BASH_COMMAND\" >> \"$WT_RUN/errors\"'\'' ERR"
        print "cd ~/d2c"; n = 0 }
/^```sh$/ { inblk = 1; n++; print "echo \"@@BLOCK " n "@@\""; next }
/^```/ && inblk { inblk = 0; next }
inblk { print }
' "$doc" > "$work/walkthrough.bash"
chmod 644 "$work/walkthrough.bash"
blocks=$(grep -c '^```sh$' "$doc")

gobin=$(dirname "$(command -v go)")
say "running docs/walkthrough.md ($blocks blocks) as $user, at most ${limit}s"
t0=$(date +%s)
rc=0
timeout --kill-after=10 "$limit" runuser -u "$user" -- env -i \
  HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash LANG=C.UTF-8 \
  PATH="$gobin:/usr/local/bin:/usr/bin:/bin" \
  GOPROXY="file://$work/goproxy,$(go env GOPROXY)" GOSUMDB="$(go env GOSUMDB)" \
  GOTOOLCHAIN="$(go env GOTOOLCHAIN)" \
  WT_RUN="$work/run" "${ports[@]}" \
  setsid --wait bash "$work/walkthrough.bash" > "$transcript" 2>&1 < /dev/null || rc=$?
took=$(( $(date +%s) - t0 ))
if [[ -n ${WALKTHROUGH_TRANSCRIPT:-} ]]; then
  cp "$transcript" "$WALKTHROUGH_TRANSCRIPT"
fi

# What the run must show.
failures=()
check() { # check DESCRIPTION EXTENDED-REGEX [MIN-COUNT]
  local n
  n=$(grep -cE -- "$2" "$transcript" || true)
  (( n >= ${3:-1} )) || failures+=("$1: no line matches /$2/${3:+ (need $3)}")
}
(( rc == 0 )) || failures+=("the walkthrough exited with status $rc$( ((rc == 124)) && echo ": timed out after ${limit}s")")
check "every block ran" "^@@BLOCK $blocks@@\$"
check "verified readings" '^[0-9TZ:.-]+ sensor-0001 temperature [0-9]+/[0-9]+ \{"celsius":' 3
check "the command succeeded" '"name":"set-interval".*"state":"succeeded".*"failed":false'
check "the device obeyed" '^interval 2s$'
check "update installed" 'sensor-0001 update [0-9]+/[0-9]+ \{"event":"installed","version":1'
check "update confirmed" 'sensor-0001 update [0-9]+/[0-9]+ \{"event":"confirmed","version":1'
check "the verifier refused the revoked device" '"msg":"envelope refused".*certificate revoked'
check "the command API refused the revoked device" '^HTTP 404$'
check "the broker refused the revoked device" 'remote error: tls: revoked certificate'
check "the registrar refused the renewal" 'EST server refused \(HTTP 401\): identity: certificate revoked'
check "the service listened on the ports given" "\"registrar\":\"127.0.0.1:${ports[1]#*=}\""
if [[ " ${ports[*]} " != *=@(8883|8443|8444|8445|9090)\ * ]] &&
  grep -qE '127\.0\.0\.1:(8883|8443|8444|8445|9090)([^0-9]|$)' "$transcript"; then
  failures+=("a default port is used though none was given: the walkthrough hard-codes one")
fi
errors=$(cat "$work/run/errors" 2>/dev/null || true)
if [[ $(grep -c . <<<"$errors") -ne 1 || $errors != *"d2c device renew "* ]]; then
  failures+=("the commands that failed are not exactly the renewal of the revoked device:"$'\n'"${errors:-(none)}")
fi

if ((${#failures[@]})); then
  say "FAILED after ${took}s:"
  printf '  %s\n' "${failures[@]}"
  echo "--- the transcript's last 60 lines"
  tail -n 60 "$transcript"
  for log in cloud.log device.log broker/mosquitto.log; do
    if [[ -e $home/d2c-demo/$log ]]; then
      echo "--- the last 20 lines of ~/d2c-demo/$log"
      tail -n 20 "$home/d2c-demo/$log"
    fi
  done
  exit 1
fi
say "ok in ${took}s: $(grep -cE ' sensor-0001 temperature ' "$transcript") verified readings, command succeeded, update installed and confirmed, the revoked device refused"
