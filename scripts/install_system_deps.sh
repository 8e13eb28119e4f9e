#!/usr/bin/env bash
# What the unit suite needs from Debian: chromium for the web page test (driven by playwright through
# executable_path; playwright's own browser download is not used) and a C++ compiler for
# torch.compile's CPU kernels (`unclip train --compile`). Nothing to do when they are there.
set -euo pipefail
want=()
[ -x /usr/bin/chromium ] || want+=(chromium)
command -v g++ >/dev/null || want+=(g++)
[ ${#want[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
/usr/bin/chromium --version
