#!/usr/bin/env bash
# Packs the shipped packages (HighlanderPG, HighlanderPG.Cli, HighlanderPG.Testing, HighlanderPG.Dashboard) in Release with warnings as errors
# and checks what is inside: license and readme, the assemblies and their XML docs, symbol packages whose PDBs point
# at the canonical repository (SourceLink), the nuspec's license expression and repository, and no test rig in what
# ships. .ci/run calls it before the tests. Output: artifacts/packages/ (or the directory given as $1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/prerequisites.sh

out=${1:-artifacts/packages}
repository=https://github.com/highlanderpg/highlanderpg-dotnet

highlander_require_dotnet
if ! command -v unzip >/dev/null 2>&1; then
  highlander_install_packages unzip
fi

failures=0
fail() {
  echo "error: $*" >&2
  failures=$((failures + 1))
}

rm -rf "$out"
mkdir -p "$out"
for project in src/HighlanderPG src/HighlanderPG.Cli src/HighlanderPG.Testing src/HighlanderPG.Dashboard; do
  echo "==> dotnet pack $project"
  if ! dotnet pack "$project" --configuration Release -warnaserror --output "$out" -nologo -v:q; then
    echo "error: dotnet pack $project failed (warnings count as errors here)" >&2
    exit 1
  fi
done

version=$(dotnet msbuild src/HighlanderPG -getProperty:PackageVersion -p:Configuration=Release)
echo "==> checking the packages of version $version in $out"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Names of the test rig: none may ship, neither as a file nor as a type or string inside a shipped assembly.
# HighlanderPG.Testing ships deliberately (a throwaway PostgreSQL, a fault proxy, a child-life journal); the network
# lab, the test suites' own helpers and their environment variables stay in test/.
forbidden_files='(^|/)(HighlanderPG\.TestKit|HighlanderPG\.TestNode|HighlanderPG\.Tests|HighlanderPG\.Cli\.Tests|HighlanderPG\.Sample|HighlanderPG\.Benchmarks|xunit[^/]*|testhost[^/]*|Microsoft\.TestPlatform[^/]*|Microsoft\.VisualStudio\.TestPlatform[^/]*)\.(dll|exe|pdb|xml|json)$'
forbidden_names=(NetworkLab NetworkLink ConfiguredOrLocalServer HIGHLANDER_TEST_CONNECTION HIGHLANDER_SKIP_NETNS Xunit xunit)

# Whether a file contains a name as UTF-8 (type, member and assembly names) or UTF-16 (string literals).
contains_name() {
  local file=$1 name=$2 utf16
  utf16=$(printf '%s' "$name" | sed 's/./&\\x00/g')
  LC_ALL=C grep -q -a -F -- "$name" "$file" || LC_ALL=C grep -q -a -P -- "$utf16" "$file"
}

