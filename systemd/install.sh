#!/usr/bin/env bash
# Install, upgrade, roll back or remove edgeloop as a systemd service.
#
#   sudo systemd/install.sh                  install or upgrade from this source tree, start
#   sudo systemd/install.sh --bundle F.tar.gz   ... from an offline bundle (`make bundle`):
#                                            no network, pip --no-index on its wheels
#   sudo systemd/install.sh --wheel F.whl    ... from a built wheel instead
#   sudo systemd/install.sh --rollback       back to the previous version (again: forward)
#   sudo systemd/install.sh --uninstall      remove the service and /opt/edgeloop;
#                                            keep /etc/edgeloop and the history
#   sudo systemd/install.sh --uninstall --purge   remove config, history, cache and user too
#
# Layout: one venv per version, /opt/edgeloop/versions/<version>, with the version's unit,
# template and JSON schema in its share/edgeloop; /opt/edgeloop/current and
# /opt/edgeloop/previous link to two of them (an upgrade keeps the previous version,
# older ones are removed); /opt/edgeloop/config -> current/share/edgeloop (where the
# config's `yaml-language-server: $schema=` modeline points); /usr/local/bin/edgeloop ->
# /opt/edgeloop/current/bin/edgeloop, the unit's ExecStart too.
# /etc/edgeloop/edgeloop.yaml (first install: the inert
# template config/edgeloop.template.yaml, which `check` refuses until edited, so the service
# is enabled but not started; never overwritten: a newer template lands beside it as
# edgeloop.yaml.dist),
# /etc/systemd/system/edgeloop.service, /var/lib/edgeloop (history, made by systemd's
# StateDirectory=), /var/cache/edgeloop (numba cache, CacheDirectory=; the kernel's
# ahead-of-time module, built for this CPU at install time), user `edgeloop`.
#
# Re-running is safe: it converges on the same tree and restarts the service only when the
# installed package or the unit changed, and only when `edgeloop check` passes on the
# config.  DESTDIR=/some/root (or --root) stages everything under that root without root
# privileges, users or systemctl (used by the tests); without a running systemd,
# systemctl is skipped too; --dry-run prints what would be done and changes nothing.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install.sh [options]
  --bundle FILE       install an offline bundle (dist/edgeloop-<version>-<arch>.tar.gz
                      from `make bundle`): its wheels only, no network
  --rollback          make the previous version current again (restarts a running service)
  --uninstall         remove the unit and the venvs (keeps config and history)
  --purge             with --uninstall: also remove config, history, cache and the user
  --wheel FILE        install this wheel instead of the source tree
  --wheelhouse DIR    offline: resolve dependencies only from wheels in DIR
  --no-deps           install the edgeloop package only (dependencies already present)
  --python PYTHON     interpreter for the venv (default: python3; needs >= 3.11)
  --no-start          enable the service but do not (re)start it
  --root DIR          stage into DIR (same as DESTDIR=DIR)
  --dry-run           print the actions, change nothing
  -h, --help          this text
environment: DESTDIR=/path stages into that root (no users, no systemctl)
EOF
}

ACTION=install
PURGE=0
BUNDLE=""
WHEEL=""
WHEELHOUSE=""
NO_DEPS=0
PYTHON=python3
START=1
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) ACTION=uninstall ;;
    --rollback) ACTION=rollback ;;
    --purge) PURGE=1 ;;
    --bundle) BUNDLE="${2:?--bundle needs a file}"; shift ;;
    --wheel) WHEEL="${2:?--wheel needs a file}"; shift ;;
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift ;;
    --no-deps) NO_DEPS=1 ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
    --no-start) START=0 ;;
    --root) DESTDIR="${2:?--root needs a directory}"; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ]; then
  echo "install.sh: --purge only goes with --uninstall" >&2
  exit 2
fi
if [ -n "$BUNDLE" ] && [ -n "$WHEEL$WHEELHOUSE" ]; then
  echo "install.sh: --bundle carries its own wheels (no --wheel/--wheelhouse)" >&2
  exit 2
fi

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
NAME=edgeloop
SVC_USER=edgeloop
OPT="$DESTDIR/opt/$NAME"
VERSIONS="$OPT/versions"
CURRENT="$OPT/current"
PREVIOUS="$OPT/previous"
ETC="$DESTDIR/etc/$NAME"
UNIT_DIR="$DESTDIR/etc/systemd/system"
BIN_DIR="$DESTDIR/usr/local/bin"
UNIT="$UNIT_DIR/$NAME.service"
STATE="$DESTDIR/var/lib/$NAME"
CACHE="$DESTDIR/var/cache/$NAME"
DOC_DIR="$OPT/share/doc"
VERSION=""
VENV=""

