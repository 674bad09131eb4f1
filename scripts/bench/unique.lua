-- Every request carries a different body, so a cache never answers one:
-- the miss path. The body is the template with its @TAG@ replaced by
-- RUN-tTHREAD-COUNTER; RUN (from the command line) keeps runs against the
-- same proxy apart, THREAD keeps wrk's threads apart (each has its own Lua
-- state and so its own counter).
-- Usage: wrk ... -s unique.lua URL -- TEMPLATE_FILE RUN
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local threads = 0

-- Runs in wrk's main Lua state once per thread, before that thread's init.
function setup(thread)
   threads = threads + 1
   thread:set("thread_id", threads)
end

local prefix, suffix, tag
local counter = 0

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