check_package() {
  local id=$1
  shift
  local nupkg="$out/$id.$version.nupkg" snupkg="$out/$id.$version.snupkg"
  local dir="$work/$id" listing nuspec
  if [ ! -f "$nupkg" ]; then
    fail "$id: $nupkg was not produced"
    return
  fi
  if [ ! -f "$snupkg" ]; then
    fail "$id: the symbol package $snupkg was not produced (IncludeSymbols, SymbolPackageFormat snupkg)"
  fi

  listing=$(unzip -Z1 "$nupkg")
  mkdir -p "$dir"
  unzip -q -o "$nupkg" -d "$dir"

  # Files that must be in the package.
  local expected
  for expected in LICENSE README.md "$id.nuspec" "$@"; do
    if ! grep -q -x -F -- "$expected" <<<"$listing"; then
      fail "$id: the package has no $expected"
    fi
  done

  # A library's PDBs belong in the symbol package (the tool keeps its own as well, for line numbers in its stack
  # traces); test rig files belong nowhere.
  if [ "$id" != HighlanderPG.Cli ] && grep -q -E '\.pdb$' <<<"$listing"; then
    fail "$id: the package contains PDBs (they belong in the .snupkg): $(grep -E '\.pdb$' <<<"$listing" | tr '\n' ' ')"
  fi
  if grep -q -E -- "$forbidden_files" <<<"$listing"; then
    fail "$id: the package contains test-only files: $(grep -E -- "$forbidden_files" <<<"$listing" | tr '\n' ' ')"
  fi
  local assembly name
  while IFS= read -r assembly; do
    case $(basename "$assembly") in
      HighlanderPG*.dll | highlander.dll) ;;
      *) continue ;;
    esac
    for name in "${forbidden_names[@]}"; do
      if contains_name "$dir/$assembly" "$name"; then
        fail "$id: $assembly contains '$name', which is test-only code (it belongs in test/, not in a shipped assembly)"
      fi
    done
  done < <(grep -E '\.dll$' <<<"$listing")

  # The nuspec: license expression, readme, repository with the commit.
  nuspec=$(cat "$dir/$id.nuspec")
  grep -q '<license type="expression">MIT</license>' <<<"$nuspec" \
    || fail "$id: the nuspec has no <license type=\"expression\">MIT</license> (PackageLicenseExpression)"
  grep -q '<readme>README.md</readme>' <<<"$nuspec" \
    || fail "$id: the nuspec has no <readme>README.md</readme> (PackageReadmeFile)"
  grep -q "<repository type=\"git\" url=\"$repository\"" <<<"$nuspec" \
    || fail "$id: the nuspec's <repository> is not type=\"git\" url=\"$repository\" (RepositoryUrl)"
  grep -q -E '<repository [^>]*commit="[0-9a-f]{40}"' <<<"$nuspec" \
    || fail "$id: the nuspec's <repository> has no commit (SourceLink found no git repository)"
  grep -q "<projectUrl>$repository</projectUrl>" <<<"$nuspec" \
    || fail "$id: the nuspec's <projectUrl> is not $repository"
  grep -q '<authors>HighlanderPG for .NET contributors</authors>' <<<"$nuspec" \
    || fail "$id: the nuspec's <authors> is not 'HighlanderPG for .NET contributors'"
  grep -q '<tags>[^<]' <<<"$nuspec" || fail "$id: the nuspec has no <tags> (PackageTags)"
  grep -q '<description>[^<]' <<<"$nuspec" || fail "$id: the nuspec has no <description>"

  # The symbol package: a PDB for each of our assemblies, whose SourceLink points at the canonical repository.
  if [ -f "$snupkg" ]; then
    local sdir="$work/$id.symbols" pdb found=0
    mkdir -p "$sdir"
    unzip -q -o "$snupkg" -d "$sdir"
    while IFS= read -r pdb; do
      found=1
      if ! LC_ALL=C grep -q -a -F "https://raw.githubusercontent.com/highlanderpg/highlanderpg-dotnet/" "$sdir/$pdb"; then
        fail "$id: $pdb in the symbol package has no SourceLink to https://raw.githubusercontent.com/highlanderpg/highlanderpg-dotnet/"
      fi
    done < <(unzip -Z1 "$snupkg" | grep -E '\.pdb$')
    [ "$found" -eq 1 ] || fail "$id: the symbol package contains no PDB"
  fi
  echo "    $id: $(wc -l <<<"$listing") files checked"
}

check_package HighlanderPG lib/net10.0/HighlanderPG.dll lib/net10.0/HighlanderPG.xml
check_package HighlanderPG.Testing lib/net10.0/HighlanderPG.Testing.dll lib/net10.0/HighlanderPG.Testing.xml
check_package HighlanderPG.Dashboard lib/net10.0/HighlanderPG.Dashboard.dll lib/net10.0/HighlanderPG.Dashboard.xml
check_package HighlanderPG.Cli tools/net10.0/any/highlander.dll tools/net10.0/any/highlander.xml \
  tools/net10.0/any/DotnetToolSettings.xml tools/net10.0/any/HighlanderPG.dll

# The tool package is a dotnet tool named highlander.
if [ -f "$work/HighlanderPG.Cli/HighlanderPG.Cli.nuspec" ]; then
  grep -q '<packageType name="DotnetTool"' "$work/HighlanderPG.Cli/HighlanderPG.Cli.nuspec" \
    || fail "HighlanderPG.Cli: the nuspec does not declare the DotnetTool package type"
  grep -q 'Command Name="highlander"' "$work/HighlanderPG.Cli/tools/net10.0/any/DotnetToolSettings.xml" 2>/dev/null \
    || fail "HighlanderPG.Cli: DotnetToolSettings.xml does not name the command 'highlander'"
fi

if [ "$failures" -ne 0 ]; then
  echo "error: $failures package check(s) failed (packages in $out)" >&2
  exit 1
fi
echo "==> packages OK: $(cd "$out" && ls | tr '\n' ' ')"
