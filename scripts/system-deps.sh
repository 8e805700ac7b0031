#!/usr/bin/env bash
# Installs the Debian packages the full test suite and demo use, when running as root and they
# are missing: Fashion-MNIST's IDX files, PostgreSQL for the shared-study sweep test (the test starts
# its own server) and Chromium for the browser test. Without root it says
# what is missing and carries on (the tests that need them skip with that reason).
set -u
want=()
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
# the CNN's float32 C kernels (cnn/kernels.c) are built on first use; without a compiler they are not offered
command -v cc >/dev/null || want+=(gcc)
# --browser: also what only the test suite needs
if [ "${1:-}" = "--browser" ] && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then want+=(postgresql); fi
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then want+=(chromium); fi
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: not root or no apt-get; missing Debian packages: ${want[*]} (sudo apt-get install ${want[*]})" >&2
    exit 0
fi
echo "installing Debian packages: ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${want[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${want[@]}" >/dev/null; } || echo "note: could not install ${want[*]}" >&2
exit 0
