#!/usr/bin/env bash
# N concurrent streaming chat requests with curl alone, against any OpenAI-compatible server; prints
# the aggregate generated tokens per second computed from the `usage` the server reports. A check on
# `bodega bench` that shares no code with it.
#
#   scripts/curl-bench.sh URL N [MAX_TOKENS]      e.g. scripts/curl-bench.sh http://127.0.0.1:8080 8
#
# Sends `ignore_eos` so that every request generates MAX_TOKENS (default 64) tokens; set API_KEY for
# servers that need one. Exits 1 when a request fails or reports no usage.
set -euo pipefail
url=${1:?usage: curl-bench.sh URL N [MAX_TOKENS]}
n=${2:?usage: curl-bench.sh URL N [MAX_TOKENS]}
max_tokens=${3:-64}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
auth=()
[ -n "${API_KEY:-}" ] && auth=(-H "Authorization: Bearer $API_KEY")
start=$(date +%s.%N)
for i in $(seq "$n"); do
  body="{\"messages\":[{\"role\":\"user\",\"content\":\"Tell story number $i about a lighthouse.\"}],\"max_tokens\":$max_tokens,\"temperature\":0,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
  curl -sS -N --fail-with-body "${auth[@]}" -H 'Content-Type: application/json' -d "$body" \
    "$url/v1/chat/completions" > "$dir/$i.sse" &
done
failed=0
for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
end=$(date +%s.%N)
tokens=0
for i in $(seq "$n"); do
  usage=$(grep -o '"completion_tokens":[0-9]*' "$dir/$i.sse" | tail -n 1 | cut -d: -f2 || true)
  if [ -z "$usage" ]; then echo "error: request $i reported no usage: $(head -c 300 "$dir/$i.sse")" >&2; failed=$((failed + 1)); continue; fi
  [ "$usage" -lt "$max_tokens" ] && echo "warning: request $i stopped early ($usage of $max_tokens tokens)" >&2
  tokens=$((tokens + usage))
done
awk -v t="$tokens" -v s="$start" -v e="$end" -v n="$n" \
  'BEGIN { printf "%d requests, %d generated tokens in %.2f s: %.1f tok/s aggregate\n", n, t, e - s, t / (e - s) }'
[ "$failed" -eq 0 ] || { echo "error: $failed of $n requests failed" >&2; exit 1; }
