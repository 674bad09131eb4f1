-- Every request carries a different body, so a cache never answers one:
-- the miss path. The body is the template with its @TAG@ replaced by
-- RUN-tTHREAD-COUNTER; RUN (from the command line) keeps runs against the
-- same proxy apart, THREAD keeps wrk's threads apart (each has its own Lua
-- state and so its own counter). Another run with the same RUN sends the
-- same bodies again, thread N those of thread N, which is how
-- scripts/bench.sh replays the answers it stored in relaycache's reserve.
-- Usage: wrk ... -s unique.lua URL -- TEMPLATE_FILE RUN
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local threads = {}

-- Runs in wrk's main Lua state once per thread, before that thread's init.
function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

local prefix, suffix, tag
-- Bodies this thread made so far. A global, not a local, so that done()
-- can read it with thread:get.
counter = 0

function init(args)
   local template = read_file(args[1])
   local at = assert(template:find("@TAG@", 1, true), "no @TAG@ in " .. args[1])
   prefix = template:sub(1, at - 1)
   suffix = template:sub(at + #"@TAG@")
   tag = (args[2] or "run") .. "-t" .. tostring(thread_id) .. "-"
end

function request()
   counter = counter + 1
   return wrk.format(nil, nil, nil, prefix .. tag .. counter .. suffix)
end

-- After the BENCH line, one more: how far each thread's counter got
-- ("KEYS 1=N 2=M ..."), so that a replay can be checked against the run
-- that stored the answers. It counts every body made, including those
-- still in flight when wrk stopped (and, in thread 1, one that wrk makes
-- up front to check the script and never sends).
local report = done
function done(summary, latency, requests)
   report(summary, latency, requests)
   local counts = {}
   for i, thread in ipairs(threads) do
      counts[i] = i .. "=" .. tostring(thread:get("counter"))
   end
   io.write("KEYS " .. table.concat(counts, " ") .. "\n")
end
