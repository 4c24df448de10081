# Sourced by the e2e tests: e2e_workdir NAME prints a new work folder the guest can see over 9p.
# The guest mounts the host root at /host but its own /tmp hides the host's, so a checkout under /tmp
# (as a CI clone may be) keeps its e2e files under /var/tmp instead.
e2e_workdir() {
    local base="${E2E_BASE:-$REPO/.cache}"
    case "$base/" in /tmp/*) base=/var/tmp/vdevd-e2e ;; esac
    mkdir -p "$base"
    mktemp -d "$base/e2e-$1-XXXXXX"
}
