#!/usr/bin/env bash
# Builds Octet (Release, in build/), converts a model to .qbin and generates text with it.
#
#   scripts/run.sh                   SmolLM2-135M-Instruct from the Hugging Face hub when it is
#                                    reachable, else ../shared/models/stories260K
#   scripts/run.sh owner/name        a Hugging Face repo id (downloaded into the cache)
#   scripts/run.sh path/to/folder    a Hugging Face model folder (config.json, safetensors, tokenizer)
#   scripts/run.sh model.bin         a llama2.c checkpoint (its tokenizer .model beside it)
#   scripts/run.sh model.qbin        an already converted model
#
# Environment: PROMPT (the prompt), QUANT (f32 f16 q8_0 q4_0 q4_1; default q8_0), MAX_TOKENS,
# OCTET_CACHE (downloads and converted models; default ~/.cache/octet), HF_ENDPOINT, HF_TOKEN.
# Installs nothing: see README.md (or scripts/deps.sh) for the packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_REPO=HuggingFaceTB/SmolLM2-135M-Instruct
STORIES=../shared/models/stories260K/stories260K.bin
QUANT=${QUANT:-q8_0}
MAX_TOKENS=${MAX_TOKENS:-128}
CACHE=${OCTET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/octet}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Is the hub reachable? A short check: a HEAD request with curl when installed, else a TCP connect.
hub_reachable() {
  local endpoint=${HF_ENDPOINT:-https://huggingface.co}
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --head --max-time 5 "$endpoint/$DEFAULT_REPO/resolve/main/config.json" 2>/dev/null
    return
  fi
  local rest=${endpoint#*://} host port
  host=${rest%%/*}
  case $endpoint in https://*) port=443 ;; *) port=80 ;; esac
  if [[ $host == *:* ]]; then port=${host##*:}; host=${host%:*}; fi
  timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# 1. Build.
say "==> Building Octet (Release, build/)"
log=build/run-build.log
mkdir -p build
if ! { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release --log-level=WARNING -Wno-dev &&
       cmake --build build -j "$(nproc)" --target octet-convert generate; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "the build failed (full log: $log)"
fi

# 2. Choose the model.
model=${1:-}
if [ -z "$model" ]; then
  if hub_reachable; then
    model=$DEFAULT_REPO
  elif [ -f "$STORIES" ]; then
    say "    (the Hugging Face hub is not reachable: using stories260K from ../shared)"
    model=$STORIES
  else
    die "the Hugging Face hub is not reachable and $STORIES is missing; pass a model folder or file"
  fi
fi

# 3. Convert (once: the .qbin is kept in the cache until the converter is rebuilt).
chat=0
case $model in
  *.qbin)
    [ -f "$model" ] || die "no such file: $model"
    qbin=$model ;;
  *)
    if [ -e "$model" ]; then
      src_dir=$model; [ -d "$model" ] || src_dir=$(dirname "$model")
      name=$(basename "$(cd "$src_dir" && pwd)")
      [ -d "$model" ] || name=$(basename "$model" .bin)
    elif [[ $model =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ && $model != *..* ]]; then
      src_dir=""  # the converter downloads it (into $CACHE/hub/owner--name/main)
      name=${model/\//--}
    else
      die "'$model' is neither a file, a folder nor a Hugging Face repo id (owner/name)"
    fi
    mkdir -p "$CACHE/qbin"
    qbin=$CACHE/qbin/$name-$QUANT.qbin
    if [ ! -f "$qbin" ] || [ build/bin/octet-convert -nt "$qbin" ]; then
      say "==> Converting $model -> $qbin ($QUANT)"
      OCTET_CACHE=$CACHE build/bin/octet-convert "$model" -o "$qbin" --quant "$QUANT" ||
        die "conversion of $model failed"
    fi
    [ -n "$src_dir" ] || src_dir=$CACHE/hub/$name/main
    if [ -d "$src_dir" ] && grep -qs '"chat_template"' "$src_dir/tokenizer_config.json"; then chat=1; fi ;;
esac

# 4. Generate.
if [ "$chat" = 1 ]; then
  prompt=${PROMPT:-What are three good habits for a healthy life?}
  say "==> Chat with $(basename "$qbin")"
  say "user> $prompt"
  printf '%s\n' "$prompt" | build/bin/generate --model "$qbin" --chat -n "$MAX_TOKENS"
else
  prompt=${PROMPT:-Once upon a time}
  say "==> Generating with $(basename "$qbin")"
  printf '%s' "$prompt"
  build/bin/generate --model "$qbin" --prompt "$prompt" -n "$MAX_TOKENS"
fi