say() { printf '%s\n' "install.sh: $*"; }
die() { printf '%s\n' "install.sh: $*" >&2; exit 1; }

# Every change goes through run(), so --dry-run shows exactly what would happen.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

# systemctl and account changes only on a real root filesystem.
live() { [ -z "$DESTDIR" ]; }

# ... and systemctl only where systemd is the running init (not in a container or chroot).
have_systemd() {
  live && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

systemctl_() {
  if have_systemd; then
    run systemctl "$@"
  elif live; then
    say "skipped (systemd not running): systemctl $*"
  else
    say "skipped (DESTDIR set): systemctl $*"
  fi
}

need_root() {
  if live && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or set DESTDIR / --root to stage into a directory)"
  fi
}

# Replace a symlink atomically (a rename), so `current` never dangles mid-switch.
relink() {
  local link="$1" target="$2"
  run ln -sfn "$target" "$link.new"
  run mv -Tf "$link.new" "$link"
}

version_of() { # the version a link (current, previous) points at, or nothing
  if [ -L "$1" ]; then basename "$(readlink "$1")"; fi
}

fingerprint() {
  # What decides whether a running service must restart: the unit, the current version and
  # its installed package.
  {
    if [ -f "$UNIT" ]; then cat "$UNIT"; fi
    version_of "$CURRENT"
    if [ -d "$CURRENT/lib" ]; then
      find "$CURRENT/lib/" -path "*/$NAME-*.dist-info/RECORD" -exec cat {} + 2>/dev/null || true
    fi
  } | sha256sum | cut -d' ' -f1
}

check_python() {
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found (use --python)" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: $PYTHON is older than 3.11" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "install.sh: $PYTHON lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
}

# A bundle directory (unpacked from --bundle, or the one this script was run from):
# its wheels, unit, template and schema replace the source tree's.
use_bundle_dir() {
  local dir="$1" arch python tag
  VERSION="$(sed -n 's/^version=//p' "$dir/BUNDLE")"
  arch="$(sed -n 's/^arch=//p' "$dir/BUNDLE")"
  python="$(sed -n 's/^python=//p' "$dir/BUNDLE")"
  if [ -z "$VERSION" ] || [ -z "$arch" ]; then die "$dir/BUNDLE: no version= or arch= line"; fi
  if [ "$arch" != "$(uname -m)" ]; then
    die "this bundle is for $arch, this machine is $(uname -m)"
  fi
  tag="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  if [ "$tag" != "$python" ]; then
    die "this bundle's wheels are for $python, $PYTHON is $tag (use --python)"
  fi
  # Every wheel as built (BUNDLE lists them with their sha256), and nothing else.
  local sums n
  sums="$(sed -n 's/^wheel=\([^ ]*\) sha256=\([0-9a-f]*\)$/\2  \1/p' "$dir/BUNDLE")"
  n="$(find "$dir/wheels" -maxdepth 1 -name '*.whl' | wc -l)"
  if [ -z "$sums" ] || [ "$(printf '%s\n' "$sums" | wc -l)" != "$n" ] \
    || ! (cd "$dir/wheels" && printf '%s\n' "$sums" | sha256sum -c --quiet --strict >&2); then
    die "$(basename "$dir"): the wheels do not match the list in its BUNDLE file: damaged or altered"
  fi
  SRC="$dir"
  WHEELHOUSE="$dir/wheels"
  WHEEL="$(find "$WHEELHOUSE" -maxdepth 1 -name "$NAME-$VERSION-*.whl" | head -n 1)"
  [ -n "$WHEEL" ] || die "the bundle has no $NAME-$VERSION wheel"
}

