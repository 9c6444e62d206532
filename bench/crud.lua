-- The CRUD-profile mix for wrk (bench/crud.py runs it; see bench/README.md):
--   75% GET /api/movies/{id}, id uniform over the hot set (a file of ids, one a line)
--   15% PATCH /api/movies/{id} of a hot id: {"metacritic": n} or {"title": "..."}, alternately
--    5% GET /api/movies?... one of a handful of lists
--    5% upsert: half PUT /api/movies/{id} replacing a reserved row that exists (every column),
--       half POST /api/movies creating a row at a new reserved id (PUT of a missing id is a 404)
-- Answers are counted by status and, for the GETs, by X-Cache (items and lists apart); done()
-- prints them as "crud <name> <value>" lines, with the latency percentiles of every request.
--
-- wrk -t2 -c64 -d10s --latency -s bench/crud.lua URL -- TOKEN IDS_FILE RESERVED_FIRST RESERVED_COUNT NEW_FIRST SEED [MIX]
-- MIX, in percent of items, patches, lists, upserts: 75,15,5,5 unless given (75,0,5,0: no writes).

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local LISTS = {
  "/api/movies?genres=drama&limit=20",
  "/api/movies?sort=-metacritic&limit=20",
  "/api/movies?year=2010&limit=50",
  "/api/movies?genres=comedy&sort=-year&limit=20",
  "/api/movies?countries=france&limit=20",
}
local GENRES = { "Action", "Comedy", "Crime", "Documentary", "Drama", "Horror", "Romance", "Thriller" }
local RATINGS = { "G", "PG", "PG-13", "R" }

local hot, get_item, get_list = {}, {}, {}
local write_headers
local reserved_first, reserved_count, next_new
counts = nil -- a global: done() reads every thread's with thread:get
local patches = 0
local mix -- cumulative bounds of the four kinds, out of their sum

function init(args)
  write_headers = { ["Authorization"] = "Bearer " .. args[1], ["Content-Type"] = "application/json" }
  for line in io.lines(args[2]) do
    if line ~= "" then
      hot[#hot + 1] = line
      get_item[#get_item + 1] = wrk.format("GET", "/api/movies/" .. line, {})
    end
  end
  for i, path in ipairs(LISTS) do
    get_list[i] = wrk.format("GET", path, {})
  end
  reserved_first, reserved_count = tonumber(args[3]), tonumber(args[4])
  -- Every thread creates its rows in a range of its own: never the same id twice.
  next_new = tonumber(args[5]) + thread_index * 1000000
  math.randomseed(tonumber(args[6]) + thread_index)
  counts = {}
  local weights, total = {}, 0
  for w in string.gmatch(args[7] or "75,15,5,5", "[^,]+") do
    total = total + tonumber(w)
    weights[#weights + 1] = total
  end
  mix = { total = total, item = weights[1], patch = weights[2], list = weights[3] }
end

local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

local function write(method, path, body)
  local headers = {}
  for k, v in pairs(write_headers) do headers[k] = v end
  return wrk.format(method, path, headers, body)
end

local function full_row(n)
  local g1, g2 = GENRES[math.random(#GENRES)], GENRES[math.random(#GENRES)]
  local genres = g1 == g2 and string.format('["%s"]', g1) or string.format('["%s","%s"]', g1, g2)
  return string.format(
    '"imdb_id":"tt9%07d","title":"Bench film %d","year":%d,"rating":"%s","runtime":%d,"genres":%s,'
      .. '"director":"Bench Director","languages":["English"],"countries":["United States"],'
      .. '"metacritic":%d,"oscars":%d,"meter":%d,"reviews":%d,"box_office":%d.0',
    n % 10000000, n, math.random(1990, 2015), RATINGS[math.random(#RATINGS)], math.random(80, 160), genres,
    math.random(1, 100), math.random(0, 2), math.random(0, 100), math.random(0, 300), math.random(0, 100000000))
end

function request()
  local r = math.random() * mix.total
  if r < mix.item then
    count("sent item")
    return get_item[math.random(#get_item)]
  elseif r < mix.patch then
    count("sent patch")
    local id = hot[math.random(#hot)]
    patches = patches + 1
    local body = patches % 2 == 0 and string.format('{"metacritic":%d}', math.random(1, 100))
      or string.format('{"title":"Bench title %d"}', math.random(1, 1000000))
    return write("PATCH", "/api/movies/" .. id, body)
  elseif r < mix.list then
    count("sent list")
    return get_list[math.random(#get_list)]
  elseif math.random(2) == 1 then
    count("sent put")
    local id = reserved_first + math.random(0, reserved_count - 1)
    return write("PUT", "/api/movies/" .. id, "{" .. full_row(id) .. "}")
  else
    count("sent post")
    local id = next_new
    next_new = next_new + 1
    return write("POST", "/api/movies", string.format('{"id":%d,', id) .. full_row(id) .. "}")
  end
end

function response(status, headers, body)
  count("status " .. status)
  local outcome = headers["x-cache"] or headers["X-Cache"]
  if outcome then
    local kind = string.sub(body, 1, 9) == '{"items":' and "list" or "item"
    count(kind .. " " .. outcome)
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for name, n in pairs(thread:get("counts")) do
      total[name] = (total[name] or 0) + n
    end
  end
  for name, n in pairs(total) do
    io.write(string.format("crud %s %d\n", name, n))
  end
  local e = summary.errors
  io.write(string.format("crud requests %d\ncrud duration_us %d\n", summary.requests, summary.duration))
  io.write(string.format("crud socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("crud p%s_us %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("crud max_us %d\n", latency.max))
end
