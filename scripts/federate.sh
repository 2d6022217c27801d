#!/usr/bin/env bash
# Quick start 1: set up (idempotently) and run a complete DP federation of synthetic clinics.
# Any `oralfed federate` option may follow, e.g. scripts/federate.sh --clinics 8 --rounds 10.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/oralfed" federate "$@"