unpack_bundle() {
  [ -f "$BUNDLE" ] || die "no such bundle: $BUNDLE"
  BUNDLE_TMP="$(mktemp -d "${TMPDIR:-/tmp}/edgeloop-bundle.XXXXXX")"
  trap 'rm -rf "$BUNDLE_TMP"' EXIT
  tar -xzf "$BUNDLE" -C "$BUNDLE_TMP" || die "cannot unpack $BUNDLE"
  local dirs=("$BUNDLE_TMP"/"$NAME"-*)
  if [ ${#dirs[@]} != 1 ] || [ ! -f "${dirs[0]}/BUNDLE" ]; then
    die "$BUNDLE is not an edgeloop bundle (no $NAME-<version>-<arch>/BUNDLE)"
  fi
  use_bundle_dir "${dirs[0]}"
  say "bundle $(basename "$BUNDLE"): edgeloop $VERSION, $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels"
}

# Which version is being installed: the bundle's, the wheel's name, or pyproject.toml's.
resolve_source() {
  if [ -n "$BUNDLE" ]; then
    unpack_bundle
  elif [ -z "$WHEEL" ] && [ -f "$SRC/BUNDLE" ]; then
    use_bundle_dir "$SRC"  # run from an unpacked bundle
  elif [ -n "$WHEEL" ]; then
    [ -f "$WHEEL" ] || die "no such wheel: $WHEEL"
    VERSION="$(basename "$WHEEL" | cut -d- -f2)"
  else
    VERSION="$("$PYTHON" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SRC/pyproject.toml")"
  fi
  case "$VERSION" in
    "" | *[!0-9A-Za-z.+_!-]*) die "bad version '$VERSION'" ;;
  esac
  VENV="$VERSIONS/$VERSION"
}

ensure_user() {
  if ! live; then
    say "skipped (DESTDIR set): system user $SVC_USER"
    return
  fi
  if id -u "$SVC_USER" >/dev/null 2>&1; then
    return
  fi
  run useradd --system --user-group --no-create-home --home-dir "/var/lib/$NAME" \
    --shell /usr/sbin/nologin --comment "edgeloop gateway agent" "$SVC_USER"
}

install_venv() {
  if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    say "existing venv at $VENV is broken (Python upgraded?); recreating it"
    run rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ] || [ "$DRY_RUN" = 1 ]; then
    run install -d -m 0755 "$VERSIONS"
    run "$PYTHON" -m venv "$VENV"
  fi
  local target="$SRC"
  [ -n "$WHEEL" ] && target="$WHEEL"
  local pip=("$VENV/bin/python" -m pip --no-input --disable-pip-version-check -q)
  local idx=()
  if [ -n "$WHEELHOUSE" ]; then
    # Offline: only the wheelhouse, whatever pip.conf or PIP_* say (an index, find-links).
    local v unset=(env)
    while IFS= read -r v; do unset+=(-u "$v"); done < <(compgen -e | grep '^PIP_' || true)
    pip=("${unset[@]}" PIP_CONFIG_FILE=/dev/null "${pip[@]}")
    idx=(--no-index --find-links "$WHEELHOUSE")
  fi
  if [ "$NO_DEPS" = 0 ]; then
    # Dependencies as pinned by pyproject.toml, upgraded only where the pins demand it.
    run "${pip[@]}" install "${idx[@]}" --upgrade --upgrade-strategy only-if-needed "$target"
  fi
  # The package itself always, so a rebuilt tree with an unchanged version still lands.
  run "${pip[@]}" install "${idx[@]}" --no-deps --force-reinstall "$target"
  # The version's own unit, template and schema: --rollback restores its unit, and
  # /opt/edgeloop/config follows `current` to its schema.
  run install -d -m 0755 "$VENV/share/$NAME"
  run install -m 0644 "$SRC/systemd/$NAME.service" "$SRC/config/$NAME.template.yaml" \
    "$SRC/config/$NAME.schema.json" "$VENV/share/$NAME/"
}

