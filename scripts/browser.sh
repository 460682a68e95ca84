#!/usr/bin/env bash
# The headless browser of the web UI test (tests/web_ui.rs): Debian's chromium from
# apt, and playwright-core from npm (a DevTools-protocol client; it drives
# /usr/bin/chromium and never downloads a browser of its own), installed once into
# ~/.cache/millrace/playwright/. Skipped when already present.
#
#   scripts/browser.sh install    install both if absent (apt-get needs root)
#   scripts/browser.sh check      exit 0 when both are installed
#
# A failed install is not fatal to scripts/test.sh: the UI test then prints a
# SKIPPED line saying what is missing.
set -euo pipefail
PLAYWRIGHT_VERSION=1.65.1
cache="${MILLRACE_CACHE:-$HOME/.cache/millrace}/playwright"

have_chromium() { command -v chromium >/dev/null 2>&1; }
have_playwright() { [ -f "$cache/node_modules/playwright-core/package.json" ]; }

case "${1:-}" in
  install)
    if ! have_chromium; then
      echo "browser.sh: installing Debian's chromium (apt-get)"
      if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
      $sudo apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
        || echo "browser.sh: could not install chromium; the web UI test will be SKIPPED" >&2
    fi
    if ! have_playwright; then
      if command -v npm >/dev/null 2>&1; then
        echo "browser.sh: installing playwright-core@$PLAYWRIGHT_VERSION into $cache"
        mkdir -p "$cache"
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
          --prefix "$cache" "playwright-core@$PLAYWRIGHT_VERSION" \
          || echo "browser.sh: could not install playwright-core; the web UI test will be SKIPPED" >&2
      else
        echo "browser.sh: npm is missing; the web UI test will be SKIPPED" >&2
      fi
    fi
    ;;
  check)
    have_chromium && have_playwright
    ;;
  *)
    echo "usage: scripts/browser.sh install|check" >&2
    exit 2
    ;;
esac
