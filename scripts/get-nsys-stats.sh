#!/usr/bin/env bash
# Unpacks NVIDIA Nsight Systems 2022.4 (Debian non-free package nsight-systems-target, ~34 MB)
# into a cache folder and prints the path of its `nsys`. Needs no GPU: its `nsys stats` runs
# NVIDIA's own reports (nvtxgpuproj, nvtxkernsum, gpukernsum, ...) on SQLite exports from
# nsys 2022.4 up to 2026.x. Use it as an oracle in tests; nothing is installed system-wide.
#   NSYS=$(scripts/get-nsys-stats.sh) && $NSYS stats -r nvtxgpuproj -f csv -o out trace.sqlite
set -euo pipefail
dest=${NSYS_STATS_HOME:-$HOME/.cache/nsys-stats-2022.4}
bin=$dest/usr/lib/x86_64-linux-gnu/nsight-systems/target-linux-x64/nsys
if [ ! -x "$bin" ]; then
  work=$(mktemp -d)
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  # a private sources list with Debian's non-free component; the system's apt setup is not touched
  . /etc/os-release
  echo "deb http://deb.debian.org/debian ${VERSION_CODENAME:-bookworm} main non-free" > "$work/sources.list"
  o=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives" -o APT::Sandbox::User=root)
  apt-get "${o[@]}" update >/dev/null
  (cd "$work" && apt-get "${o[@]}" download nsight-systems-target >/dev/null)
  mkdir -p "$dest"
  dpkg -x "$work"/nsight-systems-target_*.deb "$dest"
  rm -rf "$work"
fi
echo "$bin"
