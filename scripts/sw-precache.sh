#!/usr/bin/env bash
# Trunk post_build hook (Trunk.toml): writes this build's file list and version into the service worker
# (www/sw.js, copied into the staging directory), so that every build installs a worker of its own that caches
# exactly its files. The version is a hash of the files' contents; index.html is cached as "./".
set -euo pipefail
cd "${TRUNK_STAGING_DIR:?run by trunk as a post_build hook}"
mapfile -t files < <(find . -type f ! -name sw.js ! -name index.html | sed 's|^\./||' | LC_ALL=C sort)
build="$(cat index.html "${files[@]}" | sha256sum | cut -c1-16)"
list="$(printf '"%s", ' "${files[@]}")"
sed -i -e "s|__SOUNDLINE_BUILD__|$build|" -e "s|\"__SOUNDLINE_FILES__\"|${list%, }|" sw.js
