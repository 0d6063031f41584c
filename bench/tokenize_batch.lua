-- POST /v1/merchants/bench/tokens/batch with 100 fresh values per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TV_TOKENIZER_KEY")
local n = 0
local per_batch = tonumber(os.getenv("TV_BATCH_SIZE") or "100")
function setup(thread) thread:set("id", tostring(math.random(1, 1e9))) end
function request()
  n = n + 1
  local items = {}
  for i = 1, per_batch do
    items[i] = '{"value":"bench-' .. (id or "0") .. '-' .. n .. '-' .. i .. '"}'
  end
  local body = '{"items":[' .. table.concat(items, ",") .. ']}'
  return wrk.format(nil, "/v1/merchants/bench/tokens/batch", nil, body)
end
