#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script). It installs what the
# tests need on a fresh machine that has only the Rust toolchain, then runs, in order:
# formatting, clippy with warnings as errors, rustdoc with warnings as errors, a smoke run of the benchmark harness (which
# proves the harness works; it asserts no timings), every test of the workspace, the
# JavaScript client's tests, the chat page's browser test, and the cluster simulator's batch
# of seeds (with and without its deliberate bugs).
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

# Redis is the benchmark's peer for durable appends; the smoke run starts it on loopback.
if ! have redis-server || ! have redis-benchmark; then
  if have apt-get; then
    echo "installing redis-server (the store benchmark's peer)"
    { apt-get install -y -q redis-server || { apt-get update -q && apt-get install -y -q redis-server; }; } >/dev/null
  fi
fi
# The benchmark's peer for connection density (its smoke run starts it on loopback).
if ! have nats-server && ! [ -x /usr/sbin/nats-server ]; then
  if have apt-get; then
    echo "installing nats-server (the density benchmark's peer)"
    { apt-get install -y -q nats-server || { apt-get update -q && apt-get install -y -q nats-server; }; } >/dev/null
  fi
fi

# The interoperability tests drive the daemon with clients nobody here wrote: Python
# `websockets` and Node `ws`.
apt_install() {
  have apt-get || return 1
  { apt-get install -y -q "$@" || { apt-get update -q && apt-get install -y -q "$@"; }; } >/dev/null
}
# The interpreter the interop test runs is a virtual environment of our own under target/, so
# that whichever python3 comes first on PATH (Debian's, or a pyenv build that cannot import
# Debian's packages), the module is installed for the interpreter that imports it.
venv=target/interop-venv
if ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
  echo "installing Python websockets into $venv (interop tests)"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt_install python3-venv && python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q websockets
  "$venv/bin/python" -c 'import websockets'
fi
export INTEROP_PYTHON="$PWD/$venv/bin/python"
if ! have node || ! have npm; then
  echo "installing Node.js and npm (interop tests)"
  apt_install nodejs npm
fi
if [ ! -d edge/tests/interop/node_modules/ws ]; then
  (cd edge/tests/interop && npm install --no-audit --no-fund --no-save --silent ws@8)
fi

# The chat page is tested in Debian's Chromium, driven by playwright-core (never Playwright's
# own browser download). Each is checked by using it. playwright-core 1.61 is the last that
# runs on Node 18 (Debian bookworm's nodejs, if Node has to be installed here); it drives
# Debian's Chromium 148.
if ! have chromium; then
  echo "installing chromium (the chat page's browser test)"
  apt_install chromium
fi
chromium --version >/dev/null
if ! (cd edge/tests/browser && node -e "require('playwright-core')") 2>/dev/null; then
  (cd edge/tests/browser && npm install --no-audit --no-fund --no-save --silent playwright-core@1.61)
  (cd edge/tests/browser && node -e "require('playwright-core')")
fi

# `promtool check metrics` (Debian's prometheus package) reads every node's /metrics in the tests.
if ! have promtool; then
  echo "installing prometheus (promtool checks the metrics)"
  apt_install --no-install-recommends prometheus
fi
promtool --version >/dev/null

# The partition test runs its nodes in a network namespace it makes, with `ip` (iproute2).
if ! have ip; then
  echo "installing iproute2 (the partition test's namespace and routing rules)"
  apt_install iproute2
fi

for component in rustfmt clippy; do
  if have rustup && ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The on-disk formats are documented as rustdoc byte tables: keep their links whole.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q
# Every benchmark scenario, tiny (it proves the harness works; it asserts no timings). The
# chat scenarios drive the daemon built beside the bench; density measures NATS beside it.
cargo build -q -p switchboard-edge --bin switchboard
cargo run -q -p switchboard-bench -- all --smoke --peer nats --json

# Every test of the workspace; the last line totals what the runners reported.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# The JavaScript client (tools/js-client) against the daemon built above, with Node's own
# test runner and the `ws` package installed for the interop tests.
(cd tools/js-client && SB_DAEMON="$PWD/../../target/debug/switchboard" \
  timeout 600 node --test --test-reporter=tap test/client.test.js) 2>&1 | tee -a "$log"
# The chat page in Chromium: two people, offline spells, a server restart (screenshots in
# target/browser-screenshots/).
(cd edge/tests/browser && SB_DAEMON="$PWD/../../../target/debug/switchboard" \
  timeout 600 node --test --test-reporter=tap page.test.mjs) 2>&1 | tee -a "$log"
# The deterministic cluster simulator (tools/sim): every seed of the batch passes its
# checkers, and each deliberate bug, built in by a feature that no real build has, is caught
# within the same batch (`--expect-failures` fails if no seed fails).
cargo run -q -p switchboard-sim -- --seeds 500 2>&1 | tee -a "$log"
for bug in bug-no-gap-repair bug-no-dedup bug-no-cursor-replay bug-ack-before-commit; do
  echo "switchboard-sim with the deliberate bug $bug:"
  cargo run -q -p switchboard-sim --features "$bug" -- --seeds 500 --expect-failures | tail -n 2
done
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
  /^# pass [0-9]+$/ { p += $3 }
  /^# fail [0-9]+$/ { f += $3 }
  END { printf "total: %d passed, %d failed\n", p, f }
' "$log"
