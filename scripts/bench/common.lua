-- Shared by the wrk scripts in this directory (loaded with dofile, so each
-- wrk thread's Lua state and the main state get their own copy).

-- Every request is an Anthropic Messages call with the same credentials:
-- relaycache and nginx both key on x-api-key, so it must stay fixed.
wrk.method = "POST"
wrk.path = "/v1/messages"
wrk.headers["x-api-key"] = "bench-key"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["content-type"] = "application/json"
-- BENCH_ACCEPT_ENCODING (say "zstd") makes the client accept a compressed
-- answer, as the official SDKs do when they can decode it.
local accept_encoding = os.getenv("BENCH_ACCEPT_ENCODING")
if accept_encoding and accept_encoding ~= "" then
   wrk.headers["accept-encoding"] = accept_encoding
end

-- The whole file at `path`; fails the run loudly if it cannot be read.
function read_file(path)
   local file = assert(io.open(path, "rb"), "cannot open request body file " .. tostring(path))
   local text = file:read("*a")
   file:close()
   return text
end

-- One machine-readable line that scripts/bench.sh parses (key=value pairs).
-- Latencies are in microseconds in wrk, reported here in milliseconds.
-- wrk's `status` error counter is what it prints as "Non-2xx or 3xx
-- responses": answers with a status of 400 or more.
function done(summary, latency, requests)
   local e = summary.errors
   local seconds = summary.duration / 1e6
   local socket_errors = e.connect + e.read + e.write + e.timeout
   io.write(string.format(
      "BENCH requests=%d seconds=%.3f rps=%.1f p50_ms=%.3f p99_ms=%.3f non2xx=%d socket_errors=%d" ..
      " connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000,
      e.status, socket_errors, e.connect, e.read, e.write, e.timeout))
end
