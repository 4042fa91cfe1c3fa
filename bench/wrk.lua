-- wrk script for bench/run.sh. Modes (after `--` on the wrk command line):
--   plain                     the static request (headers from -H)
--   tokens FILE               a random bearer token from FILE (one a line) per request
--   tokens-seq FILE           each token of FILE once, in order, then the thread stops
--   miss PREFIX [STOP]        a new bearer token per request (PREFIX makes runs distinct);
--                             after STOP requests the thread stops (wrk itself waits for -d
--                             or SIGINT, which bench.py sends once the target has them all)
--   as                        POST a token-exchange form (the AS measured directly)
-- done() prints one line `BENCHJSON {...}` that bench.py parses.

-- i starts at -1: wrk calls request() once after init() to check the request parses,
-- in this same Lua state, and that call is never sent.
local reqs, n, i, prefix, stop = nil, 0, -1, nil, nil

-- A JWT-shaped subject token: fixed header and payload (so tokex's unverified
-- peek has something real to decode), a varying signature part.
local JWT_HEAD = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
  .. ".eyJpc3MiOiJodHRwczovL2FzLmJlbmNoIiwic3ViIjoidXNlci1taXNzIiwiYXVkIjoiZWRnZSIsInNjb3BlIjoib3JkZXJzIHByb2ZpbGUiLCJleHAiOjQxMDI0NDQ4MDB9"
  .. "."
local SIG_PAD = string.rep("Q", 300)

local function read_lines(path)
  local t = {}
  for line in io.lines(path) do
    if #line > 0 then t[#t + 1] = line end
  end
  return t
end

function init(args)
  local mode = args[1] or "plain"
  if mode == "tokens" or mode == "tokens-seq" then
    local toks = read_lines(args[2])
    reqs = {}
    for k, t in ipairs(toks) do
      reqs[k] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. t })
    end
    n = #reqs
    if mode == "tokens" then
      math.randomseed(os.time())
      request = function()
        return reqs[math.random(n)]
      end
    else
      request = function()
        i = i + 1
        if i > n then
          -- all n sent; stop (requests still sent in this event-loop pass repeat a token)
          wrk.thread:stop()
          return reqs[n]
        end
        return reqs[math.max(i, 1)]
      end
    end
  elseif mode == "miss" then
    prefix = args[2] or tostring(os.time())
    stop = tonumber(args[3] or "")
    request = function()
      i = i + 1
      local k = i
      if stop and i > stop then
        -- STOP sent. wrk finishes its current event-loop pass after stop(), so
        -- other connections may still send: repeat an old token (a cache hit).
        wrk.thread:stop()
        k = 1
      end
      return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. JWT_HEAD .. SIG_PAD .. prefix .. "x" .. k })
    end
  elseif mode == "as" then
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
    wrk.headers["Accept"] = "application/json"
    wrk.body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token="
      .. JWT_HEAD .. SIG_PAD .. "direct"
      .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
      .. "&audience=bench-api&scope=read&client_id=bench"
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
