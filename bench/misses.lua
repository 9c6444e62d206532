-- Distinct list pages for wrk (bench/misses.py runs it; see bench/README.md): every request asks
-- a question no earlier request of the run asked, so a caching server answers each one as a miss.
--
-- wrk -t2 -c16 -d10s --latency -s bench/misses.lua URL -- FORMAT SLICE
--   FORMAT: the path with three %d, filled with (year, runtime lower bound, runtime upper bound)
--   SLICE:  how many questions each thread owns; thread t asks questions t*SLICE, t*SLICE+1, ...
-- Question n is the mixed-radix number (u, r, y) of n: year y = 1980 + n % 35 (every year from
-- 1980 to 2014 has at least 136 films of 60 to 199 minutes), runtime.gte r = 1 + (n / 35) % 60,
-- runtime.lt u = 200 + n / 2100: so each answer has 100 rows, and no two questions are the same.
-- Answers are counted by status and by X-Cache; done() prints "misses <name> <value>" lines.

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  format = args[1]
  slice = tonumber(args[2])
  n = thread_index * slice
  last = n + slice
  counts = {}
end

local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

function request()
  if n >= last then
    count("wrapped")       -- past the thread's slice: questions would repeat
    n = thread_index * slice
  end
  local y = 1980 + n % 35
  local r = 1 + math.floor(n / 35) % 60
  local u = 200 + math.floor(n / 2100)
  n = n + 1
  return wrk.format("GET", string.format(format, y, r, u))
end

function response(status, headers, body)
  count("status " .. status)
  count("x-cache " .. (headers["x-cache"] or headers["X-Cache"] or "none"))
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for name, v in pairs(thread:get("counts")) do
      total[name] = (total[name] or 0) + v
    end
  end
  for name, v in pairs(total) do
    io.write(string.format("misses %s %d\n", name, v))
  end
  local e = summary.errors
  io.write(string.format("misses requests %d\nmisses duration_us %d\n", summary.requests, summary.duration))
  io.write(string.format("misses socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
  for _, p in ipairs({ 50, 99 }) do
    io.write(string.format("misses p%d_us %d\n", p, latency:percentile(p)))
  end
end
