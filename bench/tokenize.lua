-- POST /v1/merchants/bench/tokens with a fresh value per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TV_TOKENIZER_KEY")
local n = 0
function setup(thread) thread:set("id", tostring(math.random(1, 1e9))) end
function request()
  n = n + 1
  local body = '{"value":"bench-' .. (id or "0") .. '-' .. n .. '","type":"generic"}'
  return wrk.format(nil, "/v1/merchants/bench/tokens", nil, body)
end
