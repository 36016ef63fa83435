#!/usr/bin/env bash
# The tests, as CI runs them (.ci/run calls this script). Installs what they need first when it is missing: the
# PostgreSQL server programs, PgBouncer, iproute2 and iptables (Debian/Ubuntu: apt-get, as root or through sudo; see
# scripts/prerequisites.sh), then runs `dotnet test HighlanderPG.slnx --configuration Release`. Arguments are passed
# on to dotnet test, e.g.
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
exec dotnet test HighlanderPG.slnx --configuration Release "$@"
