-- Cycles over a fixed set of KEYS bodies: the template with its @TAG@
-- replaced by RUN-1, RUN-2, ... RUN-KEYS, then RUN-1 again. Sent once
-- through a cluster member, the set is stored in the cluster; sent through
-- a client whose memory holds only a small part of it, nearly every request
-- misses the client's memory and is answered by a peer: the L2 hit path.
-- Each wrk thread has its own counter; run it with one thread (-t1) so
-- that the order is the same in every run.
-- Usage: wrk ... -s cycle.lua URL -- TEMPLATE_FILE RUN KEYS
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local prefix, suffix, tag, keys
local counter = 0

function init(args)
   local template = read_file(args[1])
   local at = assert(template:find("@TAG@", 1, true), "no @TAG@ in " .. args[1])
   prefix = template:sub(1, at - 1)
   suffix = template:sub(at + #"@TAG@")
   tag = assert(args[2], "no RUN argument") .. "-"
   keys = assert(tonumber(args[3]), "KEYS must be a number")
end

function request()
   counter = counter % keys + 1
   return wrk.format(nil, nil, nil, prefix .. tag .. counter .. suffix)
end
