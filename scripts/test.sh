#!/usr/bin/env bash
# The tests, as CI runs them (.ci/run calls this script). Installs what they need first when it is missing: the
# PostgreSQL server programs, PgBouncer, iproute2 and iptables (Debian/Ubuntu: apt-get, as root or through sudo; see
# scripts/prerequisites.sh), then runs `dotnet test HighlanderPG.slnx --configuration Release` and the fault run's
# smoke (tools/HighlanderPG.FaultRun --smoke --seed 1). Arguments are passed on to dotnet test (the smoke is then
# skipped), e.g.
#   ./scripts/test.sh --filter "FullyQualifiedName~FencingTests"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/prerequisites.sh

# The partition tests cut a node off with iptables inside a network namespace: that needs root. Say so now rather
# than after the whole run.
if [ "$(id -u)" -ne 0 ] && [ "${HIGHLANDER_SKIP_NETNS:-}" != 1 ]; then
  echo "error: the partition tests need root (network namespaces and iptables)." >&2
  echo "       Run the tests as root (sudo ./scripts/test.sh), or skip those tests knowingly:" >&2
  echo "       HIGHLANDER_SKIP_NETNS=1 ./scripts/test.sh" >&2
  exit 1
fi

highlander_require tests
highlander_require_dotnet
dotnet test HighlanderPG.slnx --configuration Release "$@"

# Then the fault run's smoke (tools/HighlanderPG.FaultRun, README "Fault run"): every fault kind at least once on a
# seeded schedule, with its checker (about a minute). Skipped when arguments select a part of the tests.
if [ "$#" -gt 0 ]; then
  echo "fault-run smoke skipped (arguments given to dotnet test)"
  exit 0
fi
smoke=(--smoke --seed 1 --report artifacts/fault-run-smoke)
if [ -n "${HIGHLANDER_TEST_CONNECTION:-}" ]; then
  smoke+=(--connection "$HIGHLANDER_TEST_CONNECTION")
fi
exec dotnet run --configuration Release --project tools/HighlanderPG.FaultRun -- "${smoke[@]}"
