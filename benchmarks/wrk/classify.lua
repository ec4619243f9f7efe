-- wrk script: one labelled image per request, each answer scored against its image's label,
-- counted only inside a measured window on the wall clock.
--
--   wrk -t16 -c16 -d7s -s classify.lua URL -- IMAGE_DIR PATH BODY THREADS OFFSET START_US END_US
--
-- IMAGE_DIR holds labels.txt ("file label" per line) and the image files; PATH is the request
-- path with its query; THREADS is wrk's -t (threads start spread over the images); OFFSET shifts
-- every thread's first image (a repeat sends other images); BODY is the request shape:
--   raw        the image bytes as the body, Content-Type image/jpeg (this service, v1)
--   multipart  a multipart/form-data body with one file field "files" (a form upload)
--   v2         KServe v2 / Triton binary tensor extension: a JSON header, then one BYTES
--              element (4-byte little-endian length + the image)
-- The answered class is the first `"class_index": N` (raw, multipart) or the first `"data": [N`
-- (v2) of the response body.
--
-- The window: wrk creates its threads one after another, running each thread's init() first,
-- and starts its own clock only when the last one exists, while the first threads already load
-- the server; everything they are answered before that counts in wrk's totals but not in its
-- duration (measured: 16 threads took 29-61 s to start beside a busy server, which read 4x the
-- server's real rate). So the harness passes a window [START_US, END_US) of CLOCK_REALTIME
-- microseconds that opens after a warm-up; only answers that arrive inside it are counted, and
-- their latencies (request() to response(), measured here) make the percentiles. A thread that
-- sent its first request after the window opened is reported as late (the harness refuses the
-- run). Without START_US / END_US every answer counts (wrk's own duration then applies).
--
-- Accuracy needs each response paired with the image it answers. wrk gives response() no
-- connection, so the harness runs one connection per thread (-t equal to -c): every thread has
-- its own Lua state and a connection answers its requests in order, so the response a thread
-- sees is for the last request it built. A request() while an answer is still owed (the
-- connection broke and wrk reconnected; wrk counts the socket error too) is counted as lost.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } classify_timespec;
int clock_gettime(int clk_id, classify_timespec *tp);
]]
local CLOCK_REALTIME = 0 -- the harness's time.time(): both sides read the same clock
local timespec = ffi.new("classify_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_REALTIME, timespec)
   return tonumber(timespec.tv_sec) * 1e6 + tonumber(timespec.tv_nsec) / 1e3
end

local dir, path, body_kind
local files, labels, requests = {}, {}, {}
local next_i, pending, sent_at, answered_any = 1, nil, nil, false
-- Globals: done() reads them from each thread's state with thread:get() (init() runs in the
-- threads' states only, so the window, too, is read from there).
window_start, window_end = 0, math.huge
ok, correct, bad_status, unparsed, lost, outside = 0, 0, 0, 0, 0, 0
first_request_us = nil
latencies = {}
local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("thread_index", counter)
   table.insert(threads, thread)
end

local function read_file(file)
   local f = assert(io.open(file, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

local function le32(n)
   return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
                      math.floor(n / 16777216) % 256)
end

local function build(image)
   if body_kind == "raw" then
      return wrk.format("POST", path, {["Content-Type"] = "image/jpeg"}, image)
   elseif body_kind == "multipart" then
      local b = "anytimeWrkBoundary7MA4YWxk"
      local body = "--" .. b .. "\r\nContent-Disposition: form-data; name=\"files\"; " ..
         "filename=\"image.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n" .. image ..
         "\r\n--" .. b .. "--\r\n"
      return wrk.format("POST", path, {["Content-Type"] = "multipart/form-data; boundary=" .. b},
                        body)
   elseif body_kind == "v2" then
      local header = string.format(
         '{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES",' ..
         '"parameters":{"binary_data_size":%d}}],' ..
         '"outputs":[{"name":"class_index","parameters":{"binary_data":false}}]}', #image + 4)
      return wrk.format("POST", path, {
         ["Content-Type"] = "application/octet-stream",
         ["Inference-Header-Content-Length"] = tostring(#header),
      }, header .. le32(#image) .. image)
   end
   error("unknown body kind " .. tostring(body_kind) .. " (raw, multipart, v2)")
end

function init(args)
   dir, path, body_kind = args[1], args[2], args[3]
   local thread_count = tonumber(args[4] or "1")
   local offset = tonumber(args[5] or "0")
   window_start = tonumber(args[6] or "0")
   window_end = tonumber(args[7] or "inf") or math.huge
   -- Only the list is read here: init() runs before wrk's clock starts, so it must be quick;
   -- each request is built the first time it is sent.
   for line in io.lines(dir .. "/labels.txt") do
      local name, label = line:match("^(%S+)%s+(%d+)$")
      if name then
         table.insert(files, name)
         table.insert(labels, tonumber(label))
      end
   end
   assert(#files > 0, "no images listed in " .. dir .. "/labels.txt")
   build("") -- an unknown body kind fails here, before any request
   -- Threads start evenly spread over the images, so concurrent requests carry different ones.
   next_i = (offset + math.floor((thread_index - 1) * #files / thread_count)) % #files + 1
   if body_kind == "v2" then
      answer_pattern = '"data"%s*:%s*%[%s*(%d+)'
   else
      answer_pattern = '"class_index"%s*:%s*(%d+)'
   end
end

function request()
   -- wrk calls request() once on the first thread to check the script before any is sent: an
   -- answer owed before the first answer arrived is not a lost one.
   local now = now_us()
   if pending ~= nil and answered_any and now >= window_start and now < window_end then
      lost = lost + 1
   end
   pending = next_i
   next_i = next_i % #files + 1
   if requests[pending] == nil then
      requests[pending] = build(read_file(dir .. "/" .. files[pending]))
   end
   sent_at = now_us() -- after a first-time build, which is not the server's time
   first_request_us = first_request_us or now
   return requests[pending]
end

function response(status, headers, body)
   local i, now = pending, now_us()
   pending, answered_any = nil, true
   if i == nil then
      return
   end
   if now < window_start or now >= window_end then
      outside = outside + 1
      return
   end
   table.insert(latencies, now - sent_at)
   if status ~= 200 then
      bad_status = bad_status + 1
      return
   end
   local answer = body and body:match(answer_pattern)
   if answer == nil then
      unparsed = unparsed + 1
      return
   end
   ok = ok + 1
   if tonumber(answer) == labels[i] then
      correct = correct + 1
   end
end

local function percentile(sorted, q)
   if #sorted == 0 then
      return 0
   end
   return sorted[math.max(1, math.ceil(q * #sorted))]
end

function done(summary, latency, requests)
   local totals = {ok = 0, correct = 0, bad_status = 0, unparsed = 0, lost = 0, outside = 0}
   local all, late, first, last = {}, 0, math.huge, 0
   window_start = threads[1]:get("window_start")
   window_end = threads[1]:get("window_end")
   for _, t in ipairs(threads) do
      for k, _ in pairs(totals) do
         totals[k] = totals[k] + (t:get(k) or 0)
      end
      for _, v in ipairs(t:get("latencies") or {}) do
         table.insert(all, v)
      end
      local started = t:get("first_request_us")
      if started == nil or started >= window_start then
         late = late + 1
      end
      if started ~= nil then
         first, last = math.min(first, started), math.max(last, started)
      end
   end
   table.sort(all)
   local sum = 0
   for _, v in ipairs(all) do
      sum = sum + v
   end
   local bounded = window_end ~= math.huge
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"window_us": %d, "wrk_duration_us": %d, "late_threads": %d, ' ..
      '"thread_start_spread_us": %d, "requests": %d, "bytes": %d, "answered": %d, "ok": %d, ' ..
      '"correct": %d, "bad_status": %d, "unparsed": %d, "lost": %d, "outside_window": %d, ' ..
      '"socket_errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d}}\n',
      bounded and (window_end - window_start) or summary.duration, summary.duration,
      bounded and late or 0, last > 0 and (last - first) or 0, summary.requests, summary.bytes,
      #all, totals.ok, totals.correct, totals.bad_status, totals.unparsed, totals.lost,
      totals.outside, e.connect, e.read, e.write, e.status, e.timeout,
      #all > 0 and sum / #all or 0, all[#all] or 0, percentile(all, 0.5), percentile(all, 0.9),
      percentile(all, 0.95), percentile(all, 0.99)))
end
