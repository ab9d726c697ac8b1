#!/usr/bin/env bash
# Resolves the Apache Kafka broker and its tools from Maven Central into
# infra/kafka/.kafka/<version>/libs and prints that directory.
# Idempotent: a marker file records a complete download, so a second run does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1)"
if [[ -z "$version" ]]; then
  echo "fetch.sh: cannot read <kafka.version> from $pom" >&2
  exit 1
fi

libs="$here/.kafka/$version/libs"
marker="$here/.kafka/$version/.complete"
pom_sum="$(cksum <"$pom")"

complete() {
  [[ -f "$marker" && "$(cat "$marker")" == "$pom_sum" && -f "$libs/kafka_2.13-$version.jar" ]]
}

if complete; then
  echo "$libs"
  exit 0
fi

# Several starts at once (parallel test workers) download once; the others wait for it.
mkdir -p "$here/.kafka/$version"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$here/.kafka/$version/.lock"
  flock 9
  if complete; then
    echo "$libs"
    exit 0
  fi
fi

if ! command -v mvn >/dev/null 2>&1; then
  echo "fetch.sh: mvn not found on PATH (apt-get install -y maven)" >&2
  exit 1
fi

# Download into a scratch dir and move it into place, so an interrupted run never leaves a
# half-filled libs dir that looks complete.
tmp="$here/.kafka/$version/libs.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp" "$tmp.log"' EXIT
echo "fetch.sh: resolving Apache Kafka $version from Maven Central into $libs" >&2
# Maven 3.8 -q still prints stray colour codes: keep its output for failures only.
if ! mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
  -DoutputDirectory="$tmp" -DincludeScope=runtime >"$tmp.log" 2>&1; then
  cat "$tmp.log" >&2
  rm -f "$tmp.log"
  echo "fetch.sh: mvn dependency:copy-dependencies failed" >&2
  exit 1
fi
rm -f "$tmp.log"
rm -rf "$libs"
mv "$tmp" "$libs"
trap - EXIT
printf '%s' "$pom_sum" >"$marker"
echo "$libs"