# Make VERSION current; the version it replaces becomes `previous`; older ones go.
switch_version() {
  local cur d v
  cur="$(version_of "$CURRENT")"
  if [ "$cur" != "$VERSION" ]; then
    if [ -n "$cur" ] && [ -d "$VERSIONS/$cur" ]; then
      relink "$PREVIOUS" "versions/$cur"
    fi
    relink "$CURRENT" "versions/$VERSION"
    if [ -n "$cur" ]; then say "upgraded: $cur -> $VERSION (--rollback returns to $cur)"; fi
  fi
  relink "$OPT/config" "current/share/$NAME"
  for d in "$VERSIONS"/*/; do
    [ -d "$d" ] || continue
    v="$(basename "$d")"
    if [ "$v" != "$VERSION" ] && [ "$v" != "$(version_of "$PREVIOUS")" ]; then
      run rm -rf "$VERSIONS/$v"
      say "removed version $v (only the current and the previous version are kept)"
    fi
  done
}

# The venv of an install before versioned venvs: removed once the new version has passed
# `check` (until then a service started from it may still be running on it).
remove_unversioned_venv() {
  if [ -d "$OPT/venv" ] && [ ! -L "$OPT/venv" ]; then
    run rm -rf "$OPT/venv"
    say "removed $OPT/venv of an older, unversioned install"
  fi
}

install_files() {
  run install -d -m 0755 "$UNIT_DIR" "$DOC_DIR"
  run install -m 0644 "$SRC/systemd/$NAME.service" "$UNIT"
  if [ -f "$SRC/docs/operations.md" ]; then
    run install -m 0644 "$SRC/docs/operations.md" "$DOC_DIR/operations.md"
  fi
  # Config: root-owned, readable by the service group only (token files may sit beside it).
  run install -d -m 0750 "$ETC"
  # The inert template (device disabled, no loops, refused by `check` until edited), never
  # the simulator's demo config with a loop in auto.
  local cfg="$ETC/$NAME.yaml" tmpl="$SRC/config/$NAME.template.yaml"
  if [ -e "$cfg" ] && cmp -s "$tmpl" "$cfg"; then
    [ -e "$cfg.dist" ] && run rm -f "$cfg.dist"
  elif [ -e "$cfg" ]; then
    run install -m 0640 "$tmpl" "$cfg.dist"
    say "kept $cfg; the shipped template is in $cfg.dist"
  else
    run install -m 0640 "$tmpl" "$cfg"
  fi
  # `edgeloop` on the PATH (the current version's console script; absolute, as on the box)
  run install -d -m 0755 "$BIN_DIR"
  run ln -sfn "/opt/$NAME/current/bin/$NAME" "$BIN_DIR/$NAME"
  if live; then
    run chown root:"$SVC_USER" "$ETC" "$cfg"
    [ -e "$cfg.dist" ] && run chown root:"$SVC_USER" "$cfg.dist"
  fi
  return 0
}

# The kernel's ahead-of-time module (agent/kernel/aot.py): specific to this CPU, so it is
# never in a bundle, but built here, where the service looks for it (the unit's
# NUMBA_CACHE_DIR=%C/edgeloop/numba, so aot.out_dir() is .../numba/edgeloop-aot), as the
# service user.  Then the service's first start neither builds it (25 s to minutes) nor
# runs on numba's JIT (~100 MB more memory).  Never fatal: without a toolchain the service
# runs on the JIT, and a failure is remembered there, so the service does not retry it.
build_kernel_aot() {
  local dir="$CACHE/numba/edgeloop-aot" cmd=() out rc=0 last
  if live; then cmd=(runuser -u "$SVC_USER" --); fi
  cmd+=(env NUMBA_CACHE_DIR="$CACHE/numba" "$VENV/bin/python" -m agent.kernel.aot --out "$dir")
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ %s\n' "${cmd[*]}"
    return 0
  fi
  if ! "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("numba"))' \
    2>/dev/null; then
    say "kernel AOT module: not built (no numba in $VENV: --no-deps?)"
    return 0
  fi
  if live; then  # as systemd's CacheDirectory= makes it
    run install -d -m 0700 -o "$SVC_USER" -g "$SVC_USER" "$CACHE" "$CACHE/numba"
  else
    run install -d -m 0700 "$CACHE" "$CACHE/numba"
  fi
  printf '%s' "install.sh: kernel AOT module for this CPU (~25 s on a PC, longer on a Pi): "
  out="$(cd / && umask 0077 && timeout 900 "${cmd[@]}" 2>&1)" || rc=$?
  last="$(printf '%s\n' "$out" | tail -n 1)"
  if [ "$rc" = 0 ]; then
    printf '%s\n' "$last"
  else
    [ "$rc" = 124 ] && last="timed out after 900 s"
    printf '%s\n' "not built (${last#kernel AOT build failed: }); the service runs the kernel on numba's JIT"
  fi
  return 0
}

check_config() {
  # With --no-deps (tests, a venv without the dependencies) `check` cannot run.
  if [ "$NO_DEPS" = 1 ] || [ "$DRY_RUN" = 1 ]; then
    return 0
  fi
  if grep -q '^template: true' "$ETC/$NAME.yaml"; then
    return 1  # the unedited template: `check` refuses it, by design
  fi
  if ! "$VENV/bin/edgeloop" check "$ETC/$NAME.yaml"; then
    say "the configuration has errors (above); fix $ETC/$NAME.yaml, then: systemctl restart $NAME"
    return 1
  fi
}

do_install() {
  check_python
  need_root
  resolve_source
  local before after
  before="$(fingerprint)"
  ensure_user
  install_venv
  switch_version
  install_files
  build_kernel_aot
  after="$(fingerprint)"
  systemctl_ daemon-reload
  systemctl_ enable "$NAME.service"
  if ! check_config; then
    if grep -q '^template: true' "$ETC/$NAME.yaml"; then
      remove_unversioned_venv  # nothing can be running on the template
      say "installed $VERSION and enabled; not started until $ETC/$NAME.yaml is edited and passes check"
      exit 0
    fi
    if have_systemd && systemctl is-active -q "$NAME.service"; then
      say "installed $VERSION, but the running service was not restarted (it runs the previous"
      say "version until restarted; or: install.sh --rollback)"
    else
      say "installed $VERSION, but not started"
    fi
    exit 1
  fi
  remove_unversioned_venv
  if [ "$START" = 0 ]; then
    say "installed $VERSION and enabled; not started (--no-start)"
  elif have_systemd && systemctl is-active -q "$NAME.service"; then
    if [ "$before" != "$after" ]; then
      systemctl_ restart "$NAME.service"
      say "upgraded to $VERSION and restarted"
    else
      say "$VERSION already installed and running; nothing changed"
    fi
  else
    systemctl_ start "$NAME.service"
  fi
  say "done. Logs: journalctl -u $NAME -f   Metrics: curl -s http://127.0.0.1:9105/metrics"
  say "PLCs off this host need: systemctl edit $NAME  ->  [Service] IPAddressAllow=<subnet>"
}

do_rollback() {
  need_root
  local cur prev
  cur="$(version_of "$CURRENT")"
  prev="$(version_of "$PREVIOUS")"
  if [ -z "$prev" ] || [ ! -x "$VERSIONS/$prev/bin/$NAME" ]; then
    die "no previous version to roll back to (current: ${cur:-none})"
  fi
  relink "$CURRENT" "versions/$prev"
  if [ -n "$cur" ] && [ -d "$VERSIONS/$cur" ]; then
    relink "$PREVIOUS" "versions/$cur"
  fi
  # The unit that version shipped with.
  local unit="$VERSIONS/$prev/share/$NAME/$NAME.service"
  if [ -f "$unit" ] && ! cmp -s "$unit" "$UNIT"; then
    run install -m 0644 "$unit" "$UNIT"
    systemctl_ daemon-reload
  fi
  say "rolled back: current is $prev (was ${cur:-none}; --rollback again returns to it)"
  VENV="$VERSIONS/$prev"
  if ! check_config; then
    if grep -q '^template: true' "$ETC/$NAME.yaml"; then
      say "the config is still the unedited template; not started"
      return 0
    fi
    say "not restarted: $prev refuses the config (above); a running service goes on with ${cur:-its code}"
    exit 1
  fi
  if have_systemd && systemctl is-active -q "$NAME.service"; then
    systemctl_ restart "$NAME.service"
    say "restarted $NAME on $prev"
  else
    say "the service was not running; not started"
  fi
}

do_uninstall() {
  need_root
  if have_systemd && systemctl cat "$NAME.service" >/dev/null 2>&1; then
    systemctl_ disable --now "$NAME.service"
  fi
  [ -e "$UNIT" ] && run rm -f "$UNIT"
  [ -d "$UNIT_DIR/$NAME.service.d" ] && say "left local drop-ins in $UNIT_DIR/$NAME.service.d"
  systemctl_ daemon-reload
  [ -e "$OPT" ] && run rm -rf "$OPT"
  [ -L "$BIN_DIR/$NAME" ] && run rm -f "$BIN_DIR/$NAME"
  [ -e "$CACHE" ] && run rm -rf "$CACHE"
  if [ "$PURGE" = 1 ]; then
    [ -d "$UNIT_DIR/$NAME.service.d" ] && run rm -rf "$UNIT_DIR/$NAME.service.d"
    [ -e "$ETC" ] && run rm -rf "$ETC"
    [ -e "$STATE" ] && run rm -rf "$STATE"
    if live && id -u "$SVC_USER" >/dev/null 2>&1; then
      run userdel "$SVC_USER"
    fi
    say "purged: config, history, cache and user removed"
  else
    say "removed the service and $OPT; kept $ETC and $STATE (--purge removes them)"
  fi
}

case "$ACTION" in
  install) do_install ;;
  rollback) do_rollback ;;
  *) do_uninstall ;;
esac
