-- POST /v1/merchants/bench/detokenize of one pre-made token per request, chosen at random.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TV_READER_KEY")
local tokens = {}
for line in io.lines(os.getenv("TV_TOKENS_FILE")) do tokens[#tokens + 1] = line end
function request()
  local t = tokens[math.random(1, #tokens)]
  return wrk.format(nil, "/v1/merchants/bench/detokenize", nil,
                    '{"tokens":["' .. t .. '"],"reveal":"plain"}')
end
