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
if ! $SUDO apt-get $LOCK update -qq >/tmp/ensure_prometheus.log 2>&1 ||
   ! $SUDO apt-get $LOCK install -y -qq --no-install-recommends prometheus >>/tmp/ensure_prometheus.log 2>&1; then
    echo "ensure_prometheus: apt-get failed (log: /tmp/ensure_prometheus.log); the observability tests will fail" >&2
    tail -5 /tmp/ensure_prometheus.log >&2
fi
exit 0
