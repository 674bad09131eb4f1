-- Every request carries the same body, so after the first one a cache
-- answers all of them: the hit path.
-- Usage: wrk ... -s fixed.lua URL -- BODY_FILE
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

-- wrk calls init(args) in each thread before it formats the request once;
-- no request() function means wrk reuses that one request, keeping the
-- client's per-request cost as low as it gets.
function init(args)
   wrk.body = read_file(args[1])
end
