#!/usr/bin/env bash
# Installs what the demo or the tests need on a fresh Debian/Ubuntu machine, when it is missing:
#   demo:  the PostgreSQL server programs (initdb, pg_ctl, postgres)        Debian package: postgresql
#   tests: the same, plus PgBouncer (pooler tests), iproute2 + iptables (network-namespace partition tests),
#          libfaketime (a test server whose clock steps) and chromium (the dashboard's page in a headless browser)
#                                                      Debian packages: pgbouncer iproute2 iptables libfaketime chromium
# Nothing is installed when everything is there already. apt-get runs directly as root, through sudo otherwise;
# where neither works (no root and no sudo, or not Debian/Ubuntu) it prints what to install and fails.
#
# Usage: scripts/prerequisites.sh demo|tests    (scripts/demo.sh and scripts/test.sh call it; it may also be sourced)
#
# The PostgreSQL programs are looked up in $HIGHLANDER_PG_BINDIR (the variable HighlanderPG.Testing reads too),
# /usr/lib/postgresql/*/bin (Debian's layout) and PATH; the others in /usr/sbin, /sbin, /usr/bin, /bin and PATH.

# Where the PostgreSQL server programs are, or nothing.
highlander_pg_bindir() {
  local dir
  for dir in ${HIGHLANDER_PG_BINDIR:+"$HIGHLANDER_PG_BINDIR"} /usr/lib/postgresql/*/bin; do
    if [ -f "$dir/initdb" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  local -a path
  IFS=: read -r -a path <<<"$PATH"
  for dir in "${path[@]}"; do
    if [ -f "$dir/initdb" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# Whether a system program is installed (also in sbin directories, which are not on a normal user's PATH).
highlander_have_program() {
  local dir
  local -a path
  IFS=: read -r -a path <<<"$PATH"
  for dir in /usr/sbin /sbin /usr/bin /bin "${path[@]}"; do
    if [ -f "$dir/$1" ] && [ -x "$dir/$1" ]; then
      return 0
    fi
  done
  return 1
}

# The Debian packages that are missing for "demo" or "tests", one a line.
highlander_missing_packages() {
  local what=$1
  if ! highlander_pg_bindir >/dev/null; then
    echo postgresql
  elif [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    # As root the throwaway servers run as the `postgres` user, which Debian's postgresql package creates.
    echo postgresql
  fi
  if [ "$what" = tests ]; then
    highlander_have_program pgbouncer || echo pgbouncer
    highlander_have_program ip || echo iproute2
    highlander_have_program iptables || echo iptables
    # libfaketime, preloaded into a throwaway server of its own to step that server's wall clock (ServerClockStepTests).
    compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || echo libfaketime
    # Debian's chromium, driven by Playwright in the dashboard's browser test (Playwright downloads no browser of its own).
    [ -x /usr/bin/chromium ] || echo chromium
  fi
}

highlander_cannot_install() {
  local reason=$1
  shift
  {
    echo "error: missing: $*"
    echo "       $reason, so this script cannot install them."
    echo "       On Debian or Ubuntu, as root:  apt-get update && apt-get install -y $*"
    echo "       Elsewhere, install the same programs from your system's packages:"
    for package in "$@"; do
      case $package in
        postgresql) echo "         - the PostgreSQL server programs, version 14 or later (initdb, pg_ctl, postgres; e.g. Fedora: postgresql-server," \
                         "Alpine: postgresql, macOS: brew install postgresql); if they are not on PATH or in" \
                         "/usr/lib/postgresql/*/bin, set HIGHLANDER_PG_BINDIR to their directory" ;;
        pgbouncer)  echo "         - PgBouncer (pgbouncer)" ;;
        iproute2)   echo "         - iproute2 (the ip program; Fedora: iproute)" ;;
        iptables)   echo "         - iptables" ;;
        libfaketime) echo "         - libfaketime (libfaketime.so.1, preloaded into a test server to step its clock)" ;;
        chromium)   echo "         - Chromium at /usr/bin/chromium (the dashboard's browser test)" ;;
        *)          echo "         - $package" ;;
      esac
    done
    echo "       then run this command again."
  } >&2
  return 1
}

# Installs Debian packages with apt-get (as root, or through sudo); returns non-zero (after saying what to install
# by hand) where it cannot.
highlander_install_packages() {
  local -a sudo=()
  if ! command -v apt-get >/dev/null 2>&1; then
    highlander_cannot_install "this is not a Debian or Ubuntu machine (no apt-get)" "$@"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      highlander_cannot_install "you are not root and sudo is not installed" "$@"
      return 1
    fi
    sudo=(sudo)
  fi

  echo "==> installing $* (apt-get${sudo:+ through sudo})" >&2
  if ! "${sudo[@]}" apt-get update \
    || ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; then
    highlander_cannot_install "apt-get failed (see above)" "$@"
    return 1
  fi
}

# Installs what "demo" or "tests" needs; returns non-zero (after saying why) when it cannot.
highlander_require() {
  local what=${1:?demo or tests}
  local -a missing
  mapfile -t missing < <(highlander_missing_packages "$what")
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  highlander_install_packages "${missing[@]}" || return 1

  mapfile -t missing < <(highlander_missing_packages "$what")
  if [ "${#missing[@]}" -ne 0 ]; then
    echo "error: apt-get installed the packages, but still missing: ${missing[*]}" >&2
    echo "       (looked for initdb and pg_ctl in \$HIGHLANDER_PG_BINDIR, /usr/lib/postgresql/*/bin and PATH;" >&2
    echo "       for the others in /usr/sbin, /sbin, /usr/bin, /bin and PATH)" >&2
    return 1
  fi
}

# Puts the .NET SDK on PATH if it is installed in a usual place but not on PATH (e.g. under sudo's secure_path).
highlander_require_dotnet() {
  if ! command -v dotnet >/dev/null 2>&1; then
    local candidate
    for candidate in "${DOTNET_ROOT:-}" "$HOME/.dotnet" /usr/share/dotnet /usr/lib/dotnet /opt/dotnet /usr/local/share/dotnet; do
      if [ -n "$candidate" ] && [ -x "$candidate/dotnet" ]; then
        export PATH="$candidate:$PATH"
        break
      fi
    done
  fi
  if ! command -v dotnet >/dev/null 2>&1; then
    echo "error: the .NET SDK ('dotnet') is not on PATH: install the .NET 10 SDK (global.json names the version)" >&2
    return 1
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case ${1:-} in
    demo | tests) highlander_require "$1" ;;
    *) echo "usage: $0 demo|tests" >&2; exit 2 ;;
  esac
fi
