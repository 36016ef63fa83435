#!/usr/bin/env bash
# The demo: a throwaway PostgreSQL, three `highlander run` nodes as separate processes, five real faults.
# Installs the PostgreSQL server programs first when they are missing (Debian/Ubuntu: apt-get, as root or through
# sudo; see scripts/prerequisites.sh), then runs `highlander demo`. Arguments are passed on, e.g.
#   ./scripts/demo.sh --duration 90s
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/prerequisites.sh

highlander_require demo
highlander_require_dotnet
exec dotnet run --project src/HighlanderPG.Cli -- demo "$@"
