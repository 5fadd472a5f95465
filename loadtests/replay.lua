-- wrk script for bench_replay.py: POST the JSON body in $SAVEPOINT_BENCH_BODY, like chat.lua,
-- plus three optional knobs:
--   $SAVEPOINT_BENCH_RUN              sent as `X-Savepoint-Run` (durable-run replays)
--   $SAVEPOINT_BENCH_IDEMPOTENCY_KEY  sent as `Idempotency-Key` (idempotent replays)
--   $SAVEPOINT_BENCH_UNIQUE           a marker in the body; each request replaces it with a
--                                     counter, so every body differs (cache misses). Meant
--                                     for `wrk -t1`.
local body = os.getenv("SAVEPOINT_BENCH_BODY")
if body == nil or body == "" then
   error("set SAVEPOINT_BENCH_BODY to the JSON request body")
end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

local run = os.getenv("SAVEPOINT_BENCH_RUN")
if run ~= nil and run ~= "" then
   wrk.headers["X-Savepoint-Run"] = run
end

local idempotency_key = os.getenv("SAVEPOINT_BENCH_IDEMPOTENCY_KEY")
if idempotency_key ~= nil and idempotency_key ~= "" then
   wrk.headers["Idempotency-Key"] = idempotency_key
end

local marker = os.getenv("SAVEPOINT_BENCH_UNIQUE")
if marker ~= nil and marker ~= "" then
   local at, stop = string.find(body, marker, 1, true)
   if at == nil then
      error("SAVEPOINT_BENCH_UNIQUE does not occur in SAVEPOINT_BENCH_BODY")
   end
   local head, tail = string.sub(body, 1, at - 1), string.sub(body, stop + 1)
   local counter = 0
   request = function()
      counter = counter + 1
      return wrk.format(nil, nil, nil, head .. counter .. tail)
   end
end
