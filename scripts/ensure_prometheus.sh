#!/usr/bin/env bash
# `make test` runs this: the observability tests need a real Prometheus and promtool
# (Debian's `prometheus` package). Installs it when either is missing: apt-get update,
# then install, waiting up to 5 minutes for the dpkg lock. As root, or through
# passwordless sudo. If it cannot, it says why and the tests that need the tools fail
# with a clear message (they never skip).
set -u
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "ensure_prometheus: prometheus/promtool missing and neither root nor passwordless sudo:" \
         "install Debian's prometheus package (apt-get install prometheus); the observability tests will fail" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_prometheus: no apt-get here: install prometheus and promtool (2.42 or newer) on PATH" >&2
    exit 0
fi
echo "installing Debian's prometheus package (prometheus, promtool) for the observability tests ..."
export DEBIAN_FRONTEND=noninteractive
LOCK="-o DPkg::Lock::Timeout=300"
LOG="$(mktemp -t ensure_prometheus.XXXXXX.log)"
# The package's own service would listen on every interface (:9090): keep it from
# starting (policy-rc.d 101 = "not allowed"), only while installing, and only if no
# policy is there already. The tests start their own servers on loopback.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null && $SUDO chmod 755 "$POLICY" && OWN_POLICY=1
fi
if ! $SUDO apt-get $LOCK update -qq >"$LOG" 2>&1 ||
   ! $SUDO apt-get $LOCK install -y -qq --no-install-recommends prometheus >>"$LOG" 2>&1; then
    echo "ensure_prometheus: apt-get failed (log: $LOG); the observability tests will fail" >&2
    tail -5 "$LOG" >&2
fi
if [ "$OWN_POLICY" = 1 ]; then
    $SUDO rm -f "$POLICY"
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true  # started anyway: stop it
fi
exit 0
