#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copyright 2026 The d2c Authors

# Lists the source files that lack the d2c license header (CONTRIBUTING.md,
# "License headers"), checks that none does, or adds it.
#
#   scripts/spdx.sh          list the files lacking the header
#   scripts/spdx.sh --check  the same, and exit 1 if there is any
#   scripts/spdx.sh --fix    add the header to each file that has no SPDX line
#
# Source files: *.go, *.sh, *.sql, the systemd units in deploy/, and any
# other file whose first line is a shell shebang (.ci/run). Exempt: anything
# under a testdata/ directory, and Go files marked generated
# ("// Code generated ... DO NOT EDIT."). Files are those git tracks plus the
# untracked ones it does not ignore, so a new file is caught before its
# commit. A file that already names another license on an SPDX line is never
# changed: it is listed as "other license" and does not fail --check.
# --fix writes the current year (SPDX_YEAR overrides it) and keeps each
# file's mode.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=list
case ${1:-} in
  "") ;;
  --check) mode=check ;;
  --fix) mode=fix ;;
  -h|--help) awk 'NR > 4 && /^set /{exit} NR > 4 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
  *) echo "usage: scripts/spdx.sh [--check|--fix]" >&2; exit 2 ;;
esac

license="SPDX-License-Identifier: Apache-2.0"
year=${SPDX_YEAR:-$(date +%Y)}
copyright="Copyright $year The d2c Authors"

# comment prints the line-comment prefix of a source file, or nothing for a
# file the convention does not cover.
comment() {
  local path=$1 base=${1##*/} first
  case /$path in
    */testdata/*) return 0 ;;
  esac
  case $base in
    *.go) echo "//" ;;
    *.sh) echo "#" ;;
    *.sql) echo "--" ;;
    *.service|*.path|*.timer|*.socket) [[ $path == deploy/* ]] && echo "#" ;;
    *.*) ;;
    *)
      IFS= read -r first < "$path" || true
      [[ $first =~ ^#!(/usr/bin/env\ |/bin/)(ba|z)?sh ]] && echo "#" ;;
  esac
  return 0
}

# addHeader writes the header at the top of the file, after its shebang,
# followed by a blank line so that it never joins a Go package comment.
addHeader() {
  local file=$1 c=$2 tmp
  tmp=$(mktemp)
  {
    if [[ $(head -c 2 "$file") == "#!" ]]; then
      head -n 1 "$file"
      printf '%s %s\n%s %s\n\n' "$c" "$license" "$c" "$copyright"
      tail -n +2 "$file"
    else
      printf '%s %s\n%s %s\n\n' "$c" "$license" "$c" "$copyright"
      cat "$file"
    fi
  } > "$tmp"
  cat "$tmp" > "$file" # in place, so that the file keeps its mode
  rm -f "$tmp"
}

lacking=0 other=0 fixed=0 byhand=0
while IFS= read -r -d '' file; do
  [[ -f $file && ! -L $file ]] || continue
  c=$(comment "$file")
  [[ -n $c ]] || continue
  if [[ $file == *.go ]] && grep -Eq '^// Code generated .* DO NOT EDIT\.$' "$file"; then
    continue
  fi
  # The header is looked for in the first six lines: shebang, SPDX line,
  # copyright line, with room for a build constraint or an editor line.
  top=$(head -n 6 "$file")
  spdx=$(grep -o 'SPDX-License-Identifier: .*' <<<"$top" | head -n 1 || true)
  if [[ -n $spdx && $top =~ Copyright\ [0-9]{4} ]]; then
    if [[ $spdx != "$license" ]]; then
      echo "other license: $file ($spdx)"
      other=$((other + 1))
    fi
    continue
  fi
  lacking=$((lacking + 1))
  if [[ $mode != fix ]]; then
    echo "$file"
  elif [[ -n $spdx ]]; then
    echo "fix by hand (an SPDX line without a copyright line): $file"
    byhand=$((byhand + 1))
  else
    addHeader "$file" "$c"
    echo "added: $file"
    fixed=$((fixed + 1))
  fi
done < <(git ls-files -z --cached --others --exclude-standard | sort -zu)

if [[ $mode == fix ]]; then
  echo "spdx.sh: added the header to $fixed files; $byhand to fix by hand" >&2
  ((byhand == 0)) || exit 1
  exit 0
fi
echo "spdx.sh: $lacking files lack the license header; $other under another license" >&2
if [[ $mode == check ]] && ((lacking > 0)); then
  exit 1
fi
exit 0
