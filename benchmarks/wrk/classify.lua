-- wrk script: one labelled image per request, each answer scored against its image's label.
--
--   wrk -t16 -c16 -d5s -s classify.lua URL -- IMAGE_DIR PATH BODY THREADS [OFFSET]
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
-- Accuracy needs each response paired with the image it answers. wrk gives response() no
-- connection, so the harness runs one connection per thread (-t equal to -c): every thread has
-- its own Lua state and a connection answers its requests in order, so the response a thread
-- sees is for the last request it built. A request() while an answer is still owed (the
-- connection broke and wrk reconnected; wrk counts the socket error too) is counted as lost.

local images, labels, requests = {}, {}, {}
local next_i, pending, answered_any = 1, nil, false
-- Globals: done() reads them from each thread's state with thread:get().
ok, correct, bad_status, unparsed, lost = 0, 0, 0, 0, 0
local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("thread_index", counter)
   table.insert(threads, thread)
end

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

local function le32(n)
   return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
                      math.floor(n / 16777216) % 256)
end

local function build(body_kind, path, image)
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
   local dir, path, body_kind = args[1], args[2], args[3]
   local thread_count = tonumber(args[4] or "1")
   local offset = tonumber(args[5] or "0")
   for line in io.lines(dir .. "/labels.txt") do
      local name, label = line:match("^(%S+)%s+(%d+)$")
      if name then
         local image = read_file(dir .. "/" .. name)
         table.insert(images, image)
         table.insert(labels, tonumber(label))
         table.insert(requests, build(body_kind, path, image))
      end
   end
   assert(#images > 0, "no images listed in " .. dir .. "/labels.txt")
   -- Threads start evenly spread over the images, so concurrent requests carry different ones.
   next_i = (offset + math.floor((thread_index - 1) * #images / thread_count)) % #images + 1
   if body_kind == "v2" then
      answer_pattern = '"data"%s*:%s*%[%s*(%d+)'
   else
      answer_pattern = '"class_index"%s*:%s*(%d+)'
   end
end

function request()
   -- wrk calls request() once on the first thread to check the script before any is sent: an
   -- answer owed before the first answer arrived is not a lost one.
   if pending ~= nil and answered_any then
      lost = lost + 1
   end
   pending = next_i
   next_i = next_i % #images + 1
   return requests[pending]
end

function response(status, headers, body)
   local i = pending
   pending, answered_any = nil, true
   if i == nil then
      return
   end
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

function done(summary, latency, requests)
   local totals = {ok = 0, correct = 0, bad_status = 0, unparsed = 0, lost = 0}
   for _, t in ipairs(threads) do
      for k, _ in pairs(totals) do
         totals[k] = totals[k] + (t:get(k) or 0)
      end
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "ok": %d, "correct": %d, ' ..
      '"bad_status": %d, "unparsed": %d, "lost": %d, "socket_errors": {"connect": %d, ' ..
      '"read": %d, "write": %d, "status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, ' ..
      '"max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d}}\n',
      summary.duration, summary.requests, summary.bytes, totals.ok, totals.correct,
      totals.bad_status, totals.unparsed, totals.lost, e.connect, e.read, e.write, e.status,
      e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(95), latency:percentile(99)))
end
