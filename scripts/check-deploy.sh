#!/usr/bin/env bash
# Checks the deployment files without a Docker engine or a cluster (neither runs on these machines):
#   - hadolint on the Dockerfile;
#   - the Kubernetes manifests against the Kubernetes 1.37 schemas (kubernetes-validate --strict, offline);
#   - every file kustomization.yaml names exists;
#   - docker-compose.yml against the Compose specification (check-jsonschema's bundled schema, offline);
#   - the relay.json in the ConfigMap, with the Secret's variables, loads in the real relay (check-config).
# Tools come from PyPI into $SOUNDLINE_CACHE/pytools (scripts/setup.sh lint).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
tools="$SOUNDLINE_CACHE/pytools/bin"
relay="${SOUNDLINE_RELAY_BIN:-target/debug/soundline-relay}"

"$tools/hadolint" Dockerfile || die "hadolint found problems in the Dockerfile"
manifests=()
for f in $(sed -n 's/^  - \(.*\.yaml\)$/\1/p' deploy/k8s/kustomization.yaml); do
  [[ -f "deploy/k8s/$f" ]] || die "deploy/k8s/kustomization.yaml names $f, which does not exist"
  manifests+=("deploy/k8s/$f")
done
"$tools/kubernetes-validate" --strict --quiet "${manifests[@]}" || die "a Kubernetes manifest does not validate"
"$tools/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml || die "docker-compose.yml does not validate"

config="$(mktemp)"
trap 'rm -f "$config"' EXIT
# The ConfigMap's relay.json (indented block) and the Secret's stringData, as the Deployment would pass them.
sed -n '/relay.json: |/,$p' deploy/k8s/configmap.yaml | tail -n +2 | sed 's/^    //' >"$config"
user="$(sed -n 's/^  SOUNDLINE_KAFKA_USERNAME: //p' deploy/k8s/secret.yaml)"
password="$(sed -n 's/^  SOUNDLINE_KAFKA_PASSWORD: //p' deploy/k8s/secret.yaml)"
env -i PATH="$PATH" SOUNDLINE_KAFKA_USERNAME="$user" SOUNDLINE_KAFKA_PASSWORD="$password" \
  "$relay" check-config --config "$config" || die "the ConfigMap's relay.json does not load in the relay"
say "deployment files check out (Dockerfile, Kubernetes manifests, compose file, relay config)"
