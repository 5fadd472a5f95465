-- wrk script: POST the JSON body in $SAVEPOINT_BENCH_BODY (bench_foundation.py sets it)
-- as a chat completion request. wrk counts non-2xx answers itself ("Non-2xx or 3xx").
local body = os.getenv("SAVEPOINT_BENCH_BODY")
if body == nil or body == "" then
   error("set SAVEPOINT_BENCH_BODY to the JSON request body")
end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
