#!/usr/bin/env bash
# Renders www/icon.svg to the PNG icons the web app manifest names (run by hand after changing the drawing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
page="$(mktemp --suffix=.html)"
trap 'rm -f "$page"' EXIT
for size in 192 512; do
  printf '<style>body{margin:0}</style><img src="file://%s/www/icon.svg" width="%s" height="%s">' "$PWD" "$size" "$size" >"$page"
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --allow-file-access-from-files \
    --default-background-color=00000000 --window-size="$size,$size" --screenshot="www/icon-$size.png" \
    "file://$page" 2>/dev/null
done
